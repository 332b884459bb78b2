"""reconciler scheduling: the no-event safety passes stay bounded in total as builds grow; early start pauses
while the cluster is full."""

from __future__ import annotations

from typing import Any, cast

from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.observe import unschedulable
from stagefleet.controller.passes import SAFETY_POLL_SECONDS, safety_poll_seconds
from stagefleet.controller.reconciler import Reconciler


def test_few_builds_are_looked_at_every_15_seconds() -> None:
    assert safety_poll_seconds(0) == SAFETY_POLL_SECONDS == 15.0
    assert safety_poll_seconds(75) == 15.0


def test_many_builds_share_five_safety_passes_a_second() -> None:
    assert safety_poll_seconds(300) == 60.0
    for n in (76, 300, 1000, 5000):
        assert n / safety_poll_seconds(n) <= 5.0 + 1e-9


def _pending(
    uid: str, *, node: str | None = None, unschedulable: bool = True, build: str = "b1"
) -> dict[str, Any]:
    cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/5 nodes"}
    return {
        "metadata": {"uid": uid, "name": uid, "labels": {"stagefleet.io/imagebuild-uid": build}},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": "Pending", "conditions": [cond] if unschedulable else []},
    }


def test_unschedulable_is_the_schedulers_word_not_a_fresh_pod() -> None:
    assert unschedulable(_pending("a"))
    assert not unschedulable(_pending("a", unschedulable=False))  # just created: not judged yet
    assert not unschedulable(_pending("a", node="n1"))  # bound since
    running = {**_pending("a"), "status": {"phase": "Running", "conditions": []}}
    assert not unschedulable(running)


def test_no_early_start_while_the_scheduler_cannot_place_worker_pods() -> None:
    r = Reconciler(cast(Any, None), OperatorConfig(), Metrics())
    assert r.early_start_now()
    r.pod_changed(_pending("a"))
    r.pod_changed(_pending("b"))
    assert not r.early_start_now()
    r.pod_changed(_pending("a", node="n1"))
    r.pod_changed(_pending("b"), deleted=True)
    assert r.early_start_now()
    assert not Reconciler(cast(Any, None), OperatorConfig(early_start=False), Metrics()).early_start_now()


def test_a_pass_forgets_unschedulable_pods_its_list_no_longer_has() -> None:
    """A DELETED event lost with a watch must not keep early start off: the next pass lists the pods."""
    r = Reconciler(cast(Any, None), OperatorConfig(), Metrics())
    r.pod_changed(_pending("a", build="b1"))
    r.pod_changed(_pending("x", build="b2"))
    r.podbook.refresh_schedulable("b1", [])  # b1's pod is gone; b2's is not b1's to judge
    assert not r.early_start_now()
    r.podbook.refresh_schedulable("b2", [_pending("x", build="b2", node="n1")])  # listed, and bound since
    assert r.early_start_now()
