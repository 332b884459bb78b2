"""In-memory object store with one global resourceVersion counter and a bounded event history.

Objects are keyed by (group, plural) and then (namespace, name); versions of one resource share objects.
Watchers get every event after their starting resourceVersion; an older start than the bounded history
holds is answered 410 Gone by the caller, which is how clients learn to relist.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
TypeKey = tuple[str, str]
ObjKey = tuple[str, str]


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    tkey: TypeKey
    obj: Obj
    old: Obj | None
    # Watch lines already encoded, by (event type as a watcher sees it, apiVersion, kind): every watcher of
    # the type (the operator's, the kubelet's) sends the same bytes, so the JSON is encoded once per event.
    lines: dict[tuple[str, str, str], bytes] = field(default_factory=dict, compare=False, repr=False)


@dataclass(eq=False)
class Watcher:
    tkey: TypeKey
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)

    def close(self) -> None:
        self.queue.put_nowait(None)


class Store:
    def __init__(self, history_size: int = 2000) -> None:
        self._objects: dict[TypeKey, dict[ObjKey, Obj]] = {}
        self._uids: dict[str, tuple[TypeKey, ObjKey]] = {}
        self._history: deque[Event] = deque(maxlen=history_size)
        self._watchers: set[Watcher] = set()
        self.rv = 1
        self.compacted_rv = 1  # events at or below this rv may be missing from the history
        self.listeners: list[Any] = []  # callables(Event) run after every write (GC wake-up)
        # (type, label key, label value) → keys of the objects carrying that label, for selector LISTs
        self._labels: dict[tuple[TypeKey, str, str], set[ObjKey]] = {}

    # -- reads ---------------------------------------------------------------------------------------------
    def get(self, tkey: TypeKey, namespace: str, name: str) -> Obj | None:
        obj = self._objects.get(tkey, {}).get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def peek(self, tkey: TypeKey, namespace: str, name: str) -> Obj | None:
        """The stored object itself (read only, no copy)."""
        return self._objects.get(tkey, {}).get((namespace, name))

    def list(
        self,
        tkey: TypeKey,
        namespace: str | None = None,
        where: Callable[[Obj], bool] | None = None,
        *,
        copies: bool = True,
        labels: Mapping[str, str] | None = None,
    ) -> list[Obj]:
        """Copies of the objects, in key order; `where` sees the stored dicts (read only) so that only the
        matches are copied: copying a whole namespace for every selector list made big runs quadratic.
        `copies=False` returns the stored dicts themselves, for callers that only read them. `labels`: labels
        every match carries (a selector's equalities): only objects indexed with all of them are looked at,
        so a selector LIST costs its matches, not the whole type (`where` still decides)."""
        objs = self._objects.get(tkey, {})
        candidates: Iterable[ObjKey] = objs
        if labels:
            sets = sorted((self._labels.get((tkey, k, v), set()) for k, v in labels.items()), key=len)
            candidates = set(sets[0]).intersection(*sets[1:])
        keys = sorted(
            k
            for k in candidates
            if (namespace is None or k[0] == namespace) and (where is None or where(objs[k]))
        )
        return [copy.deepcopy(objs[k]) for k in keys] if copies else [objs[k] for k in keys]

    def by_uid(self, uid: str) -> tuple[TypeKey, Obj] | None:
        where = self._uids.get(uid)
        if where is None:
            return None
        obj = self._objects.get(where[0], {}).get(where[1])
        return (where[0], copy.deepcopy(obj)) if obj is not None else None

    def type_keys(self) -> builtins.list[TypeKey]:
        return list(self._objects)

    def iter_all(self, *, copies: bool = True) -> Iterator[tuple[TypeKey, Obj]]:
        """Every object; `copies=False` yields the stored dicts for read-only scans (do not mutate)."""
        for tkey, objs in list(self._objects.items()):
            for obj in list(objs.values()):
                yield tkey, (copy.deepcopy(obj) if copies else obj)

    def has_uid(self, uid: str, namespace: str | None = None) -> bool:
        """Whether an object with this uid exists (in `namespace` or cluster-scoped, when given)."""
        where = self._uids.get(uid)
        return where is not None and (namespace is None or where[1][0] in ("", namespace))

    # -- writes --------------------------------------------------------------------------------------------
    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def put(self, tkey: TypeKey, obj: Obj) -> Obj:
        """Create or replace; stamps a new resourceVersion and records ADDED/MODIFIED. Stores a copy and
        returns `obj` itself (stamped), which the caller owns: no second copy per write."""
        meta = obj["metadata"]
        okey = (meta.get("namespace", ""), meta["name"])
        old = self._objects.get(tkey, {}).get(okey)
        rv = self.next_rv()
        meta["resourceVersion"] = str(rv)
        stored = copy.deepcopy(obj)
        self._objects.setdefault(tkey, {})[okey] = stored
        self._index(tkey, okey, old, stored)
        self._uids[meta["uid"]] = (tkey, okey)
        self._record(Event(rv, "MODIFIED" if old is not None else "ADDED", tkey, stored, old))
        return obj

    def remove(self, tkey: TypeKey, namespace: str, name: str) -> Obj | None:
        old = self._objects.get(tkey, {}).pop((namespace, name), None)
        if old is None:
            return None
        self._uids.pop(old["metadata"].get("uid", ""), None)
        self._index(tkey, (namespace, name), old, None)
        rv = self.next_rv()
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(rv)
        self._record(Event(rv, "DELETED", tkey, gone, old))
        return copy.deepcopy(gone)

    def _index(self, tkey: TypeKey, okey: ObjKey, old: Obj | None, new: Obj | None) -> None:
        before = (old or {}).get("metadata", {}).get("labels") or {}
        after = (new or {}).get("metadata", {}).get("labels") or {}
        for k, v in before.items():
            if after.get(k) != v:
                keys = self._labels.get((tkey, k, str(v)))
                if keys is not None:
                    keys.discard(okey)
                    if not keys:
                        del self._labels[(tkey, k, str(v))]
        for k, v in after.items():
            self._labels.setdefault((tkey, k, str(v)), set()).add(okey)

    def drop_type(self, tkey: TypeKey) -> None:
        for ns, name in list(self._objects.get(tkey, {})):
            self.remove(tkey, ns, name)
        self._objects.pop(tkey, None)

    def _record(self, event: Event) -> None:
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self.compacted_rv = self._history[0].rv
        self._history.append(event)
        for w in list(self._watchers):
            if w.tkey == event.tkey:
                w.queue.put_nowait(event)
        for listener in list(self.listeners):
            listener(event)

    # -- watch ---------------------------------------------------------------------------------------------
    def too_old(self, rv: int) -> bool:
        return rv < self.compacted_rv

    def subscribe(self, tkey: TypeKey, since_rv: int | None) -> Watcher:
        """A watcher fed with history after `since_rv` (None: only new events)."""
        w = Watcher(tkey)
        if since_rv is not None:
            for ev in self._history:
                if ev.rv > since_rv and ev.tkey == tkey:
                    w.queue.put_nowait(ev)
        self._watchers.add(w)
        return w

    def unsubscribe(self, w: Watcher) -> None:
        self._watchers.discard(w)

    def close_watchers(self) -> None:
        for w in list(self._watchers):
            w.close()
        self._watchers.clear()
