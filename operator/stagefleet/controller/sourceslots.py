"""How many git sources the operator resolves at once: in all, and per namespace.

Each resolution is a thread and a few git processes that a black-holed host holds for the whole source
timeout. Unbounded, one tenant's thousand such builds would exhaust the operator's threads, processes and
memory; bounded only in all, they would queue every other tenant behind them for an hour. A namespace
past its own share waits for its own slots, so another namespace's source starts at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SourceSlots"]


class SourceSlots:
    """At most `total` resolutions at a time, and at most `per_namespace` of one namespace's."""

    def __init__(self, total: int, per_namespace: int) -> None:
        if total < 1 or per_namespace < 1:
            raise ValueError("source resolution limits must be at least 1")
        self.total = total
        self.per_namespace = per_namespace
        self._cond = threading.Condition()
        self._busy: dict[str, int] = {}  # namespace -> resolutions running; no entry at 0 (bounded)

    def _free(self, namespace: str) -> bool:
        return sum(self._busy.values()) < self.total and self._busy.get(namespace, 0) < self.per_namespace

    @contextmanager
    def slot(self, namespace: str) -> Iterator[None]:
        """Hold one slot of `namespace` while the block runs; wait for one first."""
        with self._cond:
            self._cond.wait_for(lambda: self._free(namespace))
            self._busy[namespace] = self._busy.get(namespace, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                left = self._busy[namespace] - 1
                if left:
                    self._busy[namespace] = left
                else:
                    del self._busy[namespace]
                self._cond.notify_all()

    def would_wait(self, namespace: str) -> bool:
        """Whether a resolution of `namespace` asked for now would wait for a slot."""
        with self._cond:
            return not self._free(namespace)

    def busy(self) -> dict[str, int]:
        """Resolutions running now, by namespace."""
        with self._cond:
            return dict(self._busy)
