"""status.urgent_change: which status changes are written at once and which only report progress (the
reconciler may hold those back for a moment, so sibling groups' transitions share one write)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stagefleet.controller.observe import observe_pod
from stagefleet.controller.report import planned_status
from stagefleet.controller.status import decide
from stagefleet.controller.urgency import urgent_change

from .helpers import BUILD, SEED_PLAN, make_spec, pod, recorded, result_json

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
SPEC = make_spec()


def step(status: dict[str, Any], pods: list[dict[str, Any]], now: datetime = NOW) -> dict[str, Any]:
    obs = [o for o in (observe_pod(p) for p in pods) if o is not None]
    d = decide(build=BUILD, spec=SPEC, plan=SEED_PLAN, status=status, pods=obs, missing_secrets={}, now=now)
    return dict(recorded(d).status)


def ok(group: str, target: str, digest: str) -> dict[str, Any]:
    return pod(group, phase="Succeeded", message=result_json(group, target, digest))


def started() -> dict[str, Any]:
    """Planned, written together with the first wave's pods (g1, g2 Pending)."""
    planned = planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)
    return step(planned, [])


def test_planning_and_starting_pods_are_urgent() -> None:
    planned = planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)
    assert urgent_change({}, planned) is not None
    assert urgent_change(planned, started()) == "stage build1: pod started"


def test_pods_running_only_report_progress() -> None:
    s = started()
    running = step(s, [pod("g1"), pod("g2", phase="Pending")])
    assert running["stages"][0]["phase"] == "Running" and running["stages"][0]["node"] == "node-1"
    assert running != s
    assert urgent_change(s, running) is None
    both = step(running, [pod("g1"), pod("g2")])
    assert urgent_change(s, both) is None and urgent_change(running, both) is None


def test_a_group_succeeding_while_its_sibling_runs_only_reports_progress() -> None:
    s = step(started(), [pod("g1"), pod("g2")])
    one = step(s, [ok("g1", "build1", D1), pod("g2")])
    assert one["progress"] == "1/3" and one["stages"][0]["digest"] == D1
    assert urgent_change(s, one) is None
    # Straight from Pending to Succeeded (the Running state was never written) is progress too.
    assert urgent_change(started(), step(started(), [ok("g1", "build1", D1), pod("g2")])) is None


def test_the_next_wave_starting_and_the_build_ending_are_urgent() -> None:
    s = step(started(), [pod("g1"), pod("g2")])
    wave2 = step(s, [ok("g1", "build1", D1), ok("g2", "build2", D2)])
    assert wave2["stages"][2]["phase"] == "Pending"
    assert urgent_change(s, wave2) == "stage final: pod started"
    done = step(wave2, [ok("g1", "build1", D1), ok("g2", "build2", D2), ok("g3", "final", D3)])
    assert done["phase"] == "Succeeded"
    assert urgent_change(wave2, done) == "phase changed"


def test_failures_retries_and_stuck_pods_are_urgent() -> None:
    s = step(started(), [pod("g1"), pod("g2")])
    retrying = step(s, [pod("g1", phase="Failed", exit_code=1), pod("g2")])
    assert retrying["stages"][0]["phase"] == "Retrying"
    assert urgent_change(s, retrying) == "stage build1: Running → Retrying"
    pulling = pod("g1", phase="Pending", reason="ImagePullBackOff", created="2026-01-01T00:00:30Z")
    stuck = step(started(), [pulling, pod("g2")])
    assert stuck["stages"][0]["phase"] == "Pending"
    assert urgent_change(started(), stuck) == "stage build1: message"
    # The message going away again (the pull recovered, the pod runs) is progress.
    assert urgent_change(stuck, step(stuck, [pod("g1"), pod("g2")])) is None
    failed = step(s, [pod("g1", phase="Failed", exit_code=13), pod("g2")], now=NOW + timedelta(seconds=1))
    assert failed["phase"] == "Failed" and urgent_change(s, failed) == "phase changed"


def test_condition_status_or_reason_is_urgent_its_message_is_not() -> None:
    s = step(started(), [pod("g1"), pod("g2")])
    conds = [dict(c) for c in s["conditions"]]
    assert urgent_change(s, {**s, "conditions": [{**conds[0], "message": "other"}, *conds[1:]]}) is None
    stalled = [
        {**c, "status": "True", "reason": "SecretNotFound"} if c["type"] == "Stalled" else c for c in conds
    ]
    assert urgent_change(s, {**s, "conditions": stalled}) == "conditions changed"
