"""The local runner with a fake worker: upstream digests, order, parallelism, early start, retries,
failure and signals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stagefleet import local

from .fakes import FakeGroup, FakePlan, seed_plan

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "calls"
    d.mkdir()
    monkeypatch.setenv("FAKE_DIR", str(d))
    return d


def settings(tmp_path: Path, parallel: int = 2, *, early_start: bool = False,
             retries: int = 2) -> local.BuildSettings:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    return local.BuildSettings(context=tmp_path, dockerfile=tmp_path / "Dockerfile", registry="127.0.0.1:9",
                               build_id="b1", tags=("127.0.0.1:9/app:1",), parallel=parallel,
                               worker=(sys.executable, str(FAKE_WORKER)), early_start=early_start,
                               retries=retries, backoff_base=0.05)


def run(plan: FakePlan, s: local.BuildSettings, mask: local.Masker | None = None,
        ) -> tuple[local.BuildResult, list[local.Event]]:
    events: list[local.Event] = []
    result = asyncio.run(local.run_plan(plan, s, events.append, mask))
    return result, events


def called(fake: Path, group: str) -> list[str]:
    argv: list[str] = json.loads((fake / f"{group}.json").read_text())["argv"]
    return argv


def pairs(argv: list[str]) -> list[tuple[str, str]]:
    return list(zip(argv, argv[1:], strict=False))


def test_final_group_gets_upstream_digests_and_pushes_to_the_tags(tmp_path: Path, fake: Path) -> None:
    result, events = run(seed_plan(), settings(tmp_path))
    assert result.ok and result.exit_code == 0
    assert result.image == "127.0.0.1:9/app:1"
    assert result.digest and result.digest == result.outcomes["g3"].digest
    final = pairs(called(fake, "g3"))
    d1, d2 = result.outcomes["g1"].digest, result.outcomes["g2"].digest
    assert ("--upstream", f"build1=127.0.0.1:9/stagefleet/b1/stages@{d1}") in final
    assert ("--upstream", f"build2=127.0.0.1:9/stagefleet/b1/stages@{d2}") in final
    assert ("--push", "127.0.0.1:9/app:1") in final
    assert ("--push", "127.0.0.1:9/stagefleet/b1/stages:g1") in pairs(called(fake, "g1"))
    # every group had its own storage root
    roots = {dict(pairs(called(fake, g)))["--storage-root"] for g in ("g1", "g2", "g3")}
    assert len(roots) == 3
    # order of events: final starts after both others finished; the result line is not a log line
    kinds = [(e.kind, e.group) for e in events]
    assert kinds.index(("group-started", "g3")) > kinds.index(("group-finished", "g1"))
    assert kinds.index(("group-started", "g3")) > kinds.index(("group-finished", "g2"))
    logs = [e for e in events if e.kind == local.LOG]
    assert {(e.stage, e.data["line"]) for e in logs} >= {("build1", "STEP 1/2: FROM base AS build1")}
    assert not any(e.data["line"].startswith("{") for e in logs)
    assert events[-1].kind == local.BUILD_FINISHED and events[-1].data["ok"] is True


def test_parallelism_one_runs_groups_one_after_another(tmp_path: Path, fake: Path) -> None:
    _, events = run(seed_plan(), settings(tmp_path, parallel=1))
    order = [(e.kind, e.group) for e in events if e.kind in (local.GROUP_STARTED, local.GROUP_FINISHED)]
    assert order == [("group-started", "g1"), ("group-finished", "g1"), ("group-started", "g2"),
                     ("group-finished", "g2"), ("group-started", "g3"), ("group-finished", "g3")]


def test_failure_stops_the_running_sibling_and_names_the_stage(tmp_path: Path, fake: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "build1")
    monkeypatch.setenv("FAKE_HANG", "build2")
    monkeypatch.setenv("FAKE_FAIL_AFTER", "g2")
    result, events = run(seed_plan(), settings(tmp_path))
    assert not result.ok
    assert result.exit_code == 13 and result.failed_group == "g1"
    assert result.message == "stage build1 (group g1) failed: build-step (stage build1, line 2): RUN exit 3"
    assert result.outcomes["g2"].cancelled
    assert not (fake / "g3.json").exists()  # final never started
    hung_pid = json.loads((fake / "g2.json").read_text())["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(hung_pid, 0)
    finished = {e.group: e.data for e in events if e.kind == local.GROUP_FINISHED}
    assert finished["g2"]["cancelled"] is True and finished["g1"]["ok"] is False


def test_early_start_runs_the_final_group_while_its_upstreams_build(tmp_path: Path, fake: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With a worker to spare, the final group starts once both upstreams run, waits for their result tags
    (``--upstream-wait``) and its result names the digests it took, which are the upstreams' own."""
    monkeypatch.setenv("FAKE_SLOW", "build1:0.5")
    result, events = run(seed_plan(), settings(tmp_path, parallel=3, early_start=True))
    assert result.ok, result.message
    final = pairs(called(fake, "g3"))
    assert ("--upstream-wait", "build1=127.0.0.1:9/stagefleet/b1/stages:g1") in final
    assert not any(flag == "--upstream" for flag, _ in final)
    kinds = [(e.kind, e.group) for e in events]
    assert kinds.index(("group-started", "g3")) < kinds.index(("group-finished", "g1"))
    started = next(e for e in events if e.kind == local.GROUP_STARTED and e.group == "g3")
    assert "build1" in started.data["waitsFor"]
    # The final group's result is accepted only after g1's, whose digest it consumed.
    assert kinds.index(("group-finished", "g3")) > kinds.index(("group-finished", "g1"))
    took = result.outcomes["g3"].result or {}
    assert took["upstreams"]["build1"] == result.outcomes["g1"].digest
    assert "early: waits for build1" in "\n".join(
        line for e in events if (line := local.format_plain(e, 0.0)) is not None)


def test_early_start_waits_for_a_slot_and_a_running_upstream(tmp_path: Path, fake: Path) -> None:
    """Two workers, both busy with the upstreams: the final group starts only when one finishes."""
    result, events = run(seed_plan(), settings(tmp_path, parallel=2, early_start=True))
    assert result.ok
    kinds = [(e.kind, e.group) for e in events]
    assert kinds.index(("group-started", "g3")) > min(kinds.index(("group-finished", "g1")),
                                                      kinds.index(("group-finished", "g2")))


def test_a_failed_push_is_retried_and_the_build_succeeds(tmp_path: Path, fake: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FLAKY", "build2:2")
    result, events = run(seed_plan(), settings(tmp_path, retries=2))
    assert result.ok, result.message
    assert len(list(fake.glob("g2.run*.json"))) == 3 and len(list(fake.glob("g1.run*.json"))) == 1
    retrying = [e for e in events if e.kind == local.GROUP_RETRYING]
    assert [(e.group, e.data["attempt"]) for e in retrying] == [("g2", 1), ("g2", 2)]
    assert "attempt 1 failed: push: pushing: connection reset by peer" in retrying[0].data["message"]
    assert retrying[1].data["retryIn"] > retrying[0].data["retryIn"]  # the backoff doubles
    started = [e.data["attempt"] for e in events if e.kind == local.GROUP_STARTED and e.group == "g2"]
    assert started == [1, 2, 3]


def test_retries_run_out_and_the_build_fails_naming_the_attempts(tmp_path: Path, fake: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FLAKY", "build2:9")
    result, _ = run(seed_plan(), settings(tmp_path, retries=1))
    assert not result.ok and result.failed_group == "g2" and result.exit_code == 14
    assert result.message == ("stage build2 (group g2) failed: push: pushing: connection reset by peer "
                              "(after 2 attempts)")
    assert len(list(fake.glob("g2.run*.json"))) == 2 and not (fake / "g3.json").exists()


def test_a_build_step_failure_is_not_retried(tmp_path: Path, fake: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "build1")
    result, events = run(seed_plan(), settings(tmp_path, retries=2))
    assert not result.ok and result.exit_code == 13
    assert len(list(fake.glob("g1.run*.json"))) == 1
    assert not any(e.kind == local.GROUP_RETRYING for e in events)


def test_secret_values_are_masked_in_events(tmp_path: Path, fake: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ECHO", "hunter2-canary")
    _, events = run(seed_plan(), settings(tmp_path), local.Masker(["hunter2-canary"]))
    text = json.dumps([e.to_json() for e in events])
    assert "hunter2-canary" not in text and "secret is ****" in text


def test_a_worker_that_cannot_start_fails_the_build(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s = local.BuildSettings(**{**s.__dict__, "worker": (str(tmp_path / "no-such-worker"),)})
    result, _ = run(FakePlan((FakeGroup("g1", ("a",)),), ("a",), "g1"), s)
    assert not result.ok and "cannot start" in (result.message or "")


def test_sigterm_stops_the_workers(tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`stagefleet build` killed politely takes its worker processes with it."""
    monkeypatch.setenv("FAKE_HANG", "final")
    (tmp_path / "Dockerfile").write_text("FROM 127.0.0.1:9/b AS final\nRUN x\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stagefleet.cli", "build", str(tmp_path), "--registry", "127.0.0.1:9",
         "--progress", "json", "--worker", str(FAKE_WORKER)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        started = False
        for line in proc.stdout:  # wait until the hanging worker has said something
            ev = json.loads(line)
            if ev["event"] == "log" and ev.get("stage") == "final":
                started = True
                break
        assert started, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 143
    pid = json.loads((fake / "g1.json").read_text())["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_auto_progress_without_a_terminal_is_plain(tmp_path: Path, fake: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM 127.0.0.1:9/b AS one\nRUN x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stagefleet.cli", "build", str(tmp_path), "--registry", "127.0.0.1:9",
         "--worker", str(FAKE_WORKER)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    progress = proc.stdout.split("\n\n")[0].splitlines()
    assert progress and all(re.match(r"^ *\d+\.\d\d \[(build|one)\] ", ln) for ln in progress), progress
    assert "\x1b[" not in proc.stdout  # no terminal control sequences
