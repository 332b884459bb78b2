"""status.py + runs.py: spec.suspend pauses a run (no pod starts, running pods are stopped, their groups
start again on resume without using a retry), spec.timeout does not count while suspended, and an edit of
only spec.suspend keeps the run (observed, not rebuilt), as a Job's spec.suspend does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stagefleet.controller.observe import observe_pod
from stagefleet.controller.podspec import BuildRef
from stagefleet.controller.report import planned_status
from stagefleet.controller.runs import Run, current, spec_hash
from stagefleet.controller.status import Decision, decide

from .helpers import BUILD, SEED_PLAN, decide_pods, make_spec, pod

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
RUNNING = make_spec()
PAUSED = make_spec(suspend=True)


def start() -> dict[str, Any]:
    return planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)


def step(status: dict[str, Any], pods: list[dict[str, Any]], spec: Any, now: datetime = NOW) -> Decision:
    return decide_pods(status, pods, now=now, spec=spec, backoff_base=10)


def cond(status: dict[str, Any], ctype: str) -> tuple[str, str]:
    c = next(c for c in status["conditions"] if c["type"] == ctype)
    return c["status"], c["reason"]


def entry(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["stages"] if s["name"] == name)


def running() -> dict[str, Any]:
    """g1 and g2 started and running."""
    s = step(start(), [], RUNNING).status
    return step(s, [pod("g1"), pod("g2")], RUNNING).status


def test_suspending_stops_the_running_pods_and_starts_none() -> None:
    d = step(running(), [pod("g1"), pod("g2")], PAUSED)
    assert sorted(d.delete) == ["seed-1-g1-a1", "seed-1-g2-a1"] and d.create == []
    st = d.status
    assert st["phase"] == "Building" and st["message"].startswith("suspended (spec.suspend): 0/3 groups done")
    assert cond(st, "Ready") == ("False", "Suspended")
    assert cond(st, "Reconciling") == ("True", "Suspended") and cond(st, "Stalled")[0] == "False"
    assert st["suspendedAt"] == "2026-01-01T00:01:00Z"
    for name in ("build1", "build2"):
        e = entry(st, name)
        assert e["phase"] == "Waiting" and e["restarts"] == 1 and "suspended" in e["message"], e
    assert [(e.reason, e.message) for e in d.events] == [
        ("Suspended", "spec.suspend: no pod starts; stopped 2 pod(s)")
    ]
    # While it stays suspended: the stopped pods are left to go, nothing starts, nothing is said again,
    # and no pass is due (the edit that resumes it starts one).
    later = NOW + timedelta(minutes=30)
    d2 = step(st, [pod("g1", deleting=True), pod("g2", deleting=True)], PAUSED, now=later)
    assert d2.create == [] and d2.delete == [] and d2.events == []
    assert d2.status["suspendedAt"] == st["suspendedAt"] and d2.requeue_after is None


def test_resuming_starts_the_stopped_groups_again_without_using_a_retry() -> None:
    paused = step(running(), [pod("g1"), pod("g2")], PAUSED).status
    spec = make_spec(retries=0)  # a stop that counted would leave no attempt
    later = NOW + timedelta(minutes=5)
    d = step(paused, [], spec, now=later)
    assert [(c.group.id, c.attempt, c.restart) for c in d.create] == [("g1", 2, True), ("g2", 2, True)]
    assert "suspendedAt" not in d.status and d.status["suspendedSeconds"] == 300.0
    assert [e.reason for e in d.events if e.reason == "Resumed"] == ["Resumed"]
    assert cond(d.status, "Reconciling") == ("True", "Building") and cond(d.status, "Ready")[1] == "Building"


def test_the_timeout_does_not_count_while_suspended() -> None:
    """spec.timeout 10m; started at NOW, suspended from +2m to +62m: cancelled at +70m, not at +10m."""
    spec = make_spec(timeout="10m")
    s = step(start(), [], spec).status
    s = step(s, [pod("g1"), pod("g2")], spec, now=NOW + timedelta(minutes=2)).status
    s = step(s, [pod("g1"), pod("g2")], make_spec(timeout="10m", suspend=True),
             now=NOW + timedelta(minutes=2)).status
    held = step(s, [], make_spec(timeout="10m", suspend=True), now=NOW + timedelta(minutes=30))
    assert held.status["phase"] == "Building", held.status["message"]
    resumed = step(held.status, [], spec, now=NOW + timedelta(minutes=62))
    assert resumed.status["phase"] == "Building" and resumed.status["suspendedSeconds"] == 3600.0
    assert len(resumed.create) == 2
    s = resumed.status
    pods = [pod("g1", 2), pod("g2", 2)]
    assert step(s, pods, spec, now=NOW + timedelta(minutes=69)).status["phase"] == "Building"
    ended = step(s, pods, spec, now=NOW + timedelta(minutes=70))
    assert ended.status["phase"] == "Cancelled" and "timed out" in ended.status["message"]


def test_a_suspended_build_starts_nothing_from_its_plan() -> None:
    d = step(start(), [], PAUSED)
    assert d.create == [] and d.status["phase"] == "Building"
    assert cond(d.status, "Ready") == ("False", "Suspended")


def test_an_edit_of_only_suspend_keeps_the_run_and_is_observed() -> None:
    raw: dict[str, Any] = {"source": {"inline": {"dockerfile": "FROM x"}}, "output": {"image": "r/a"}}
    first = Run(1, 1, None, spec_hash(raw))
    status = planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW, run=first)
    assert status["specHash"] == spec_hash(raw) and status["run"] == 1
    paused = current({"generation": 2}, status, {**raw, "suspend": True})
    assert paused == Run(1, 2, None, spec_hash(raw))
    build = BuildRef(BUILD.name, BUILD.namespace, BUILD.uid, paused.number, paused)
    d = decide(build=build, spec=PAUSED, plan=SEED_PLAN, status=status, pods=[], missing_secrets={}, now=NOW)
    assert d.status["observedGeneration"] == 2 and d.status["run"] == 1
    assert all(c["observedGeneration"] == 2 for c in d.status["conditions"])
    # Any other edit is a new run; so is an edit of suspend on a status written before spec hashes.
    assert current({"generation": 2}, status, {**raw, "target": "x"}).number == 2
    legacy = {k: v for k, v in status.items() if k != "specHash"}
    assert current({"generation": 2}, legacy, {**raw, "suspend": True}).number == 2


def test_a_finished_build_is_not_affected_but_observes_the_edit() -> None:
    raw: dict[str, Any] = {"source": {"inline": {"dockerfile": "FROM x"}}, "output": {"image": "r/a"}}
    done = {**Run(1, 1, None, spec_hash(raw)).fields(), "phase": "Succeeded", "plan": {},
            "conditions": [{"type": "Ready", "status": "True", "observedGeneration": 1}]}
    again = current({"generation": 2}, done, {**raw, "suspend": True})
    build = BuildRef(BUILD.name, BUILD.namespace, BUILD.uid, again.number, again)
    leftover = observe_pod(pod("g1"))
    assert leftover is not None
    d = decide(build=build, spec=PAUSED, plan=SEED_PLAN, status=done, pods=[leftover], missing_secrets={},
               now=NOW)
    assert d.status["phase"] == "Succeeded" and d.status["observedGeneration"] == 2
    assert d.status["conditions"][0]["observedGeneration"] == 2 and d.create == []
