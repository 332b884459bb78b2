"""Pure: repeated Events become one Event with a count, as client-go's EventCorrelator does.

A build stuck on a refused pod or a missing Secret says the same thing on every retry; one new Event
object per repeat would grow etcd without bound (hundreds of builds × hours). The first occurrence is
created; a repeat of the same (namespace, object, type, reason, message) within ``window`` seconds
patches that Event's ``count`` and ``lastTimestamp`` instead. The table is an LRU bounded by
``capacity``: memory stays flat however many builds come and go (a forgotten entry only costs one extra
Event object later).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

EventKey = tuple[str, str, str, str, str]  # namespace, involved object's uid, type, reason, message


@dataclass(frozen=True)
class Seen:
    """An Event already recorded: its object name, how often it happened, when first and last."""

    name: str
    count: int
    first: str
    last_at: float


class EventCorrelator:
    """Which Events are repeats. Thread-safe: reconcile passes run in a thread pool."""

    def __init__(self, capacity: int = 4096, window: float = 600.0) -> None:
        self.capacity = capacity
        self.window = window
        self._seen: OrderedDict[EventKey, Seen] = OrderedDict()
        self._lock = threading.Lock()

    def repeat_of(self, key: EventKey, now: float) -> Seen | None:
        """The recorded Event this one repeats (count already raised), or None: create a new one."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or now - seen.last_at > self.window:
                return None
            seen = Seen(seen.name, seen.count + 1, seen.first, now)
            self._seen[key] = seen
            self._seen.move_to_end(key)
            return seen

    def created(self, key: EventKey, name: str, first: str, now: float) -> None:
        """A new Event object ``name`` was created for ``key``."""
        with self._lock:
            self._seen[key] = Seen(name, 1, first, now)
            self._seen.move_to_end(key)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)

    def forget(self, key: EventKey) -> None:
        """The Event is gone (expired by the API server's event TTL): the next repeat creates one."""
        with self._lock:
            self._seen.pop(key, None)

    def forget_object(self, uid: str) -> None:
        """The involved object is gone (its ImageBuild was deleted): drop its entries."""
        with self._lock:
            for key in [k for k in self._seen if k[1] == uid]:
                del self._seen[key]

    def expire(self, now: float) -> int:
        """Drop the entries older than the window (a repeat of them creates a new Event anyway), e.g. those
        of objects whose deletion the operator never saw; returns how many."""
        with self._lock:
            old = [k for k, seen in self._seen.items() if now - seen.last_at > self.window]
            for key in old:
                del self._seen[key]
            return len(old)

    def __len__(self) -> int:
        return len(self._seen)
