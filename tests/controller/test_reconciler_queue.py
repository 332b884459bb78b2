"""reconciler with --max-worker-pods: passes of builds in two namespaces share the cap fairly; a queued
build says where it stands (Reconciling, reason Queued, status.queue, its groups' messages), a freed slot
wakes the build it belongs to, and no pod starts early while groups wait.

The API is an in-memory stand-in for kube.Kube holding several ImageBuilds; the decisions are the real ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from stagefleet.controller import reconciler as rec
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.podspec import LABEL_UID
from stagefleet.controller.reconciler import Reconciler

from .crdschema import undeclared
from .helpers import result_json

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
DOCKERFILE = (
    "FROM busybox AS build1\nRUN true\n"
    "FROM busybox AS build2\nRUN true\n"
    "FROM busybox AS final\nCOPY --from=build1 /x /x\nCOPY --from=build2 /y /y\n"
)


class FarmApi:
    """The calls Reconciler makes, for several ImageBuilds in several namespaces."""

    def __init__(self) -> None:
        self.ibs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []

    def add(self, namespace: str, name: str, **spec: Any) -> None:
        self.ibs[(namespace, name)] = {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                         "generation": 1, "resourceVersion": "1"},
            "spec": {
                "source": {"inline": {"dockerfile": DOCKERFILE}},
                "output": {"image": f"127.0.0.1:5000/{namespace}/{name}:latest"},
                "timeout": "10m",
                **spec,
            },
        }

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.ibs[(namespace, name)]["status"])

    def pods_of(self, namespace: str, name: str) -> list[str]:
        uid = f"uid-{namespace}-{name}"
        return sorted(n for n, p in self.pods.items() if p["metadata"]["labels"][LABEL_UID] == uid)

    def get_imagebuild(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.ibs.get((namespace, name)))

    def list_worker_pods(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods.values() if p["metadata"]["labels"][LABEL_UID] == uid]

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return None

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        if manifest["kind"] == "ConfigMap":
            return dict(manifest)
        pod = copy.deepcopy(dict(manifest))
        name = pod["metadata"]["name"]
        pod["metadata"]["uid"] = f"uid-{name}"
        pod["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        pod["status"] = {"phase": "Pending"}
        self.pods[name] = pod
        return copy.deepcopy(pod)

    def finish(self, name: str) -> dict[str, Any]:
        """The pod's worker succeeded: its last state, as its watch event brings it."""
        pod = self.pods[name]
        group = pod["metadata"]["labels"]["stagefleet.io/group"]
        target = {"g1": "build1", "g2": "build2", "g3": "final"}[group]
        result = result_json(group, target, "sha256:" + "ab" * 32)
        pod["status"] = {
            "phase": "Succeeded",
            "startTime": "2026-01-01T00:00:01Z",
            "containerStatuses": [{"name": "worker", "state": {"terminated": {
                "exitCode": 0, "message": result, "startedAt": "2026-01-01T00:00:01Z",
                "finishedAt": "2026-01-01T00:00:02Z"}}}],
        }
        return copy.deepcopy(pod)

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        self.pods.pop(name, None)

    def delete_configmaps(self, namespace: str, uid: str) -> None:
        pass

    def write_status(self, ib: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        assert undeclared(dict(new)) == [], undeclared(dict(new))  # (the CRD declares every field)
        meta = ib["metadata"]
        stored = self.ibs[(meta["namespace"], meta["name"])]
        if dict(ib.get("status") or {}) == dict(new):
            return False
        stored["status"] = copy.deepcopy(dict(new))
        stored["metadata"]["resourceVersion"] = str(int(stored["metadata"]["resourceVersion"]) + 1)
        return True

    def event(self, ib: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


@pytest.fixture
def farm(monkeypatch: pytest.MonkeyPatch) -> tuple[FarmApi, Reconciler, list[tuple[str, str]]]:
    monkeypatch.setattr(rec, "_now", lambda: NOW)
    api = FarmApi()
    r = Reconciler(cast(Kube, api), OperatorConfig(status_coalesce=0, max_worker_pods=3), Metrics(),
                   threads=1)
    woken: list[tuple[str, str]] = []
    monkeypatch.setattr(r.passes, "wake", lambda ns, name: woken.append((ns, name)))
    return api, r, woken


def reconciling(status: Mapping[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Reconciling")


def test_a_small_namespace_is_not_queued_behind_a_big_ones_backlog(
    farm: tuple[FarmApi, Reconciler, list[tuple[str, str]]],
) -> None:
    api, r, woken = farm
    for name in ("b1", "b2", "b3"):
        api.add("big", name)
        r.reconcile_safely("big", name)
    # b1 took two slots (its two ready groups), b2 one; b2's other group and b3's two wait.
    assert (api.pods_of("big", "b1"), api.pods_of("big", "b2"), api.pods_of("big", "b3")) == (
        ["b1-1-g1-a1", "b1-1-g2-a1"], ["b2-1-g1-a1"], [])
    b3 = api.status("big", "b3")
    assert b3["phase"] == "Building" and reconciling(b3)["reason"] == "Queued"
    assert b3["queue"] == {"groups": 2, "ahead": 1, "namespaceRunning": 3, "namespaceShare": 3,
                           "maxWorkerPods": 3}
    assert b3["message"].startswith("queued: 1 group ahead in the farm's queue (--max-worker-pods 3)")
    assert {s["phase"] for s in b3["stages"]} == {"Waiting"}
    assert all(s["message"].startswith("queued: ") for s in b3["stages"] if s["group"] != "g3")
    stalled = next(c for c in b3["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"  # waiting for the farm is not being stuck

    api.add("small", "s1")
    r.reconcile_safely("small", "s1")
    s1 = api.status("small", "s1")
    assert api.pods_of("small", "s1") == [] and s1["queue"]["ahead"] == 0  # first in line
    assert s1["queue"]["namespaceShare"] == 1.5  # (of 3: big waits for more than that)

    # One of big's pods ends: the slot is small's. Its build is woken; big's own pass cannot take it.
    woken.clear()
    r.pod_changed(api.finish("b1-1-g1-a1"))
    assert woken == [("small", "s1")]
    r.reconcile_safely("big", "b1")
    r.reconcile_safely("big", "b2")
    assert api.pods_of("big", "b1") == ["b1-1-g1-a1", "b1-1-g2-a1"]  # (its final group waits for g2)
    r.reconcile_safely("small", "s1")
    assert api.pods_of("small", "s1") == ["s1-1-g1-a1"]
    s1 = api.status("small", "s1")
    assert s1["queue"]["groups"] == 1 and reconciling(s1)["reason"] == "Building"
    running = [p for p in api.pods.values() if p["status"]["phase"] not in ("Succeeded", "Failed")]
    assert len(running) == 3


def test_a_build_granted_all_it_wants_shows_no_queue_and_starts_nothing_early(
    farm: tuple[FarmApi, Reconciler, list[tuple[str, str]]],
) -> None:
    api, r, _ = farm
    api.add("a", "x")
    api.add("b", "y")
    r.reconcile_safely("a", "x")
    r.reconcile_safely("b", "y")
    assert "queue" not in api.status("a", "x") and api.status("b", "y")["queue"]["groups"] == 1
    assert not r.early_start_now()  # y waits: x's final group must not take a slot to wait in
    r.pod_changed(api.finish("x-1-g1-a1"))
    r.pod_changed(api.finish("x-1-g2-a1"))
    r.reconcile_safely("b", "y")
    r.reconcile_safely("a", "x")
    assert api.pods_of("b", "y") == ["y-1-g1-a1", "y-1-g2-a1"] and "queue" not in api.status("b", "y")
    assert api.pods_of("a", "x") == ["x-1-g1-a1", "x-1-g2-a1", "x-1-g3-a1"]
    assert r.queue.sizes() == {"queue_pods": 3, "queue_demands": 0, "queue_namespaces": 2}


def test_a_spec_priority_edit_reorders_without_a_new_run(
    farm: tuple[FarmApi, Reconciler, list[tuple[str, str]]],
) -> None:
    api, r, _ = farm
    for name in ("first", "second", "third"):
        api.add("t", name)
        r.reconcile_safely("t", name)
    assert api.status("t", "third")["queue"]["ahead"] == 1  # second's waiting group
    api.ibs[("t", "third")]["spec"]["priority"] = 5
    api.ibs[("t", "third")]["metadata"]["generation"] = 2
    r.reconcile_safely("t", "third")
    status = api.status("t", "third")
    assert status["queue"]["ahead"] == 0 and status["run"] == 1 and status["observedGeneration"] == 2
