"""The operator's memory stays flat under churn: every per-build and per-pod entry is dropped when its build
ends or is deleted, also when the DELETED event was lost with a watch cut (`tracking`, the sweep).

The pure part (`tracking.stale`) is tested on its own; the rest drives the real Reconciler against an
in-memory stand-in for kube.Kube, through whole builds: created, pods run and succeed, the build ends, and
is deleted — by its TTL, with or without the DELETED event reaching the operator.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping
from typing import Any, cast

import pytest

from stagefleet.controller import reconciler as rec
from stagefleet.controller import tracking
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.events import EventCorrelator
from stagefleet.controller.kube import Kube
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.podspec import LABEL_GROUP, LABEL_UID
from stagefleet.controller.reconciler import Reconciler

from .crdschema import undeclared

DOCKERFILE = (
    "FROM busybox AS build1\nRUN true\n"
    "FROM busybox AS build2\nRUN true\n"
    "FROM busybox AS final\nCOPY --from=build1 /x /x\nCOPY --from=build2 /y /y\n"
)

# --- pure ------------------------------------------------------------------------------------------------


def test_stale_is_what_the_lists_no_longer_have() -> None:
    builds = {("a", "b1"), ("a", "b2"), ("c", "b3")}
    pods = {"p1": ("a", "b1"), "p2": ("a", "b2"), "p3": ("c", "b3")}
    listing = tracking.Listing(
        namespaces=frozenset({"a", "c"}), builds=frozenset({("a", "b1")}), pods=frozenset({"p1", "p3"})
    )
    got = tracking.stale(builds, pods, listing)
    assert got.builds == {("a", "b2"), ("c", "b3")}
    assert got.pods == {"p2"}  # p3 exists although its build is gone (an orphan): kept until it goes


def test_a_namespace_whose_list_failed_proves_nothing() -> None:
    builds = {("a", "b1"), ("down", "b2")}
    pods = {"p1": ("down", "b2")}
    listing = tracking.Listing(namespaces=frozenset({"a"}), builds=frozenset({("a", "b1")}))
    assert tracking.stale(builds, pods, listing) == tracking.Stale()


def test_the_sweep_lists_every_namespace_it_knows_of() -> None:
    assert tracking.namespaces_of({("a", "x")}, {"p": ("b", "y")}) == {"a", "b"}
    assert tracking.stale(set(), {}, tracking.Listing()) == tracking.Stale()


def test_the_event_correlator_forgets_objects_and_expired_entries() -> None:
    c = EventCorrelator(window=10.0)
    c.created(("ns", "u1", "Normal", "R", "m"), "e1", "t", now=0.0)
    c.created(("ns", "u2", "Normal", "R", "m"), "e2", "t", now=5.0)
    c.created(("ns", "u3", "Normal", "R", "m"), "e3", "t", now=5.0)
    c.forget_object("u3")
    assert len(c) == 2
    assert c.expire(now=12.0) == 1  # u1's is older than the window: a repeat would create a new Event
    assert len(c) == 1 and c.repeat_of(("ns", "u2", "Normal", "R", "m"), 12.0) is not None


# --- the reconciler through whole builds ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def registry_removes_stage_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished build's clean-up pass removes its stage tags (controller.stagetags): here the registry
    answers at once (no registry in these tests)."""
    monkeypatch.setattr(rec.reg, "remove_build_tags", lambda client, path, mine: (0, 0, None))


class Cluster:
    """Just the calls Reconciler makes, for many ImageBuilds in a few namespaces, in memory."""

    def __init__(self) -> None:
        self.builds: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}  # by uid
        self.events = EventCorrelator()
        self.n = 0

    def add(self, namespace: str, name: str, ttl: int | None = None) -> None:
        self.n += 1
        spec: dict[str, Any] = {
            "source": {"inline": {"dockerfile": DOCKERFILE}},
            "output": {"image": "127.0.0.1:5000/t/app:latest"},
            "timeout": "10m",
        }
        if ttl is not None:
            spec["ttlSecondsAfterFinished"] = ttl
        self.builds[(namespace, name)] = {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{self.n}", "generation": 1,
                         "resourceVersion": "1"},
            "spec": spec,
        }

    def get_imagebuild(self, namespace: str, name: str) -> dict[str, Any] | None:
        ib = self.builds.get((namespace, name))
        return copy.deepcopy(ib) if ib is not None else None

    def delete_imagebuild(self, namespace: str, name: str, uid: str) -> None:
        self.builds.pop((namespace, name), None)
        for puid in [u for u, p in self.pods.items() if p["metadata"]["labels"][LABEL_UID] == uid]:
            del self.pods[puid]  # (the garbage collector, through the owner references)

    def list_worker_pods(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods.values() if p["metadata"]["labels"][LABEL_UID] == uid]

    def list_imagebuild_names(self, namespace: str) -> set[str]:
        return {n for ns, n in self.builds if ns == namespace}

    def list_worker_pod_uids(self, namespace: str) -> set[str]:
        return {u for u, p in self.pods.items() if p["metadata"]["namespace"] == namespace}

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return None

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        if manifest["kind"] == "ConfigMap":
            return dict(manifest)
        pod = copy.deepcopy(dict(manifest))
        uid = f"pod-{pod['metadata']['name']}"
        pod["metadata"]["uid"] = uid
        pod["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        pod["spec"]["nodeName"] = "node-1"
        pod["status"] = {"phase": "Running"}
        self.pods[uid] = pod
        return copy.deepcopy(pod)

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        for uid in [u for u, p in self.pods.items() if p["metadata"]["name"] == name]:
            del self.pods[uid]

    def delete_configmaps(self, namespace: str, uid: str) -> None:
        pass

    def write_status(self, ib: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        assert undeclared(dict(new)) == [], undeclared(dict(new))  # (the CRD declares every field)
        if dict(ib.get("status") or {}) == dict(new):
            return False
        meta = ib["metadata"]
        stored = self.builds.get((meta["namespace"], meta["name"]))
        if stored is not None:
            stored["status"] = copy.deepcopy(dict(new))
        return True

    def event(self, ib: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = ib["metadata"]
        self.events.created((meta["namespace"], meta["uid"], type_, reason, message), "e", "t", 0.0)

    def finish_running_pods(self) -> list[dict[str, Any]]:
        """Every running pod's worker succeeds; returns the pods as their MODIFIED events carry them."""
        changed = []
        for p in self.pods.values():
            if p["status"]["phase"] != "Running":
                continue
            group = p["metadata"]["labels"][LABEL_GROUP]
            ib = next(b for b in self.builds.values()
                      if b["metadata"]["uid"] == p["metadata"]["labels"][LABEL_UID])
            plan = {g["id"]: g for g in ib["status"]["plan"]["groups"]}
            target = plan[group]["stages"][-1]
            result = {"ok": True, "group": group, "target": target, "image": f"r/stages:{group}",
                      "digest": "sha256:" + "ab" * 32, "cachedSteps": 0, "steps": 1,
                      "stages": [{"name": target, "seconds": 1.0, "cachedSteps": 0, "steps": 1}]}
            p["status"] = {"phase": "Succeeded", "containerStatuses": [{"name": "worker", "state": {
                "terminated": {"exitCode": 0, "startedAt": "2026-01-01T00:00:01Z",
                               "finishedAt": "2026-01-01T00:00:02Z", "message": json.dumps(result)}}}]}
            changed.append(copy.deepcopy(p))
        return changed


def empty_maps(r: Reconciler) -> dict[str, int]:
    return {k: v for k, v in r.sizes().items() if v}


async def run_builds(r: Reconciler, cluster: Cluster, clean_up: bool = True) -> None:
    """Every build in ``cluster`` from creation to its end, as the watch events would drive them; then
    (``clean_up``) the pass the requeue loop runs right after the end, which deletes the build's pods and
    stage tags."""
    for ns, name in list(cluster.builds):
        await r.trigger(ns, name)  # ADDED
    for _ in range(5):
        for pod in cluster.finish_running_pods():
            owner = pod["metadata"]["ownerReferences"][0]["name"]
            if r.pod_changed(pod):
                await r.trigger(pod["metadata"]["namespace"], owner)
    assert all(b["status"]["phase"] == "Succeeded" for b in cluster.builds.values())
    if clean_up:
        for ns, name in list(cluster.builds):
            await r.trigger(ns, name)
        assert cluster.pods == {}


def test_maps_are_empty_after_builds_end_and_are_deleted_some_deletions_unseen() -> None:
    cluster = Cluster()
    r = Reconciler(cast(Kube, cluster), OperatorConfig(status_coalesce=0, early_start=False), Metrics(),
                   threads=1)
    for i in range(12):
        cluster.add(f"ns{i % 3}", f"b{i}")

    async def scenario() -> None:
        await run_builds(r, cluster)
        # Ended and cleaned up (pods deleted, stage tags removed): nothing is due, so nothing of the builds
        # is kept; their pods' entries stay until the pods' DELETED events (a late kubelet write with the
        # same signature needs no pass) — here none comes.
        left = empty_maps(r)
        assert set(left) <= {"events", "pod_states", "pod_nodes", "pod_builds", "created"}, left
        assert left["pod_builds"] == 36
        # Deleted: four with their DELETED events seen, four unseen (a watch cut) but a later pod event
        # makes a pass find them gone, four unseen with no pass at all (only the sweep finds them).
        keys = sorted(cluster.builds)
        for ns, name in keys:  # something brings the entries back first (pod events after the end)
            for p in cluster.list_worker_pods(ns, cluster.builds[(ns, name)]["metadata"]["uid"]):
                p["metadata"]["resourceVersion"] = "x"
                r.pod_changed({**p, "status": {**p["status"], "extra": 1}})
        assert empty_maps(r).get("pod_states") == 36
        for i, (ns, name) in enumerate(keys):
            uid = cluster.builds[(ns, name)]["metadata"]["uid"]
            cluster.delete_imagebuild(ns, name, uid)
            if i % 3 == 0:
                r.cleanup(ns, uid)  # the handler of the DELETED event
                r.forget(ns, name, uid)
            elif i % 3 == 1:
                await r.trigger(ns, name)  # e.g. a pass due anyway: the GET answers 404
        assert empty_maps(r).get("pod_states") == 12  # the four builds nobody told the operator about
        stale = await r.sweep()
        assert len(stale.builds) == 0 and len(stale.pods) == 12
        cluster.events.expire(1e9)  # (the correlator's window; the sweep does this with its clock)
        assert empty_maps(r) == {}

    asyncio.run(scenario())


def test_ttl_deleted_builds_leave_nothing_even_without_their_deleted_event() -> None:
    cluster = Cluster()
    r = Reconciler(cast(Kube, cluster), OperatorConfig(status_coalesce=0, early_start=False), Metrics(),
                   threads=1)
    for i in range(6):
        cluster.add("ns", f"b{i}", ttl=0)

    async def scenario() -> None:
        await run_builds(r, cluster, clean_up=False)
        due = r.passes.due
        assert all(when < float("inf") for when in due.values()) and len(due) == 6  # TTL pending
        assert r.unfinished() == 0  # ... but ended: they do not lengthen the safety poll of running builds
        for ns, name in sorted(cluster.builds):
            await r.trigger(ns, name)  # the requeue at the TTL: the pass deletes the build
        assert cluster.builds == {} and cluster.pods == {}
        # No DELETED event reached the operator (neither the builds' nor their pods'): the passes left no
        # build entry; the pods' entries wait for the sweep.
        left = empty_maps(r)
        assert set(left) <= {"events", "pod_states", "pod_nodes", "pod_builds", "created"}, left
        await r.sweep()
        cluster.events.expire(1e9)
        assert empty_maps(r) == {}

    asyncio.run(scenario())


def test_the_sweep_keeps_builds_that_exist_and_forgets_those_that_do_not() -> None:
    cluster = Cluster()
    r = Reconciler(cast(Kube, cluster), OperatorConfig(status_coalesce=0, early_start=False), Metrics(),
                   threads=1)
    cluster.add("ns", "live")
    cluster.add("ns", "gone")

    async def scenario() -> None:
        await r.trigger("ns", "live")
        await r.trigger("ns", "gone")  # both building: pods running, a pass due
        assert set(r.passes.due) == {("ns", "live"), ("ns", "gone")}
        cluster.delete_imagebuild("ns", "gone", cluster.builds[("ns", "gone")]["metadata"]["uid"])
        r.metrics.record("ns/ghost", {}, {"phase": "Building"})  # an entry with no pass coming
        stale = await r.sweep()
        assert stale.builds == {("ns", "gone"), ("ns", "ghost")}
        assert set(r.podbook.builds.values()) == {("ns", "live")}  # gone's pods are gone: their entries too
        assert r.metrics.build_keys() == {"ns/live", "ns/gone"}  # ghost forgotten; gone has a pass due,
        assert set(r.passes.due) == {("ns", "live"), ("ns", "gone")}  # which finds it gone itself:
        await r.trigger("ns", "gone")
        assert set(r.passes.due) == {("ns", "live")} and r.metrics.build_keys() == {"ns/live"}
        assert set(r.passes.locks) == {("ns", "live")}

    asyncio.run(scenario())
