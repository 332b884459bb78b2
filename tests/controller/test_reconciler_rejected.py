"""reconciler: a pod (or inline-Dockerfile ConfigMap) the API server refuses is recorded in status at once —
Stalled, reason PodRejected, the API's message, one Warning event — the refused groups wait and are tried
again, another group may take the slot in the same pass, and the build resumes once the API accepts the pod.

The API here is an in-memory stand-in for kube.Kube (the shell's only I/O); the decisions are the real ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from stagefleet.controller import reconciler as rec
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube, Refused
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.podspec import LABEL_GROUP
from stagefleet.controller.reconciler import Reconciler

from .crdschema import undeclared

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
DOCKERFILE = (
    "FROM busybox AS build1\nRUN true\n"
    "FROM busybox AS build2\nRUN true\n"
    "FROM busybox AS final\nCOPY --from=build1 /x /x\nCOPY --from=build2 /y /y\n"
)


def sa_refusal(manifest: Mapping[str, Any]) -> Refused:
    name = manifest["metadata"]["name"]
    message = (
        f'pods "{name}" is forbidden: error looking up service account ns/nope: '
        'serviceaccount "nope" not found'
    )
    return Refused("Pod", name, 403, "Forbidden", message)


class FakeApi:
    """Just the calls Reconciler makes, in memory; ``refuse`` decides which creates the API refuses."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.ib: dict[str, Any] = {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {
                "name": "b",
                "namespace": "ns",
                "uid": "uid-b",
                "generation": 1,
                "resourceVersion": "1",
            },
            "spec": spec,
        }
        self.pods: dict[str, dict[str, Any]] = {}
        self.configmaps: list[str] = []
        self.creates: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.refuse: Callable[[Mapping[str, Any]], Refused | None] = lambda m: None

    def get_imagebuild(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.ib)

    def list_worker_pods(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.pods.values()))

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return None

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        name = manifest["metadata"]["name"]
        self.creates.append(name)
        refused = self.refuse(manifest)
        if refused is not None:
            raise refused
        if manifest["kind"] == "ConfigMap":
            self.configmaps.append(name)
            return dict(manifest)
        if name in self.pods:
            return None
        pod = copy.deepcopy(dict(manifest))
        pod["metadata"]["uid"] = f"uid-{name}"
        pod["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        pod["status"] = {"phase": "Pending"}
        self.pods[name] = pod
        return copy.deepcopy(pod)

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        self.pods.pop(name, None)

    def delete_configmaps(self, namespace: str, uid: str) -> None:
        self.configmaps.clear()

    def write_status(self, ib: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        assert undeclared(dict(new)) == [], undeclared(dict(new))  # (the CRD declares every field)
        if dict(ib.get("status") or {}) == dict(new):
            return False
        self.ib["status"] = copy.deepcopy(dict(new))
        self.ib["metadata"]["resourceVersion"] = str(int(self.ib["metadata"]["resourceVersion"]) + 1)
        return True

    def event(self, ib: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    now = [NOW]
    monkeypatch.setattr(rec, "_now", lambda: now[0])
    return now


def make(spec: dict[str, Any] | None = None) -> tuple[FakeApi, Reconciler]:
    full = {
        "source": {"inline": {"dockerfile": DOCKERFILE}},
        "output": {"image": "127.0.0.1:5000/t/b:latest"},
        "timeout": "10m",
        **(spec or {}),
    }
    api = FakeApi(full)
    r = Reconciler(cast(Kube, api), OperatorConfig(status_coalesce=0), Metrics(), threads=1)
    return api, r


def stalled(status: Mapping[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Stalled")


def by_group(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["group"]: s for s in status["stages"]}


def test_refused_pods_stall_the_build_then_it_resumes_by_itself(clock: list[datetime]) -> None:
    api, r = make()
    api.refuse = lambda m: sa_refusal(m) if m["kind"] == "Pod" else None
    requeue = r.reconcile("ns", "b")
    status = api.ib["status"]
    assert api.pods == {} and api.configmaps == ["b-1-dockerfile"]
    assert status["phase"] == "Pending" and status["startTime"] == "2026-01-01T00:01:00Z"
    assert "plan" in status and status["observedGeneration"] == 1
    cond = stalled(status)
    assert cond["status"] == "True" and cond["reason"] == "PodRejected"
    assert 'pods "b-1-g1-a1" is forbidden: error looking up service account ns/nope' in cond["message"]
    assert (
        "group g1 (build1) not started: pod b-1-g1-a1 refused by the API (403 Forbidden)" in cond["message"]
    )
    assert [(t, reason) for t, reason, _ in api.events] == [("Normal", "Planned"), ("Warning", "PodRejected")]
    assert api.events[-1][2] == status["message"] == cond["message"]
    assert requeue == 5.0
    tried = len(api.creates)

    # Before the retry time: no create, no event, no write.
    version = api.ib["metadata"]["resourceVersion"]
    clock[0] = NOW + timedelta(seconds=2)
    assert r.reconcile("ns", "b") == 3.0
    assert len(api.creates) == tried and len(api.events) == 2
    assert api.ib["metadata"]["resourceVersion"] == version

    # Retried and refused again: recorded (a longer wait), still one event.
    clock[0] = NOW + timedelta(seconds=5)
    assert r.reconcile("ns", "b") == 10.0
    assert len(api.creates) > tried and len(api.events) == 2
    assert by_group(api.ib["status"])["g1"]["rejections"] == 2

    # The ServiceAccount appears: the next try creates the pods and the stall is over.
    api.refuse = lambda m: None
    clock[0] = NOW + timedelta(seconds=15)
    r.reconcile("ns", "b")
    status = api.ib["status"]
    assert sorted(api.pods) == ["b-1-g1-a1", "b-1-g2-a1"]  # the first attempt's names: none was used
    assert status["phase"] == "Building" and stalled(status)["status"] == "False"
    assert all("rejections" not in s for s in status["stages"])
    assert by_group(status)["g1"]["phase"] == "Pending" and by_group(status)["g1"]["attempts"] == 1
    assert len(api.events) == 2


def test_a_group_refused_alone_leaves_its_slot_to_another_in_the_same_pass(clock: list[datetime]) -> None:
    api, r = make({"maxParallelPods": 1})
    api.refuse = lambda m: (
        sa_refusal(m) if (m["metadata"].get("labels") or {}).get(LABEL_GROUP) == "g1" else None
    )
    r.reconcile("ns", "b")
    status = api.ib["status"]
    assert sorted(api.pods) == ["b-1-g2-a1"]
    groups = by_group(status)
    assert groups["g1"]["phase"] == "Waiting" and groups["g1"]["rejections"] == 1
    assert groups["g2"]["phase"] == "Pending" and groups["g2"]["pod"] == "b-1-g2-a1"
    assert status["phase"] == "Building" and stalled(status)["reason"] == "PodRejected"
    assert [reason for _, reason, _ in api.events] == ["Planned", "PodRejected"]


def test_a_refused_inline_dockerfile_configmap_stalls_every_group(clock: list[datetime]) -> None:
    api, r = make()
    api.refuse = lambda m: (
        Refused(
            "ConfigMap", m["metadata"]["name"], 403, "Forbidden", "configmaps is forbidden: exceeded quota"
        )
        if m["kind"] == "ConfigMap"
        else None
    )
    r.reconcile("ns", "b")
    status = api.ib["status"]
    assert api.creates == ["b-1-dockerfile"] and api.pods == {}
    assert status["phase"] == "Pending" and stalled(status)["reason"] == "PodRejected"
    for gid in ("g1", "g2"):
        assert by_group(status)[gid]["message"] == (
            "ConfigMap b-1-dockerfile refused by the API (403 Forbidden): "
            "configmaps is forbidden: exceeded quota"
        )
    api.refuse = lambda m: None
    clock[0] = NOW + timedelta(seconds=5)
    r.reconcile("ns", "b")
    assert api.configmaps == ["b-1-dockerfile"] and sorted(api.pods) == ["b-1-g1-a1", "b-1-g2-a1"]
    assert stalled(api.ib["status"])["status"] == "False"


def test_the_timeout_ends_a_build_whose_pods_are_always_refused(clock: list[datetime]) -> None:
    api, r = make({"timeout": "5s"})
    api.refuse = lambda m: sa_refusal(m) if m["kind"] == "Pod" else None
    assert r.reconcile("ns", "b") == 5.0
    clock[0] = NOW + timedelta(seconds=5)
    assert r.reconcile("ns", "b") == 0.5  # ended: the next pass sees to what it leaves behind (stagetags)
    status = api.ib["status"]
    assert status["phase"] == "Cancelled" and status["startTime"] == "2026-01-01T00:01:00Z"
    assert status["message"].startswith("timed out after 5s (spec.timeout); group g1 (build1) not started")
    assert [reason for _, reason, _ in api.events] == ["Planned", "PodRejected", "BuildCancelled"]
