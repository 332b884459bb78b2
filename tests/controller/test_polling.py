"""polling.py and spec.source.git.pollInterval: when a finished git build asks for its branch's commit
again, what the answer leaves in status, and what a new run keeps of the last one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from stagefleet.controller import polling
from stagefleet.controller.report import planned_status, progress_status, terminal_status
from stagefleet.controller.runs import Run, following
from stagefleet.controller.spec import SpecError, parse_spec

from .helpers import SEED_PLAN

NOW = datetime(2026, 1, 1, 0, 10, 0, tzinfo=UTC)
COMMIT = "a" * 40


def finished(**extra: Any) -> dict[str, Any]:
    return {"phase": "Succeeded", "run": 1, "observedGeneration": 1, "completionTime": "2026-01-01T00:09:55Z",
            "source": {"git": {"url": "git://h/r", "revision": "main", "commit": COMMIT}}, **extra}


def test_due_after_the_interval_from_the_last_look_or_the_finish() -> None:
    assert polling.due_in(finished(), {}, 60, NOW) == 55.0
    assert polling.due_in(finished(polledAt="2026-01-01T00:09:30Z"), {}, 60, NOW) == 30.0
    assert polling.due_in(finished(polledAt="2026-01-01T00:08:00Z"), {}, 60, NOW) == -60.0


def test_never_without_an_interval_or_a_pinned_commit_unless_asked() -> None:
    assert polling.due_in(finished(), {}, None, NOW) is None
    inline = {k: v for k, v in finished().items() if k != "source"}
    assert polling.due_in(inline, {"annotations": {polling.ANNOTATION_RESOLVE: "x"}}, 60, NOW) is None
    asked = {"annotations": {polling.ANNOTATION_RESOLVE: "x"}}
    assert polling.due_in(finished(), asked, None, NOW) == 0.0
    assert polling.due_in(finished(resolve="x"), asked, None, NOW) is None  # answered already
    assert polling.unanswered(asked, finished()) and not polling.unanswered(asked, finished(resolve="x"))


def test_an_answer_records_when_and_the_request() -> None:
    asked = {"annotations": {polling.ANNOTATION_RESOLVE: "r1"}}
    out = polling.answered(finished(), asked, "2026-01-01T00:10:00Z")
    assert out["polledAt"] == "2026-01-01T00:10:00Z" and out["resolve"] == "r1"
    assert out["phase"] == "Succeeded"
    assert "resolve" not in polling.answered(finished(), {}, "t")


def test_the_last_good_image_survives_the_next_runs() -> None:
    done = finished(image={"name": "r/a:latest", "digest": "sha256:" + "1" * 64})
    last = polling.last_succeeded(done)
    assert last == {"image": "r/a:latest", "digest": "sha256:" + "1" * 64, "commit": COMMIT, "run": 1,
                    "time": "2026-01-01T00:09:55Z"}
    assert polling.last_succeeded({**done, "phase": "Failed"}) is None
    old = {**done, "lastSucceeded": last, "polledAt": "2026-01-01T00:10:00Z", "resolve": "r1"}
    nxt = following(old, Run(1, 1))
    assert nxt == Run(2, 1)
    kept = {"lastSucceeded": last, "polledAt": "2026-01-01T00:10:00Z", "resolve": "r1"}
    for status in (
        progress_status(generation=2, phase="Planning", reason="Planning", message="m", old=old, now=NOW,
                        run=nxt),
        planned_status(generation=2, plan=SEED_PLAN, source={"inline": True}, old=old, now=NOW, run=nxt),
        terminal_status(generation=2, phase="Failed", reason="SourceUnavailable", message="m", old=old,
                        now=NOW, run=nxt),
    ):
        assert {k: status.get(k) for k in kept} == kept and status["run"] == 2


def git_spec(**git: Any) -> dict[str, Any]:
    return {"source": {"git": {"url": "https://git.example/r.git", **git}}, "output": {"image": "r/a"}}


def test_poll_interval_is_parsed_and_bounded() -> None:
    assert parse_spec(git_spec(pollInterval="5m")).source.git.poll_seconds == 300  # type: ignore[union-attr]
    assert parse_spec(git_spec()).source.git.poll_seconds is None  # type: ignore[union-attr]
    with pytest.raises(SpecError) as short:
        parse_spec(git_spec(pollInterval="5s"))
    assert "spec.source.git.pollInterval" in str(short.value) and "shorter than 10s" in str(short.value)
    with pytest.raises(SpecError) as bad:
        parse_spec(git_spec(pollInterval="often"))
    assert "spec.source.git.pollInterval" in str(bad.value)


def test_an_unresolved_source_is_tried_again_after_the_interval_or_on_request() -> None:
    failed = {"phase": "Failed", "run": 1, "completionTime": "2026-01-01T00:09:00Z",
              "failure": {"reason": "SourceUnavailable", "message": "m"}}
    assert polling.retry_in(failed, {}, 120, NOW) == 60.0
    assert polling.retry_in(failed, {}, None, NOW) is None
    asked = {"annotations": {polling.ANNOTATION_RESOLVE: "x"}}
    assert polling.retry_in(failed, asked, None, NOW) == 0.0
    assert polling.retry_in({**failed, "resolve": "x"}, asked, None, NOW) is None
    # Other early failures are not the source's: a Dockerfile error waits for a fix, not for time.
    assert polling.retry_in({**failed, "failure": {"reason": "DockerfileError"}}, {}, 120, NOW) is None
    assert polling.retry_in(finished(), {}, 120, NOW) is None  # it pinned a commit: `due_in` polls it
