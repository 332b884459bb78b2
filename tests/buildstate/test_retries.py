"""The core's verdict on a failed attempt: whose fault, how many attempts, how long to wait."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stagefleet.buildstate import retries
from stagefleet.worker import exitcodes

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def judge(attempts: int, *, code: int | None = exitcodes.PUSH, restarts: int = 0,
          allowed_retries: int = 2) -> retries.Verdict:
    return retries.judge(attempts=attempts, restarts=restarts, retries=allowed_retries,
                         build_error=retries.is_build_error(code), exit_code=code, message="boom",
                         failed_at=NOW, backoff_base=5.0)


def test_an_infrastructure_failure_is_retried_with_a_doubling_backoff_then_fails() -> None:
    first, second, third = judge(1), judge(2), judge(3)
    assert first.retry and first.retry_at == NOW + timedelta(seconds=5)
    assert first.message == "attempt 1 failed: boom"
    assert second.retry and second.retry_at == NOW + timedelta(seconds=10)
    assert not third.retry and third.message == "boom after 3 attempts"


def test_build_errors_are_never_retried() -> None:
    for code in (exitcodes.DOCKERFILE, exitcodes.SECRET, exitcodes.BUILD_STEP, exitcodes.SECURITY_CONTEXT):
        verdict = judge(1, code=code)
        assert not verdict.retry and verdict.message == "boom"
    assert not retries.is_build_error(exitcodes.PUSH) and not retries.is_build_error(None)


def test_a_context_fetch_is_retried_once_and_restarts_do_not_count() -> None:
    assert judge(1, code=exitcodes.CONTEXT).retry and not judge(2, code=exitcodes.CONTEXT).retry
    assert judge(3, restarts=1).retry and not judge(3, restarts=0).retry
    assert not judge(1, allowed_retries=0).retry


def test_the_backoff_is_capped() -> None:
    assert retries.backoff_seconds(1, 5.0) == 5.0 and retries.backoff_seconds(4, 5.0) == 40.0
    assert retries.backoff_seconds(30, 5.0) == retries.BACKOFF_CAP
