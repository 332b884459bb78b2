"""When each ImageBuild's passes run, in kopf's event loop: one at a time per build (in a reconcile thread),
once more when an event came during one, when a pass asked to be looked at again, and on a wake-up from
another thread. Only the scheduling: what a pass does is the reconciler's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stagefleet.controller.writes import log_fields

log = logging.getLogger("stagefleet.operator")

SAFETY_POLL_SECONDS = 15.0  # even with no event, look at an unfinished build this often …
SAFETY_POLLS_PER_SECOND = 5.0  # … but with many unfinished builds, no more such passes than this in all


SLOW_PASS_SECONDS = 30.0

Key = tuple[str, str]  # namespace, ImageBuild name


def safety_poll_seconds(unfinished: int) -> float:
    """How long an unfinished build may go without a pass when no event comes: 15 s, longer with more than
    75 unfinished builds, so the safety net costs at most 5 passes (10 API reads) a second in all. (With
    300 builds waiting for cluster capacity, 15-s polls were a third of the operator's requests.)"""
    return max(SAFETY_POLL_SECONDS, unfinished / SAFETY_POLLS_PER_SECOND)


class Passes:
    """``run``: one pass, in a reconcile thread (returns when to look again; None: only on an event).
    When a build's passes stop, holding its lock: ``gone`` (a pass found it deleted) or ``idle`` (no pass
    is due)."""

    def __init__(
        self,
        run: Callable[[str, str], float | None],
        gone: Callable[[str, str], None],
        idle: Callable[[Key], None],
        *,
        threads: int,
    ) -> None:
        self._run = run
        self._gone = gone
        self._idle = idle
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reconcile")
        self.locks: dict[Key, asyncio.Lock] = {}
        self.dirty: dict[Key, bool] = {}
        self.due: dict[Key, float] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # kopf's, for a job's wake-up
        # Builds a pass found gone (GET 404) although no DELETED event said so (a watch cut): forgotten when
        # the pass ends. (Set from reconcile threads, read in the loop: set.add/discard are atomic.)
        self.vanished: set[Key] = set()
        # Builds whose current generation has ended: a pass may still be due for them (their pods and stage
        # tags kept for --keep-failed-seconds, a TTL), but they do not count as unfinished (`unfinished`).
        self.ended: set[Key] = set()
        # Passes running now: reconcile thread id → (build, started); a pass that runs for minutes holds its
        # build (no other pass of it starts) and is reported with its stack (`report_slow`).
        self._running: dict[int, tuple[Key, float]] = {}
        self._reported: set[tuple[int, float]] = set()

    async def trigger(self, namespace: str, name: str) -> None:
        """Reconcile now; if a pass for this build is running, make it run once more afterwards."""
        key = (namespace, name)
        self._loop = asyncio.get_running_loop()
        self.dirty[key] = True
        lock = self.locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            return
        async with lock:
            loop = asyncio.get_running_loop()
            while self.dirty.get(key):
                self.dirty[key] = False
                requeue = await loop.run_in_executor(self._pool, self._run, namespace, name)
                if requeue is None:
                    self.due[key] = math.inf  # only events wake it (e.g. a spec change)
                else:
                    self.due[key] = time.monotonic() + requeue
            # (No await from here on: no other trigger of this build runs before the lock is released.)
            if key in self.vanished:
                self.vanished.discard(key)
                self._gone(namespace, name)
            elif self.due.get(key) == math.inf:
                # Ended (or waits for an event only): no scheduling state to keep. Its pods' entries stay
                # while the pods exist (their last signature spares a pass per late kubelet write); their
                # DELETED events, the build's deletion or the sweep drop them.
                self._idle(key)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of the loop, referenced until it ends."""
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start(self, namespace: str, name: str) -> None:
        """Trigger a pass without waiting for it (in the loop)."""
        self.spawn(self.trigger(namespace, name))

    def start_due(self, now: float) -> None:
        """Trigger every build whose requeue time has passed."""
        for (namespace, name), when in list(self.due.items()):
            if when <= now and not self.dirty.get((namespace, name)):
                self.due[(namespace, name)] = math.inf  # trigger() sets the next one
                self.start(namespace, name)

    def wake_all(self, builds: Collection[Key]) -> None:
        """Trigger the passes of ``builds`` (a slot of the farm's cap is theirs now)."""
        for namespace, name in builds:
            self.wake(namespace, name)

    def wake(self, namespace: str, name: str) -> None:
        """Trigger a pass from another thread (the build's requeue time is the fallback)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
            loop.call_soon_threadsafe(self.start, namespace, name)

    def unfinished(self) -> int:
        """Builds with a pass still due that have not ended (a finished build's clean-up later, e.g. a
        failed one's pods kept for an hour, does not lengthen the safety poll of the running ones)."""
        return sum(1 for key, when in list(self.due.items()) if when != math.inf and key not in self.ended)

    def busy(self, key: Key) -> bool:
        """A pass of the build runs or is due."""
        lock = self.locks.get(key)
        return (lock is not None and lock.locked()) or self.due.get(key, math.inf) != math.inf

    def drop(self, key: Key, *, in_pass: bool = False) -> bool:
        """Drop a build's scheduling state, unless a pass of it runs (False) and this is not its trigger
        (``in_pass``: called by the trigger holding the build's lock, which releases it right after)."""
        lock = self.locks.get(key)
        if lock is not None and lock.locked() and not in_pass:
            return False
        self.locks.pop(key, None)
        self.dirty.pop(key, None)
        self.due.pop(key, None)
        self.ended.discard(key)
        return True

    def begin(self, key: Key, started: float) -> int:
        """A pass of ``key`` runs in this thread from ``started`` on; the id to `end` it with."""
        me = threading.get_ident()
        self._running[me] = (key, started)
        return me

    def end(self, me: int) -> None:
        self._running.pop(me, None)

    def report_slow(self, now: float) -> None:
        """Log, once each, passes running longer than SLOW_PASS_SECONDS with where they are: such a pass
        holds its build's lock, so nothing else happens to that build until it returns."""
        for ident, ((namespace, name), started) in list(self._running.items()):
            if now - started < SLOW_PASS_SECONDS or (ident, started) in self._reported:
                continue
            self._reported.add((ident, started))
            frame = sys._current_frames().get(ident)
            where = "".join(traceback.format_stack(frame, limit=12)) if frame is not None else "?"
            log.warning("a pass of %s/%s has run for %.0f s; it is at:\n%s", namespace, name, now - started,
                        where, extra=log_fields(namespace, name))
        live = {(i, t) for i, (_, t) in self._running.items()}
        self._reported &= live
