"""Garbage collector and deletion finishers: ownerReferences (background, foreground, orphan), namespace
termination and CRD instance cleanup, run after every write like kube-controller-manager would."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import Any

from .api import NS_TYPE, Core, DeleteOptions
from .errors import ApiError
from .resources import CRD_KEY
from .storage import Event, Obj, TypeKey

log = logging.getLogger(__name__)
SWEEP_SECONDS = 30.0
EVENT_TTL_SECONDS = 3600.0


def _epoch(stamp: Any) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp (inf when unreadable: never expire by mistake)."""
    try:
        return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")


def gc_relevant(etype: str, obj: Obj, old: Obj | None) -> bool:
    """Whether a write can give the collector work: a deletion (owners gone, foreground and namespace
    deletions waiting for it), an object being deleted (finalizers), or an object created with or changing
    owner references (an owner may be missing). Not the status writes of owned objects, most writes of a
    busy cluster, which each cost a scan of every object. (The 30-s sweep runs regardless.)"""
    meta = obj.get("metadata") or {}
    if etype == "DELETED" or meta.get("deletionTimestamp"):
        return True
    refs = meta.get("ownerReferences")
    return bool(refs) and (old is None or (old.get("metadata") or {}).get("ownerReferences") != refs)


class GarbageCollector:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._wake = asyncio.Event()
        # What the next pass looks at: the objects written since (a creation or an owner change concerns
        # only the object itself), or everything after a deletion (any object's owner may be gone).
        self._todo: set[tuple[TypeKey, str, str]] = set()
        self._everything = True
        core.on_event(self._maybe_wake)

    def _maybe_wake(self, ev: Event) -> None:
        """Wake the collector only for a change that can give it work (`gc_relevant`)."""
        if gc_relevant(ev.type, ev.obj, ev.old):
            if ev.type == "DELETED":
                self._everything = True
            else:
                meta = ev.obj["metadata"]
                self._todo.add((ev.tkey, meta.get("namespace", ""), meta["name"]))
            self._wake.set()

    async def run(self) -> None:
        last_sweep = time.monotonic()
        while True:
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes as the wait ends (a write
            # woke us), so stop() awaited this task forever and the emulator's thread never ended.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SWEEP_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)
            sweep = time.monotonic() - last_sweep >= SWEEP_SECONDS
            todo, everything = self._todo, self._everything or sweep
            self._todo, self._everything = set(), False
            try:
                self.run_once(None if everything else todo)
                if sweep:
                    last_sweep = time.monotonic()
                    self.expire_events()
            except Exception:  # keep collecting: one bad object must not stop the emulator's GC
                log.exception("garbage collection pass failed")

    def expire_events(self, ttl_seconds: float = EVENT_TTL_SECONDS) -> None:
        """Events live an hour, as with the apiserver's default --event-ttl, so long runs do not grow."""
        cutoff = time.time() - ttl_seconds
        for tkey in (("", "events"), ("events.k8s.io", "events")):
            for ev in self.core.store.list(tkey):
                meta = ev["metadata"]
                stamp = ev.get("lastTimestamp") or ev.get("eventTime") or meta.get("creationTimestamp")
                if _epoch(stamp) < cutoff:
                    self.core.store.remove(tkey, meta.get("namespace", ""), meta["name"])

    def run_once(self, only: set[tuple[TypeKey, str, str]] | None = None) -> None:
        """One pass over every object, or over the `only` ones (type, namespace, name)."""
        store = self.core.store
        if only is None:
            candidates: Iterable[tuple[TypeKey, Obj]] = store.iter_all(copies=False)
        else:
            candidates = [
                (tkey, o) for tkey, ns, name in sorted(only) if (o := store.peek(tkey, ns, name)) is not None
            ]
        todo = [
            (tkey, o)
            for tkey, o in candidates
            if o["metadata"].get("ownerReferences") or o["metadata"].get("deletionTimestamp")
        ]
        for tkey, stored in todo:
            if self._settled(stored):
                continue  # the common case (owners alive, not deleting): no copy, no write
            # earlier steps of this pass may have changed or removed it: act on the current state
            current = store.get(tkey, stored["metadata"].get("namespace", ""), stored["metadata"]["name"])
            if current is None or current["metadata"].get("uid") != stored["metadata"].get("uid"):
                continue
            obj = current
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs:
                # as the real GC: a namespaced dependent's owner must live in its namespace (or the cluster)
                alive = [r for r in refs if store.has_uid(r.get("uid", ""), meta.get("namespace", ""))]
                if not alive and not meta.get("deletionTimestamp"):
                    self._delete(tkey, obj, "Background")
                    continue
                if alive and len(alive) < len(refs):
                    self._set_meta(tkey, obj, ownerReferences=alive)
            if meta.get("deletionTimestamp"):
                self._finish(tkey, obj)

    def _settled(self, stored: Obj) -> bool:
        """Nothing to do for it: not being deleted and every owner alive (read on the stored dict, since a
        deep copy of every owned object after every write made large runs quadratic). A change made later
        in this pass wakes the collector again, so a stale read only defers the action to the next pass."""
        meta = stored["metadata"]
        if meta.get("deletionTimestamp"):
            return False
        ns = meta.get("namespace", "")
        return all(self.core.store.has_uid(r.get("uid", ""), ns) for r in meta.get("ownerReferences") or [])

    def _finish(self, tkey: TypeKey, obj: Obj) -> None:
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        uid = meta.get("uid")
        if "orphan" in finalizers:
            for dkey, dep in self._dependents(uid):
                refs = [r for r in dep["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                self._set_meta(dkey, dep, ownerReferences=refs or None)
            finalizers.remove("orphan")
            self._set_meta(tkey, obj, finalizers=finalizers or None)
            return
        if "foregroundDeletion" in finalizers:
            deps = list(self._dependents(uid))
            for dkey, dep in deps:
                if not dep["metadata"].get("deletionTimestamp"):
                    self._delete(dkey, dep, "Foreground")
            if not deps:
                finalizers.remove("foregroundDeletion")
                self._set_meta(tkey, obj, finalizers=finalizers or None)
            return
        if tkey == NS_TYPE:
            self._finish_namespace(obj)
        elif tkey == CRD_KEY:
            self._finish_crd(obj)

    def _finish_namespace(self, ns: Obj) -> None:
        name = ns["metadata"]["name"]
        left = False
        for tkey in self.core.store.type_keys():
            rt = self.core.type_for_key(tkey)
            if rt is None or not rt.namespaced:
                continue
            for obj in self.core.store.list(tkey, name):
                left = True
                if not obj["metadata"].get("deletionTimestamp"):
                    self._delete(tkey, obj, "Background")
        if not left and not ns["metadata"].get("finalizers"):
            rt = self.core.type_for_key(NS_TYPE)
            if rt is not None:
                self.core.finalize_removal(rt, ns)

    def _finish_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        tkey = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        instances = self.core.store.list(tkey)
        for obj in instances:
            if not obj["metadata"].get("deletionTimestamp"):
                self._delete(tkey, obj, "Background")
        if not instances and not crd["metadata"].get("finalizers"):
            rt = self.core.type_for_key(CRD_KEY)
            if rt is not None:
                self.core.finalize_removal(rt, crd)

    def _dependents(self, uid: Any) -> list[tuple[TypeKey, Obj]]:
        return [
            (k, copy.deepcopy(o))
            for k, o in self.core.store.iter_all(copies=False)
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
        ]

    def _delete(self, tkey: TypeKey, obj: Obj, propagation: str) -> None:
        rt = self.core.type_for_key(tkey)
        if rt is None:
            return
        meta = obj["metadata"]
        with contextlib.suppress(ApiError):
            self.core.delete(
                rt,
                meta.get("namespace", ""),
                meta["name"],
                DeleteOptions(propagation=propagation, uid=meta.get("uid")),
            )

    def _set_meta(self, tkey: TypeKey, obj: Obj, **fields: Any) -> None:
        rt = self.core.type_for_key(tkey)
        if rt is None:
            return
        new = copy.deepcopy(obj)
        for k, v in fields.items():
            if v is None:
                new["metadata"].pop(k, None)
            else:
                new["metadata"][k] = v
        if rt.has_status:
            new.pop("status", None)
        with contextlib.suppress(ApiError):
            self.core.update(rt, new["metadata"].get("namespace", ""), new["metadata"]["name"], new)
