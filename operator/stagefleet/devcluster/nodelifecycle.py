"""kube-controller-manager's node lifecycle controller and NoExecute taint manager, small, for the dev
cluster: what a real control plane does when a kubelet stops reporting.

It speaks only the public API (`kubeapi.KubeAPI`). Every ``period`` seconds it lists the Nodes and their
Leases (``kube-node-lease``). A node's heartbeat is its Lease's ``renewTime`` and its Ready condition's
``lastHeartbeatTime``; like the real controller it times a node by when it *saw* the heartbeat change (its
own clock, so a restarted controller gives every node a full grace period):

* no new heartbeat for ``grace_seconds`` (``--node-monitor-grace-period``, 40 s): every node condition
  becomes ``Unknown`` (reason ``NodeStatusUnknown``, ``Kubelet stopped posting node status.``; a node that
  never reported: ``NodeStatusNeverUpdated``), and its pods' ``Ready`` condition ``False`` (the phase stays
  what the kubelet last said: ``Running``);
* taints from the Ready condition: ``node.kubernetes.io/unreachable`` (Unknown) or ``…/not-ready``
  (False) with effect ``NoSchedule``, and ``NoExecute`` too unless no node at all is Ready ("full
  disruption": then nothing is evicted, and such NoExecute taints are taken off every node);
* taint manager: a pod on a node with a NoExecute taint it does not tolerate is deleted at once; one that
  tolerates it for ``tolerationSeconds`` (admission gives every pod 300 s) is deleted once that has passed
  since the taint's ``timeAdded`` (event ``TaintManagerEviction``). The delete is an ordinary one (the
  pod's grace period): with no kubelet to finish it, the pod stays ``Terminating`` until the kubelet
  returns or someone force-deletes it.

A kubelet that reports again makes its node Ready itself; the next sync takes the taints off. A
development and test tool (see docs/dev-cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from stagefleet.devcluster.kubeapi import ApiError, ClusterAccess, KubeAPI
from stagefleet.devcluster.loopthread import ControllerThread

log = logging.getLogger("stagefleet.devcluster.nodelifecycle")

NODE_MONITOR_GRACE_SECONDS = 40.0  # kube-controller-manager --node-monitor-grace-period
NODE_MONITOR_PERIOD = 5.0  # --node-monitor-period
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
TERMINAL = ("Succeeded", "Failed")
TRANSIENT = (ApiError, aiohttp.ClientError, TimeoutError, OSError)


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def ready_status(node: Mapping[str, Any]) -> str | None:
    for c in (node.get("status") or {}).get("conditions") or ():
        if c.get("type") == "Ready":
            return str(c.get("status"))
    return None


def heartbeat(node: Mapping[str, Any], lease: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """What changes while a kubelet is alive: its Lease's renewTime and its Ready lastHeartbeatTime."""
    ready: Mapping[str, Any] = next(
        (c for c in (node.get("status") or {}).get("conditions") or () if c.get("type") == "Ready"), {}
    )
    return ((lease or {}).get("spec") or {}).get("renewTime"), ready.get("lastHeartbeatTime")


def unknown_conditions(node: Mapping[str, Any], when: str) -> list[dict[str, Any]]:
    """The node's conditions as the controller rewrites them when the kubelet stopped posting: Unknown,
    the last heartbeat kept, the transition now."""
    old = {c.get("type"): c for c in (node.get("status") or {}).get("conditions") or ()}
    never = not old
    out = []
    for ctype in CONDITIONS:
        prev = old.get(ctype) or {}
        out.append(
            {
                "type": ctype,
                "status": "Unknown",
                "reason": "NodeStatusNeverUpdated" if never else "NodeStatusUnknown",
                "message": "Kubelet never posted node status."
                if never
                else "Kubelet stopped posting node status.",
                "lastHeartbeatTime": prev.get("lastHeartbeatTime") or when,
                "lastTransitionTime": when,
            }
        )
    extra = [c for t, c in old.items() if t not in CONDITIONS]
    return [*out, *extra]


def wanted_taints(ready: str | None, disruption: bool) -> list[tuple[str, str]]:
    """(key, effect) of the condition taints a node with this Ready status gets."""
    if ready == "True" or ready is None:
        return []
    key = UNREACHABLE if ready == "Unknown" else NOT_READY
    return [(key, "NoSchedule")] + ([] if disruption else [(key, "NoExecute")])


def merge_taints(
    current: Sequence[Mapping[str, Any]], wanted: Sequence[tuple[str, str]], when: str
) -> list[dict[str, Any]]:
    """``current`` with the condition taints replaced by ``wanted`` (an unchanged one keeps its timeAdded)."""
    mine = (UNREACHABLE, NOT_READY)
    kept = [dict(t) for t in current if t.get("key") not in mine]
    have = {(t.get("key"), t.get("effect")): dict(t) for t in current if t.get("key") in mine}
    return kept + [have.get(w) or {"key": w[0], "effect": w[1], "timeAdded": when} for w in wanted]


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' ToleratesTaint."""
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key")
    if key and key != taint.get("key"):
        return False
    if toleration.get("operator") == "Exists":
        return True
    return bool(key) and (toleration.get("value") or "") == (taint.get("value") or "")


def eviction_time(pod: Mapping[str, Any], taints: Sequence[Mapping[str, Any]]) -> float | None:
    """When the taint manager deletes ``pod`` because of the node's NoExecute ``taints`` (epoch seconds;
    None: never, it tolerates them without a limit)."""
    no_execute = [t for t in taints if t.get("effect") == "NoExecute"]
    if not no_execute:
        return None
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    seconds: list[float] = []
    for taint in no_execute:
        matching = [t for t in tolerations if tolerates(t, taint)]
        if not matching:
            return 0.0  # not tolerated: at once
        seconds += [float(t["tolerationSeconds"]) for t in matching if t.get("tolerationSeconds") is not None]
    if not seconds:
        return None
    added = [parse_time(t.get("timeAdded")) for t in no_execute]
    start = max((a for a in added if a is not None), default=time.time())
    return start + max(0.0, min(seconds))


class NodeLifecycleController:
    def __init__(
        self,
        api: KubeAPI,
        *,
        grace_seconds: float = NODE_MONITOR_GRACE_SECONDS,
        period: float = NODE_MONITOR_PERIOD,
    ) -> None:
        self.api = api
        self.grace = grace_seconds
        self.period = period
        self._seen: dict[str, tuple[tuple[str | None, str | None], float]] = {}  # heartbeat, seen at
        self.ready = asyncio.Event()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.sync()
                except asyncio.CancelledError:
                    raise
                except TRANSIENT as e:
                    log.debug("node lifecycle sync: %s", e)
                self.ready.set()
                await asyncio.sleep(self.period)
        finally:
            await self.api.close()

    async def sync(self) -> None:
        nodes = (await self.api.get("/api/v1/nodes")).get("items") or []
        leases = {
            lease["metadata"]["name"]: lease for lease in (await self.api.get(LEASES)).get("items") or []
        }
        mono, when = time.monotonic(), now_text()
        checked = []
        for node in nodes:
            name = node["metadata"]["name"]
            beat = heartbeat(node, leases.get(name))
            seen = self._seen.get(name)
            if seen is None or seen[0] != beat:
                self._seen[name] = (beat, mono)
            elif mono - seen[1] > self.grace and ready_status(node) != "Unknown":
                node = await self._mark_unknown(node, when)
            checked.append(node)
        nodes = checked
        for name in set(self._seen) - {n["metadata"]["name"] for n in nodes}:
            del self._seen[name]
        # Full disruption: no node Ready at all (a network partition of the control plane, say): evict
        # nothing, as the real controller does.
        disruption = bool(nodes) and not any(ready_status(n) == "True" for n in nodes)
        for node in nodes:
            taints = (node.get("spec") or {}).get("taints") or []
            merged = merge_taints(taints, wanted_taints(ready_status(node), disruption), when)
            if merged != taints:
                await self.api.merge_patch(
                    f"/api/v1/nodes/{node['metadata']['name']}", {"spec": {"taints": merged or None}}
                )
            if any(t.get("effect") == "NoExecute" for t in merged):
                await self._evict(node["metadata"]["name"], merged)

    async def _pods_on(self, node: str) -> list[dict[str, Any]]:
        items = (await self.api.get("/api/v1/pods", fieldSelector=f"spec.nodeName={node}")).get("items")
        return list(items or [])

    async def _mark_unknown(self, node: dict[str, Any], when: str) -> dict[str, Any]:
        name = node["metadata"]["name"]
        updated = await self.api.merge_patch(
            f"/api/v1/nodes/{name}/status", {"status": {"conditions": unknown_conditions(node, when)}}
        )
        # MarkPodsNotReady: the pods' Ready condition False; phase and containers as the kubelet last said.
        for pod in await self._pods_on(name):
            if (pod.get("status") or {}).get("phase") in TERMINAL:
                continue
            conds = list((pod.get("status") or {}).get("conditions") or [])
            if not any(c.get("type") == "Ready" and c.get("status") != "False" for c in conds):
                continue
            conds = [
                {**c, "status": "False", "lastTransitionTime": when} if c.get("type") == "Ready" else c
                for c in conds
            ]
            meta = pod["metadata"]
            with contextlib.suppress(ApiError):
                await self.api.merge_patch(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                    {"status": {"conditions": conds}},
                )
        return updated if isinstance(updated, dict) else node

    async def _evict(self, node: str, taints: Sequence[Mapping[str, Any]]) -> None:
        now = time.time()
        for pod in await self._pods_on(node):
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            due = eviction_time(pod, taints)
            if due is None or due > now:
                continue
            ns, name = meta["namespace"], meta["name"]
            with contextlib.suppress(ApiError):
                await self.api.delete(f"/api/v1/namespaces/{ns}/pods/{name}")
                await self._event(pod, f"Marking for deletion Pod {ns}/{name}")

    async def _event(self, pod: Mapping[str, Any], message: str) -> None:
        meta = pod["metadata"]
        when = now_text()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": "TaintManagerEviction",
            "message": message,
            "type": "Normal",
            "count": 1,
            "firstTimestamp": when,
            "lastTimestamp": when,
            "source": {"component": "taint-controller"},
            "reportingComponent": "taint-controller",
        }
        with contextlib.suppress(*TRANSIENT):
            await self.api.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)


class NodeLifecycleThread(ControllerThread[NodeLifecycleController]):
    """The controller on its own event loop in a daemon thread (started and stopped by DevCluster)."""

    def __init__(
        self,
        kubeconfig: Path,
        *,
        grace_seconds: float = NODE_MONITOR_GRACE_SECONDS,
        period: float = NODE_MONITOR_PERIOD,
    ) -> None:
        self.kubeconfig = kubeconfig
        super().__init__("stagefleet-nodelifecycle", lambda: NodeLifecycleController(
            KubeAPI(ClusterAccess.from_kubeconfig(kubeconfig), user_agent="stagefleet-devnodelifecycle"),
            grace_seconds=grace_seconds, period=period))

    def sync(self, timeout: float = 30.0) -> None:
        """Run one sync now (tests: no waiting for the next period)."""
        assert self.controller is not None
        self.call(self.controller.sync(), timeout)
