"""The operator SIGKILLed at distinct points of a 4-group build (base → left, right → final) and started
again: the build ends Succeeded, no pod is ever created twice, each group's worker ran exactly once (no
result pushed twice) and every result reached the status and the pods that consume it (none lost).

The worker is the SIMULATED one (`bench/fake_worker.py`: sleeps, records its run, reports a synthetic
digest), so the kill points are build-progress points, not timings: each is a predicate on the API state
polled every 50 ms, and "after" says what must happen while the operator is down before it restarts.
`STAGEFLEET_RELIABILITY_KILL_POINTS=N` runs only the first N points (default: all 10).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    TERMINAL,
    Api,
    OperatorFactory,
    RCluster,
    assert_clean_success,
    fake_manifest,
    pod_labels,
    poll,
    terminal,
)

pytestmark = [pytest.mark.cluster]

State = tuple[dict[str, Any], list[dict[str, Any]]]  # (ImageBuild, its pods)


def _stage(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next((s for s in (obj.get("status") or {}).get("stages") or () if s["name"] == name), {})


def _pod(pods: list[dict[str, Any]], group: str) -> dict[str, Any] | None:
    return next((p for p in pods if pod_labels(p)[1] == group), None)


def _pod_phase(pods: list[dict[str, Any]], group: str) -> str | None:
    p = _pod(pods, group)
    return None if p is None else str((p.get("status") or {}).get("phase"))


@dataclass(frozen=True)
class Point:
    id: str
    at: Callable[[State], bool]  # kill when this holds
    after: Callable[[State], bool] | None = None  # while down, wait for this before restarting
    double: bool = False  # kill again right after the restart
    latency: float = 0.0  # API latency injected until the kill, to widen a window between two writes


POINTS = [
    Point("right-after-apply", lambda s: True),
    # the plan is in the status (written together with the first pods), no pod has finished yet (the
    # pods may already run: the kubelet and the operator's plan write race, under CPU contention too)
    Point(
        "plan-recorded",
        lambda s: (
            "plan" in (s[0].get("status") or {})
            and not any((p.get("status") or {}).get("phase") in ("Succeeded", "Failed") for p in s[1])
        ),
        latency=0.3,
    ),
    Point("first-pod-created", lambda s: bool(s[1])),
    Point("first-pod-running", lambda s: _pod_phase(s[1], "g1") == "Running"),
    Point(
        "g1-finished-while-down",
        lambda s: _pod_phase(s[1], "g1") == "Running",
        after=lambda s: _pod_phase(s[1], "g1") == "Succeeded",
    ),
    Point("g1-recorded", lambda s: _stage(s[0], "base").get("phase") == "Succeeded"),
    Point("wave2-created", lambda s: _pod(s[1], "g2") is not None and _pod(s[1], "g3") is not None),
    Point(
        "one-of-wave2-recorded",
        lambda s: (
            _stage(s[0], "left").get("phase") == "Succeeded"
            and _stage(s[0], "right").get("phase") != "Succeeded"
        ),
    ),
    Point(
        "final-finished-while-down",  # the last result exists only in the pod: "before final status write"
        lambda s: _pod_phase(s[1], "g4") == "Running",
        after=lambda s: _pod_phase(s[1], "g4") == "Succeeded",
    ),
    Point("killed-again-while-starting", lambda s: _pod(s[1], "g2") is not None, double=True),
]
COUNT = int(os.environ.get("STAGEFLEET_RELIABILITY_KILL_POINTS") or len(POINTS))


@pytest.mark.parametrize("point", POINTS[:COUNT], ids=[p.id for p in POINTS[:COUNT]])
def test_operator_sigkill_at_build_point(
    point: Point, api: Api, make_operator: OperatorFactory, rcluster: RCluster, records: Path
) -> None:
    # right (g3) is slower than left (g2), so "one of wave 2 recorded" is a state that exists.
    op = make_operator(sleep=1.0, slow={"g3": 2.5, "g4": 1.0})
    name = "kill"
    api.create(fake_manifest(name, maxParallelPods=4))

    def state() -> State:
        return api.ib(name), api.pods()

    def reached() -> bool:
        s = state()
        if point.at(s):
            return True
        assert (s[0].get("status") or {}).get("phase") not in TERMINAL, f"ended before kill point {point.id}"
        return False

    rcluster.faults.update({"latency_seconds": point.latency})
    try:
        poll(reached, f"kill point {point.id}", op)
        op.kill()
    finally:
        rcluster.faults.update({"latency_seconds": 0.0})
    if point.after is not None:
        poll(lambda: point.after(state()) if point.after else True, f"{point.id}: progress while down")
    op.start()
    if point.double:
        # the second process is up (its start-up line is logged) and is resuming the build: kill it there
        poll(
            lambda: op.log.read_text(errors="replace").count("stagefleet operator starting") >= 2,
            "restart",
            op,
        )
        op.kill()
        op.start()
    obj = terminal(api, name, op)
    assert_clean_success(obj, api, rcluster.ledger, records)
    assert op.alive()
