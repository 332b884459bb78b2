"""The farm's cap on worker pods, shared fairly between namespaces (`--max-worker-pods`).

Without a cap every ImageBuild starts what its own `maxParallelPods` allows, and a team that applies 200
builds fills the cluster before another team's 5 get a pod. With one, a pod starts only on a free slot, and
free slots go to the namespace that runs the fewest worker pods, and among those round-robin, to the one
served longest ago (max-min fairness, as Kueue's fair sharing): a namespace's backlog delays only its own
builds. (Fewest running alone is not enough: with a small cap every namespace runs none when a slot frees,
and a tie broken by age would serve the big backlog's older builds first.)

Within a namespace, builds with a higher `spec.priority` go first, then the older run (its
`status.startTime`), then by name; a build's own groups in the order `decide` picked them (critical path
first). Priority never reorders namespaces: one team's high priority cannot starve another team.

`order` and `fair_shares` are pure (data in, data out); `WorkerQueue` holds the operator's view (its
worker pods, each unfinished build's wish) between passes and answers each pass's `claim` under one lock,
so two passes never take the same slot.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

__all__ = ["Demand", "Spot", "WorkerQueue", "fair_shares", "order"]

Key = tuple[str, str]  # (namespace, ImageBuild name)


@dataclass(frozen=True)
class Demand:
    """What one build would start now: ``groups`` pods (already capped by its maxParallelPods)."""

    namespace: str
    name: str
    groups: int
    priority: int = 0
    since: str = ""  # the run's start (RFC 3339, UTC: sorts as text); older first

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Spot:
    """A claim's answer: how many of the build's groups may start now, and where the rest wait."""

    granted: int
    queued: int  # groups that wait for a slot
    ahead: int  # groups of any build that start before this build's first waiting group
    running: int  # worker pods of the build's namespace (those just granted included)
    share: float  # the namespace's fair share of the cap
    cap: int

    def say(self, namespace: str) -> str:
        """The waiting groups' message, e.g. in `status.message`."""
        return (
            f"queued: {self.ahead} group{'s' if self.ahead != 1 else ''} ahead in the farm's queue "
            f"(--max-worker-pods {self.cap}); namespace {namespace} runs {self.running} worker "
            f"pod{'s' if self.running != 1 else ''}, its fair share is {self.share:g}"
        )

    def status(self) -> dict[str, int | float]:
        """`status.queue` of the build."""
        return {
            "groups": self.queued,
            "ahead": self.ahead,
            "namespaceRunning": self.running,
            "namespaceShare": self.share,
            "maxWorkerPods": self.cap,
        }


def _build_order(d: Demand) -> tuple[int, str, str]:
    return (-d.priority, d.since, d.name)


def order(
    running: Mapping[str, int], demands: Iterable[Demand], served: Mapping[str, int] | None = None
) -> list[Key]:
    """Every wanted group, one entry of its build each, in the order slots go to them.

    The next slot goes to the namespace running the fewest pods (those already ordered count as running),
    ties to the one served longest ago (``served``: namespace → the number of its last slot, counting up;
    never served: 0), then to the one whose head build is older; within it, to its first build
    (`_build_order`) until that build's groups are all ordered.
    """
    last = dict(served or {})
    turn = max(last.values(), default=0)
    queues: dict[str, list[Demand]] = {}
    for d in demands:
        if d.groups > 0:
            queues.setdefault(d.namespace, []).append(d)
    for q in queues.values():
        q.sort(key=_build_order, reverse=True)  # (popped from the end)
    left = {id(d): d.groups for q in queues.values() for d in q}
    heap = [(running.get(ns, 0), last.get(ns, 0), q[-1].since, ns) for ns, q in queues.items()]
    heapq.heapify(heap)
    out: list[Key] = []
    while heap:
        count, _, _, ns = heapq.heappop(heap)
        q = queues[ns]
        head = q[-1]
        out.append(head.key)
        turn += 1
        left[id(head)] -= 1
        if not left[id(head)]:
            q.pop()
        if q:
            heapq.heappush(heap, (count + 1, turn, q[-1].since, ns))
    return out


def fair_shares(cap: int, running: Mapping[str, int], demands: Iterable[Demand]) -> dict[str, float]:
    """Each busy namespace's max-min fair share of ``cap`` slots: what it would run if every namespace ran
    what it runs and wants (``running`` + its demands), with slots split evenly and what a namespace does not
    need passed on to the others (water-filling). A fraction when the cap is smaller than the namespaces'
    number: 0.5 is every other slot."""
    need: dict[str, float] = {ns: float(n) for ns, n in running.items()}
    for d in demands:
        need[d.namespace] = need.get(d.namespace, 0) + max(d.groups, 0)
    need = {ns: n for ns, n in need.items() if n > 0}
    shares: dict[str, float] = {}
    left = float(cap)
    for i, (ns, n) in enumerate(sorted(need.items(), key=lambda kv: (kv[1], kv[0]))):
        shares[ns] = round(float(min(n, left / (len(need) - i))), 2)
        left -= shares[ns]
    return shares


class WorkerQueue:
    """The operator's worker pods and each unfinished build's wish, with at most ``cap`` pods in all (0: no
    cap, every claim is granted). Thread-safe: claims come from reconcile threads, pod events from kopf's
    loop."""

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise ValueError("--max-worker-pods must be 0 (no cap) or more")
        self.cap = cap
        self._lock = threading.Lock()
        self._pods: dict[str, str] = {}  # uid → namespace, of worker pods not yet finished
        self._reserved: dict[Key, int] = {}  # slots granted to a build whose pods are being created
        self._demands: dict[Key, Demand] = {}  # groups a build waits to start (after its last claim)
        self._woken: set[Key] = set()  # builds told a slot is theirs, not yet claimed
        self._served: dict[str, int] = {}  # namespace → the number of the last slot it was granted
        self._turn = 0

    @property
    def enabled(self) -> bool:
        return self.cap > 0

    def _running(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ns in self._pods.values():
            counts[ns] = counts.get(ns, 0) + 1
        for (ns, _), n in self._reserved.items():
            counts[ns] = counts.get(ns, 0) + n
        return counts

    def _window(self, running: Mapping[str, int]) -> tuple[list[Key], int]:
        """The order of every waiting group, and how many of them the free slots take."""
        free = max(0, self.cap - sum(running.values()))
        return order(running, self._demands.values(), self._served), free

    def _to_wake(self) -> list[Key]:
        """Builds that now hold a free slot in the order and have not been told so."""
        if not self.enabled:
            return []
        running = self._running()
        busy = set(running) | {ns for ns, _ in self._demands}
        self._served = {ns: t for ns, t in self._served.items() if ns in busy}  # (bounded: idle ones go)
        ordered, free = self._window(running)
        window = set(ordered[:free])
        new = sorted(window - self._woken)
        self._woken = window
        return new

    def claim(self, demand: Demand) -> Spot:
        """A pass's wish: how many of ``demand.groups`` may start now (reserved until `release`), and the
        queue spot of the rest, which stay the build's wish until its next claim."""
        key = demand.key
        with self._lock:
            self._woken.discard(key)
            if not self.enabled:
                return Spot(demand.groups, 0, 0, 0, 0, 0)
            self._demands[key] = demand
            running = self._running()
            ordered, free = self._window(running)
            granted = sum(1 for k in ordered[:free] if k == key)
            ahead = next((i for i, k in enumerate(ordered) if k == key and i >= free), len(ordered))
            ahead -= sum(1 for k in ordered[:ahead] if k == key)  # (its own granted groups go now)
            shares = fair_shares(self.cap, running, self._demands.values())
            if granted:
                self._reserved[key] = self._reserved.get(key, 0) + granted
                self._turn += granted
                self._served[demand.namespace] = self._turn
            left = demand.groups - granted
            if left > 0:
                self._demands[key] = replace(demand, groups=left)
            else:
                self._demands.pop(key, None)
            ns = demand.namespace
            return Spot(
                granted=granted,
                queued=max(left, 0),
                ahead=ahead if left > 0 else 0,
                running=running.get(ns, 0) + granted,
                share=shares.get(ns, 0),
                cap=self.cap,
            )

    def started(self, key: Key) -> None:
        """The pass of ``key`` created one of the pods it was granted, and `pod_seen` counts it now: one
        reservation less (else the pod would count twice until the pass ends)."""
        with self._lock:
            left = self._reserved.get(key, 0) - 1
            if left > 0:
                self._reserved[key] = left
            else:
                self._reserved.pop(key, None)

    def release(self, key: Key) -> list[Key]:
        """The pass of ``key`` created (or failed to create) the pods it was granted: its reservation ends
        (the pods it created are counted by `pod_seen` already). Returns builds to wake."""
        with self._lock:
            self._reserved.pop(key, None)
            return self._to_wake()

    def pod_seen(self, uid: str, namespace: str, active: bool) -> list[Key]:
        """A worker pod's event: ``active`` while it is not finished (deleting ones still hold their node's
        resources). Returns the builds a freed slot now belongs to: they should be triggered."""
        with self._lock:
            if active:
                self._pods[uid] = namespace
                return []
            if self._pods.pop(uid, None) is None:
                return []
            return self._to_wake()

    def forget(self, key: Key) -> list[Key]:
        """The build ended or is gone: it wants nothing more. Returns builds to wake."""
        with self._lock:
            self._reserved.pop(key, None)
            self._woken.discard(key)
            if self._demands.pop(key, None) is None:
                return []
            return self._to_wake()

    def backlog(self) -> bool:
        """Whether any build waits for a slot (then no pod starts early: it would take a waiting one's)."""
        with self._lock:
            return bool(self._demands)

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {"queue_pods": len(self._pods), "queue_demands": len(self._demands),
                    "queue_namespaces": len(self._served)}
