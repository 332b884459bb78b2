"""Minimal Deployment + ReplicaSet controller for the dev cluster (what kube-controller-manager does, small).

The emulator only stores Deployments; this turns them into pods the local kubelet runs, so `helm install`
of a chart brings its Deployment up. It speaks only the public API (`kubeapi.KubeAPI`), like the kubelet.

* Deployment → one ReplicaSet per pod template, named ``<deployment>-<pod-template-hash>``, owned by the
  Deployment (controller ownerReference), its selector and template labels extended with
  ``pod-template-hash``; ReplicaSets of an older template are scaled to 0 (Recreate-like: the kubelet stops
  their pods gracefully) and kept as rollout history. ``spec.replicas`` is copied to the current ReplicaSet.
* Revisions as kube-controller-manager numbers them: ``deployment.kubernetes.io/revision`` on each
  ReplicaSet (a new one gets the highest + 1, an old template coming back, as with ``kubectl rollout undo``,
  too, its earlier numbers in ``revision-history``) and on the Deployment; once the rollout is complete,
  the oldest scaled-down ReplicaSets beyond ``spec.revisionHistoryLimit`` (default 10) are deleted.
* ReplicaSet → pods from the template (``generateName: <rs>-``), owned by the ReplicaSet; missing pods are
  created, extra ones deleted, terminal (Succeeded/Failed) ones deleted and replaced.
* Status: ReplicaSet ``replicas/readyReplicas/availableReplicas/fullyLabeledReplicas/observedGeneration``,
  Deployment the same plus ``updatedReplicas`` and ``Available``/``Progressing`` conditions.
* Deleting a Deployment: the emulator's garbage collector removes the ReplicaSet and its pods.

Not implemented: rolling updates with surge, minReadySeconds, paused, scale subresource semantics beyond
``spec.replicas``. A development and test tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from stagefleet.devcluster.kubeapi import ApiError, ClusterAccess, KubeAPI
from stagefleet.devcluster.loopthread import ControllerThread

log = logging.getLogger("stagefleet.devcluster.deployments")

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DEFAULT_HISTORY_LIMIT = 10
RESYNC_SECONDS = 30.0
TERMINAL = ("Succeeded", "Failed")
TRANSIENT = (ApiError, aiohttp.ClientError, TimeoutError, OSError)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable short hash of a pod template (Kubernetes: fnv32; any stable text works)."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def owner_ref(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj.get("apiVersion") or "apps/v1",
        "kind": obj.get("kind") or "",
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def replicaset_for(deploy: Mapping[str, Any], revision: int = 1) -> dict[str, Any]:
    """The ReplicaSet manifest of the Deployment's current template."""
    meta, spec = deploy["metadata"], deploy["spec"]
    template = copy.deepcopy(spec.get("template") or {})
    h = template_hash(template)
    tmeta = template.setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), HASH_LABEL: h}
    selector = copy.deepcopy(spec.get("selector") or {})
    selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: h}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta['name']}-{h}",
            "namespace": meta["namespace"],
            "labels": {**(tmeta.get("labels") or {})},
            "annotations": {REVISION: str(revision)},
            "ownerReferences": [owner_ref({"apiVersion": "apps/v1", "kind": "Deployment", **deploy})],
        },
        "spec": {"replicas": int(spec.get("replicas", 1)), "selector": selector, "template": template},
    }


def pod_for(rs: Mapping[str, Any]) -> dict[str, Any]:
    """A new pod of the ReplicaSet's template."""
    template = copy.deepcopy(rs["spec"].get("template") or {})
    tmeta = template.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{rs['metadata']['name']}-",
            "namespace": rs["metadata"]["namespace"],
            "labels": dict(tmeta.get("labels") or {}),
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [owner_ref({"apiVersion": "apps/v1", "kind": "ReplicaSet", **rs})],
        },
        "spec": template.get("spec") or {},
    }


def revision(rs: Mapping[str, Any]) -> int:
    """A ReplicaSet's `deployment.kubernetes.io/revision` (0 when missing or not a number)."""
    text = ((rs.get("metadata") or {}).get("annotations") or {}).get(REVISION, "")
    return int(text) if str(text).isdigit() else 0


def revision_bump(current: Mapping[str, Any], others: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Annotations that make `current` (the ReplicaSet of the Deployment's template) the newest revision:
    the highest of the `others` + 1, the numbers it had before appended to `revision-history` (the
    Deployment controller's SetNewReplicaSetAnnotations); {} when it already is the newest."""
    new = max((revision(rs) for rs in others), default=0) + 1
    old = revision(current)
    if old >= new:
        return {}
    out = {REVISION: str(new)}
    if old:
        history = ((current.get("metadata") or {}).get("annotations") or {}).get(REVISION_HISTORY, "")
        out[REVISION_HISTORY] = f"{history},{old}" if history else str(old)
    return out


def history_to_delete(
    deploy: Mapping[str, Any], current_name: str, owned: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Names of the old ReplicaSets beyond `spec.revisionHistoryLimit`, oldest revision first, that are
    scaled down and settled (the Deployment controller's cleanupDeployment)."""
    limit = int(deploy["spec"].get("revisionHistoryLimit", DEFAULT_HISTORY_LIMIT))
    old = [
        rs
        for rs in owned
        if rs["metadata"]["name"] != current_name and not rs["metadata"].get("deletionTimestamp")
    ]
    if len(old) <= limit:
        return []
    old.sort(key=lambda rs: (revision(rs), rs["metadata"].get("creationTimestamp", "")))

    def settled(rs: Mapping[str, Any]) -> bool:
        st = rs.get("status") or {}
        return (
            int(rs["spec"].get("replicas", 1)) == 0
            and int(st.get("replicas", 0)) == 0
            and int(rs["metadata"].get("generation", 1)) <= int(st.get("observedGeneration", 0))
        )

    return [rs["metadata"]["name"] for rs in old[: len(old) - limit] if settled(rs)]


def rollout_complete(deploy: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Every replica updated and available, no other left, the latest generation seen (DeploymentComplete)."""
    desired = int(deploy["spec"].get("replicas", 1))
    return (
        status.get("updatedReplicas") == desired
        and status.get("replicas") == desired
        and status.get("availableReplicas") == desired
        and int(status.get("observedGeneration", 0)) >= int(deploy["metadata"].get("generation", 1))
    )


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _active(pod: Mapping[str, Any]) -> bool:
    return (
        not pod["metadata"].get("deletionTimestamp")
        and (pod.get("status") or {}).get("phase") not in TERMINAL
    )


def replicaset_status(rs: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    active = [p for p in pods if _active(p)]
    ready = sum(1 for p in active if pod_ready(p))
    return {
        "replicas": len(active),
        "fullyLabeledReplicas": len(active),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs["metadata"].get("generation", 1),
    }


def deployment_status(
    deploy: Mapping[str, Any],
    current: Mapping[str, Any] | None,
    all_rs: Sequence[Mapping[str, Any]],
    when: str,
) -> dict[str, Any]:
    desired = int(deploy["spec"].get("replicas", 1))
    sts = [rs.get("status") or {} for rs in all_rs]
    replicas = sum(int(s.get("replicas", 0)) for s in sts)
    ready = sum(int(s.get("readyReplicas", 0)) for s in sts)
    available = sum(int(s.get("availableReplicas", 0)) for s in sts)
    updated = int(((current or {}).get("status") or {}).get("replicas", 0))
    prev = {c.get("type"): c for c in (deploy.get("status") or {}).get("conditions") or []}

    def cond(ctype: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        status = "True" if ok else "False"
        p = prev.get(ctype) or {}
        same = p.get("status") == status
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastUpdateTime": p.get("lastUpdateTime", when) if same and p.get("reason") == reason else when,
            "lastTransitionTime": p.get("lastTransitionTime", when) if same else when,
        }

    name = (current or {}).get("metadata", {}).get("name", "")
    done = updated == desired and available >= desired and replicas == desired
    conditions = [
        cond(
            "Available",
            available >= desired,
            "MinimumReplicasAvailable" if available >= desired else "MinimumReplicasUnavailable",
            "Deployment has minimum availability."
            if available >= desired
            else "Deployment does not have minimum availability.",
        ),
        cond(
            "Progressing",
            True,
            "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
            f'ReplicaSet "{name}" has successfully progressed.'
            if done
            else f'ReplicaSet "{name}" is progressing.',
        ),
    ]
    out: dict[str, Any] = {
        "observedGeneration": deploy["metadata"].get("generation", 1),
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "conditions": conditions,
    }
    if desired > available:
        out["unavailableReplicas"] = desired - available
    return out


def _status_differs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    def strip(s: Mapping[str, Any] | None) -> Any:
        s = dict(s or {})
        s["conditions"] = [
            {k: v for k, v in c.items() if k not in ("lastUpdateTime", "lastTransitionTime")}
            for c in s.get("conditions") or []
        ]
        return s

    return bool(strip(old) != strip(new))


class DeploymentController:
    """Watches Deployments, ReplicaSets and their pods; one reconcile pass over all of them per change."""

    def __init__(self, api: KubeAPI) -> None:
        self.api = api
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        watchers = [
            asyncio.ensure_future(self._watch("/apis/apps/v1/deployments")),
            asyncio.ensure_future(self._watch("/apis/apps/v1/replicasets")),
            asyncio.ensure_future(self._watch("/api/v1/pods", labelSelector=HASH_LABEL)),
        ]
        try:
            self.ready.set()
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RESYNC_SECONDS):  # not wait_for: see apiserver/gc.py
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self.reconcile()
                except asyncio.CancelledError:
                    raise
                except TRANSIENT as e:
                    log.debug("deployment pass failed, retrying: %s", e)
                    await asyncio.sleep(0.5)
                    self._wake.set()
                except Exception:  # never let one odd object stop the controller
                    log.exception("deployment controller pass failed")
                    await asyncio.sleep(1.0)
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await self.api.close()

    async def _watch(self, path: str, **params: str) -> None:
        while True:
            try:
                listed = await self.api.get(path, **params)
                self._wake.set()
                rv = str((listed.get("metadata") or {}).get("resourceVersion", ""))
                async for ev in self.api.watch(path, rv, **params):
                    if ev.get("type") == "ERROR":
                        break
                    if ev.get("type") != "BOOKMARK":
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - dropped watches (fault injection, restarts) re-list
                log.debug("watch %s ended: %s", path, e)
                await asyncio.sleep(0.5)

    async def reconcile(self) -> None:
        deploys = (await self.api.get("/apis/apps/v1/deployments")).get("items") or []
        all_rs = (await self.api.get("/apis/apps/v1/replicasets")).get("items") or []
        if not deploys and not all_rs:
            return
        pods = (await self.api.get("/api/v1/pods", labelSelector=HASH_LABEL)).get("items") or []
        pods_by_owner: dict[str, list[dict[str, Any]]] = {}
        for p in pods:
            uid = controller_uid(p)
            if uid:
                pods_by_owner.setdefault(uid, []).append(p)
        rs_by_owner: dict[str, list[dict[str, Any]]] = {}
        for rs in all_rs:
            uid = controller_uid(rs)
            if uid:
                rs_by_owner.setdefault(uid, []).append(rs)

        for d in deploys:
            if d["metadata"].get("deletionTimestamp"):
                continue
            await self._deployment(d, rs_by_owner.get(d["metadata"]["uid"], []))

        # ReplicaSets (re-listed: the pass above may have created or resized some)
        all_rs = (await self.api.get("/apis/apps/v1/replicasets")).get("items") or []
        for rs in all_rs:
            if rs["metadata"].get("deletionTimestamp"):
                continue
            await self._replicaset(rs, pods_by_owner.get(rs["metadata"]["uid"], []))

        # Deployment status from the ReplicaSets' fresh status
        all_rs = (await self.api.get("/apis/apps/v1/replicasets")).get("items") or []
        rs_by_owner = {}
        for rs in all_rs:
            uid = controller_uid(rs)
            if uid and not rs["metadata"].get("deletionTimestamp"):
                rs_by_owner.setdefault(uid, []).append(rs)
        for d in deploys:
            if d["metadata"].get("deletionTimestamp"):
                continue
            owned = rs_by_owner.get(d["metadata"]["uid"], [])
            want = replicaset_for(d)["metadata"]["name"]
            current = next((rs for rs in owned if rs["metadata"]["name"] == want), None)
            status = deployment_status(d, current, owned, now())
            ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
            if _status_differs(d.get("status"), status):
                with contextlib.suppress(ApiError):
                    await self.api.merge_patch(
                        f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/status", {"status": status}
                    )
            if current is not None and rollout_complete(d, status):
                for old in history_to_delete(d, want, owned):
                    log.info("deployment %s/%s: deleting replicaset %s (revision history)", ns, name, old)
                    with contextlib.suppress(ApiError):
                        await self.api.delete(
                            f"/apis/apps/v1/namespaces/{ns}/replicasets/{old}",
                            {"propagationPolicy": "Background"},
                        )

    async def _deployment(self, d: dict[str, Any], owned: list[dict[str, Any]]) -> None:
        ns = d["metadata"]["namespace"]
        name = replicaset_for(d)["metadata"]["name"]
        base = f"/apis/apps/v1/namespaces/{ns}/replicasets"
        others = [rs for rs in owned if rs["metadata"]["name"] != name]
        for rs in others:
            if not rs["metadata"].get("deletionTimestamp") and int(rs["spec"].get("replicas", 1)) != 0:
                log.info(
                    "deployment %s/%s: scaling old replicaset %s to 0",
                    ns,
                    d["metadata"]["name"],
                    rs["metadata"]["name"],
                )
                with contextlib.suppress(ApiError):
                    await self.api.merge_patch(f"{base}/{rs['metadata']['name']}", {"spec": {"replicas": 0}})
        current = next((rs for rs in owned if rs["metadata"]["name"] == name), None)
        want = replicaset_for(d, max((revision(rs) for rs in others), default=0) + 1)
        if current is None:
            try:
                current = await self.api.create(base, want)
                log.info("deployment %s/%s: created replicaset %s", ns, d["metadata"]["name"], name)
            except ApiError as e:
                if e.status != 409:
                    raise
                return  # created by an earlier pass we have not seen yet: the next pass goes on
        else:
            patch: dict[str, Any] = {}
            bump = revision_bump(current, others)
            if bump:
                patch["metadata"] = {"annotations": bump}
            if int(current["spec"].get("replicas", 1)) != want["spec"]["replicas"]:
                patch["spec"] = {"replicas": want["spec"]["replicas"]}
            if patch:
                current = await self.api.merge_patch(f"{base}/{name}", patch)
        rev = str(revision(current))
        if ((d["metadata"].get("annotations") or {}).get(REVISION)) != rev:
            with contextlib.suppress(ApiError):
                await self.api.merge_patch(
                    f"/apis/apps/v1/namespaces/{ns}/deployments/{d['metadata']['name']}",
                    {"metadata": {"annotations": {REVISION: rev}}},
                )

    async def _replicaset(self, rs: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        ns, name = rs["metadata"]["namespace"], rs["metadata"]["name"]
        pods_path = f"/api/v1/namespaces/{ns}/pods"
        for p in pods:
            if (p.get("status") or {}).get("phase") in TERMINAL and not p["metadata"].get(
                "deletionTimestamp"
            ):
                with contextlib.suppress(ApiError):
                    await self.api.delete(f"{pods_path}/{p['metadata']['name']}")
        active = [p for p in pods if _active(p)]
        desired = int(rs["spec"].get("replicas", 1))
        for _ in range(desired - len(active)):
            created = await self.api.create(pods_path, pod_for(rs))
            log.info("replicaset %s/%s: created pod %s", ns, name, created["metadata"]["name"])
        if len(active) > desired:
            # not-ready first, then the newest (two stable sorts)
            newest_first = sorted(
                active, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True
            )
            for p in sorted(newest_first, key=pod_ready)[: len(active) - desired]:
                with contextlib.suppress(ApiError):
                    await self.api.delete(f"{pods_path}/{p['metadata']['name']}")
        status = replicaset_status(rs, pods)  # pods created just now count on the next pass (their event)
        if _status_differs(rs.get("status"), status):
            with contextlib.suppress(ApiError):
                await self.api.merge_patch(
                    f"/apis/apps/v1/namespaces/{ns}/replicasets/{name}/status", {"status": status}
                )


class DeploymentControllerThread(ControllerThread[DeploymentController]):
    """The controller on its own event loop in a daemon thread (started and stopped by DevCluster)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        super().__init__("stagefleet-deployments", lambda: DeploymentController(
            KubeAPI(ClusterAccess.from_kubeconfig(kubeconfig), user_agent="stagefleet-devdeployments")))
