"""What the operator remembers of its worker pods from their events: each pod's last signature, the pods it
created, those the scheduler cannot place, the node each runs on and the build it belongs to. Memory only,
never the truth (every pass lists its pods): it spares passes, holds early start back, and lets a node's
change reach exactly the builds with pods on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stagefleet.controller import observe
from stagefleet.controller.podspec import LABEL_UID


class PodBook:
    def __init__(self) -> None:
        self.states: dict[str, tuple[Any, ...]] = {}
        self.created: set[str] = set()  # uids of the pods this process created (until they are deleted)
        # Worker pods the scheduler cannot place: while there are any, no pod starts early (it would only
        # wait, holding room that real work needs).
        self.unschedulable: dict[str, str] = {}  # pod uid → its ImageBuild's uid
        # Where the worker pods run: pod uid → (node, namespace, ImageBuild name), from pod events, so that
        # a node going NotReady (or Ready again) triggers exactly the builds with pods on it.
        self.nodes: dict[str, tuple[str, str, str]] = {}
        # Every pod uid above → its build, so that a build's end or deletion drops its pods' entries too.
        self.builds: dict[str, tuple[str, str]] = {}

    def remember(self, pod: Mapping[str, Any]) -> bool:
        """A live pod's build and signature: whether the signature changed (`observe.pod_signature`)."""
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        owner = next((o for o in meta.get("ownerReferences") or () if o.get("kind") == "ImageBuild"), None)
        if owner is not None:
            self.builds[uid] = (str(meta.get("namespace") or "default"), str(owner.get("name")))
        state = observe.pod_signature(pod)
        if self.states.get(uid) == state:
            return False
        self.states[uid] = state
        return True

    def note_schedulable(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        if not deleted and observe.unschedulable(pod):
            self.unschedulable[uid] = str((meta.get("labels") or {}).get(LABEL_UID))
        else:
            self.unschedulable.pop(uid, None)

    def refresh_schedulable(self, build_uid: str, listed: list[dict[str, Any]]) -> None:
        """A pass's own pod list is the truth for its build: entries of pods gone from it (a DELETED event
        lost with a watch) do not keep early start off."""
        live = {str((p.get("metadata") or {}).get("uid")) for p in listed}
        for uid, owner in list(self.unschedulable.items()):
            if owner == build_uid and uid not in live:
                self.unschedulable.pop(uid, None)
        for p in listed:
            self.note_schedulable(p)

    def note_node(self, pod: Mapping[str, Any], deleted: bool) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        node = (pod.get("spec") or {}).get("nodeName")
        owner = next((o for o in meta.get("ownerReferences") or () if o.get("kind") == "ImageBuild"), None)
        if deleted or not node or owner is None:
            self.nodes.pop(uid, None)
        else:
            ns = str(meta.get("namespace") or "default")
            self.nodes[uid] = (str(node), ns, str(owner.get("name")))

    def builds_on(self, node: str) -> list[tuple[str, str]]:
        """The builds with pods on ``node``, each once."""
        return sorted({(ns, name) for n, ns, name in self.nodes.values() if n == node})

    def pods_of(self, build: tuple[str, str]) -> list[str]:
        """The uids of ``build``'s pods."""
        # (a copy: reconcile threads add pods)
        return [uid for uid, owner in list(self.builds.items()) if owner == build]

    def drop(self, uid: str) -> None:
        self.states.pop(uid, None)
        self.created.discard(uid)
        self.unschedulable.pop(uid, None)
        self.nodes.pop(uid, None)
        self.builds.pop(uid, None)

    def known(self) -> dict[str, tuple[str, str]]:
        """Every pod with an entry (uid → its build)."""
        pods = dict(self.builds)
        for uid, (_, ns, name) in list(self.nodes.items()):
            pods.setdefault(uid, (ns, name))
        return pods

    def sizes(self) -> dict[str, int]:
        return {
            "pod_states": len(self.states),
            "created": len(self.created),
            "unschedulable": len(self.unschedulable),
            "pod_nodes": len(self.nodes),
            "pod_builds": len(self.builds),
        }
