"""nodewatch.py and the reconciler's use of it: one list+watch of Nodes keeps their readiness; only a
readiness change triggers the builds with pods on that node; without permission to list Nodes the cache is
None and one warning says so; a lost pod is force-deleted (gracePeriodSeconds=0) before the status write."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from stagefleet.controller import reconciler as rec
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Expired, Forbidden, Kube
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.nodeloss import NodeReadiness
from stagefleet.controller.nodewatch import NodeWatch
from stagefleet.controller.reconciler import Reconciler

from .test_reconciler_rejected import NOW, FakeApi, by_group, make

T = "2026-01-01T00:00:00Z"


def node(name: str, ready: str, since: str = T, rv: str = "1", heartbeat: str = T) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": rv},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": ready,
                    "lastTransitionTime": since,
                    "lastHeartbeatTime": heartbeat,
                }
            ]
        },
    }


class FakeNodes:
    """list_nodes/watch_nodes from scripts: each list answers the next entry (an exception is raised),
    each watch yields the next list of events (an exception ends it); the watch after the last stops the
    NodeWatch."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.watched_from: list[str] = []
        self.stop: Any = None

    def list_nodes(self) -> tuple[list[dict[str, Any]], str]:
        item = self.lists.pop(0)
        if isinstance(item, Exception):
            if not self.lists:
                self.stop()
            raise item
        return cast(tuple[list[dict[str, Any]], str], item)

    def watch_nodes(self, rv: str, timeout_seconds: int = 300) -> Iterator[tuple[str, Any]]:
        self.watched_from.append(rv)
        if not self.watches:
            self.stop()
            return
        script = self.watches.pop(0)
        for event in script:
            if isinstance(event, Exception):
                raise event
            yield event


def run_watch(fake: FakeNodes) -> tuple[NodeWatch, list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []
    watch = NodeWatch(cast(Kube, fake), lambda name: seen.append((name, snapshot(watch))), lost_after=60)
    fake.stop = watch.stop
    watch.run()  # in this thread: returns once stopped
    return watch, seen


def snapshot(watch: NodeWatch) -> dict[str, str] | None:
    nodes = watch.snapshot()
    return None if nodes is None else {k: v.status for k, v in nodes.items()}


def test_only_readiness_changes_are_passed_on() -> None:
    fake = FakeNodes(
        lists=[([node("n1", "True"), node("n2", "True")], "10"), ([node("n1", "True")], "40")],
        watches=[
            [
                ("MODIFIED", node("n1", "True", rv="11", heartbeat="2026-01-01T00:00:10Z")),  # heartbeat only
                ("BOOKMARK", {"metadata": {"resourceVersion": "12"}}),
                ("MODIFIED", node("n1", "Unknown", since="2026-01-01T00:01:00Z", rv="13")),
                ("MODIFIED", node("n1", "Unknown", since="2026-01-01T00:01:00Z", rv="14")),  # taints, say
            ],
            [("DELETED", node("n2", "True", rv="20"))],  # the watch ended; the next one goes on from 14
            [Expired("too old")],  # → list again (n2 gone: no change; n1 Ready again: a change)
        ],
    )
    watch, seen = run_watch(fake)
    assert fake.watched_from == ["10", "14", "20", "40"]
    assert seen == [
        ("n1", {"n1": "True", "n2": "True"}),
        ("n2", {"n1": "True", "n2": "True"}),
        ("n1", {"n1": "Unknown", "n2": "True"}),
        ("n2", {"n1": "Unknown"}),
        ("n1", {"n1": "True"}),
    ]
    nodes = watch.snapshot()
    assert nodes == {"n1": NodeReadiness("True", datetime(2026, 1, 1, tzinfo=UTC))}


def test_without_permission_there_is_no_view_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNodes(
        lists=[Forbidden('nodes is forbidden: User "x" cannot list resource "nodes"')], watches=[]
    )
    caplog.set_level(logging.WARNING, logger="stagefleet.operator")
    watch, seen = run_watch(fake)
    assert watch.snapshot() is None and watch.synced.is_set() and seen == []
    (record,) = [r for r in caplog.records if "cannot list Nodes" in r.getMessage()]
    assert "stuck Terminating (its deletionTimestamp + 60 s" in record.getMessage()
    assert "rbac.nodes" in record.getMessage()


def test_a_node_going_not_ready_triggers_only_the_builds_with_pods_on_it() -> None:
    r = Reconciler(cast(Kube, object()), OperatorConfig(), Metrics(), threads=1)
    triggered: list[tuple[str, str]] = []

    async def trigger(ns: str, name: str) -> None:
        triggered.append((ns, name))

    r.passes.trigger = trigger  # type: ignore[method-assign]

    def wpod(uid: str, build: str, node_name: str | None) -> dict[str, Any]:
        return {
            "metadata": {
                "uid": uid,
                "namespace": "ns",
                "ownerReferences": [{"kind": "ImageBuild", "name": build}],
                "labels": {},
            },
            "spec": {"nodeName": node_name} if node_name else {},
            "status": {},
        }

    r.pod_changed(wpod("u1", "a", "n1"))
    r.pod_changed(wpod("u2", "a", "n1"))
    r.pod_changed(wpod("u3", "b", "n2"))
    r.pod_changed(wpod("u4", "c", None))
    r.pod_changed(wpod("u5", "d", "n1"))
    r.pod_changed(wpod("u5", "d", "n1"), deleted=True)

    async def go() -> None:
        r._node_changed("n1")
        await asyncio.sleep(0)
        await asyncio.gather(*list(r.passes.tasks))

    asyncio.run(go())
    assert triggered == [("ns", "a")]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    now = [NOW]
    monkeypatch.setattr(rec, "_now", lambda: now[0])
    return now


class LostNodeApi(FakeApi):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.deletes: list[tuple[str, int | None]] = []

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        self.deletes.append((name, grace_seconds))
        super().delete_pod(namespace, name, grace_seconds)


class Snapshot:
    def __init__(self, nodes: dict[str, NodeReadiness] | None) -> None:
        self.nodes = nodes

    def snapshot(self) -> dict[str, NodeReadiness] | None:
        return self.nodes


def test_a_pod_on_a_lost_node_is_force_deleted_and_its_group_retried(clock: list[datetime]) -> None:
    api, _ = make()
    lossy = LostNodeApi(api.ib["spec"])
    # `make`'s reconciler, on the lossy API from the start (its parts share the API it is given)
    r = Reconciler(cast(Kube, lossy), OperatorConfig(status_coalesce=0), Metrics(), threads=1)
    r.reconcile("ns", "b")
    assert sorted(lossy.pods) == ["b-1-g1-a1", "b-1-g2-a1"]
    for name, p in lossy.pods.items():
        p["spec"]["nodeName"] = "n1" if "g1" in name else "n2"
        p["status"] = {"phase": "Running"}
    r.nodes = Snapshot(  # type: ignore[assignment]
        {"n1": NodeReadiness("Unknown", NOW - timedelta(seconds=50)), "n2": NodeReadiness("True", None)}
    )
    assert r.reconcile("ns", "b") == 10.0  # looks again when the grace period ends
    assert lossy.deletes == []
    clock[0] = NOW + timedelta(seconds=10)
    r.reconcile("ns", "b")
    # The lost pod is force-deleted; the final's pod, started early and waiting for g1's attempt 1, is
    # stopped the ordinary way (its node is fine) to be started again for attempt 2.
    assert lossy.deletes == [("b-1-g3-a1", None), ("b-1-g1-a1", 0)]
    g1 = by_group(lossy.ib["status"])["g1"]
    assert g1["phase"] == "Retrying" and "NodeLost: pod b-1-g1-a1: node n1 stopped reporting" in g1["message"]
    assert ("Warning", "GroupRetrying") in [(t, reason) for t, reason, _ in lossy.events]
