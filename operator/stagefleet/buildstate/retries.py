"""Whether a failed attempt is retried, and when: the worker's exit code says whose fault it was.

A build error (the Dockerfile, a missing secret, a failing step) or a worker that cannot run at all (its
securityContext) fails the same way every time: no retry. A context fetch (10) may be the user's URL or a
flaky server: retried once. Anything else (a push, a pull, a lost pod) is infrastructure: retried up to
``retries`` more times, after a backoff that doubles.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from stagefleet.worker import exitcodes

#: Exit codes no retry can fix, and what they mean.
NO_RETRY = {
    exitcodes.DOCKERFILE: "Dockerfile error",
    exitcodes.SECRET: "secret or ssh key missing",
    exitcodes.BUILD_STEP: "build step failed",
    exitcodes.SECURITY_CONTEXT: "the worker's securityContext cannot run rootless buildah",
}
#: Exit codes retried at most once.
RETRY_ONCE = frozenset({exitcodes.CONTEXT})
#: The longest backoff between two attempts.
BACKOFF_CAP = 300.0
#: More attempts after the first, by default (spec.retries, `stagefleet build --retries`), and at most.
DEFAULT_RETRIES = 2
MAX_RETRIES = 10


def is_build_error(exit_code: int | None) -> bool:
    return exit_code in NO_RETRY


def backoff_seconds(attempt: int, base: float) -> float:
    """Delay before attempt ``attempt + 1``: base, 2·base, 4·base … capped at `BACKOFF_CAP`."""
    return float(min(base * (2 ** max(0, attempt - 1)), BACKOFF_CAP))


@dataclass(frozen=True)
class Verdict:
    """A failed attempt's consequence: retried at ``retry_at``, or the group failed (``retry_at`` None)
    with ``message`` (the failure, and after how many attempts)."""

    retry_at: datetime | None
    message: str

    @property
    def retry(self) -> bool:
        return self.retry_at is not None


def judge(*, attempts: int, restarts: int, retries: int, build_error: bool, exit_code: int | None,
          message: str, failed_at: datetime, backoff_base: float) -> Verdict:
    """The verdict on a group's failed attempt number ``attempts``. ``restarts``: attempts that ended
    through no fault of their own (an upstream superseded, a suspension, a node refusing the pod at
    admission); they do not count against ``retries``."""
    allowed = 1 + max(0, retries)
    if exit_code in RETRY_ONCE:
        allowed = min(allowed, 2)
    if build_error or attempts - restarts >= allowed:
        after = f" after {attempts} attempts" if not build_error and attempts > 1 else ""
        return Verdict(None, f"{message}{after}")
    retry_at = failed_at + timedelta(seconds=backoff_seconds(attempts, backoff_base))
    return Verdict(retry_at, f"attempt {attempts} failed: {message}")
