"""One reconcile pass of one ImageBuild: read → decide (pure) → apply. The shell around the pure core.

Every pass starts from the API (the ImageBuild and its pods), never from memory, so a restarted operator
or a missed event changes nothing. Pods are created before the status that records them is written: if
the operator dies in between, the next pass adopts the pods it finds (deterministic names) instead of
starting them again. Passes for one ImageBuild never overlap (one lock per build); events arriving during
a pass make it run once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from stagefleet import stagekey
from stagefleet.controller import (
    buildphase,
    clock,
    history,
    nodeloss,
    observe,
    platforms,
    polling,
    rejections,
    report,
    retention,
    reuse,
    runs,
    secretneeds,
    stagetags,
    suspension,
    tracking,
    trust,
    urgency,
)
from stagefleet.controller import registry as reg
from stagefleet.controller import status as st
from stagefleet.controller.kube import Conflict, Kube, Refused
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.model import PlanView, plan_dockerfile
from stagefleet.controller.nodewatch import NodeWatch
from stagefleet.controller.podspec import (
    ARCH_LABEL,
    KNOWN_HOSTS_KEY,
    LABEL_UID,
    USERNAME_KEY,
    BuildRef,
    ResolvedSource,
    WorkerConfig,
    configmap_name,
    dockerfile_configmap,
    is_stage_tag_of,
    stage_result_refs,
    worker_pod,
)
from stagefleet.controller.policy import REASON as POLICY_REASON
from stagefleet.controller.policy import Policy, violations
from stagefleet.controller.source import (
    GitAuth,
    Resolved,
    SourceError,
    SourceTimeout,
    current_commit,
    redact,
    resolve,
)
from stagefleet.controller.sourceslots import SourceSlots
from stagefleet.controller.spec import ImageBuildSpec, SpecError, parse_spec
from stagefleet.controller.workerqueue import Demand, Spot, WorkerQueue
from stagefleet.gitauth import is_http_url
from stagefleet.imageindex import write_index
from stagefleet.ocisource import parse_ref as parse_oci_ref

log = logging.getLogger("stagefleet.operator")

SAFETY_POLL_SECONDS = 15.0  # even with no event, look at an unfinished build this often …
SAFETY_POLLS_PER_SECOND = 5.0  # … but with many unfinished builds, no more such passes than this in all


SLOW_PASS_SECONDS = 30.0


def safety_poll_seconds(unfinished: int) -> float:
    """How long an unfinished build may go without a pass when no event comes: 15 s, longer with more than
    75 unfinished builds, so the safety net costs at most 5 passes (10 API reads) a second in all. (With
    300 builds waiting for cluster capacity, 15-s polls were a third of the operator's requests.)"""
    return max(SAFETY_POLL_SECONDS, unfinished / SAFETY_POLLS_PER_SECOND)


@dataclass(frozen=True)
class OperatorConfig:
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    backoff_base: float = 5.0
    # Resolving a git source (ls-remote + one-file fetch, retries included) runs in a thread of its own,
    # never in a reconcile thread, and gives up after this many seconds (--source-timeout).
    source_timeout: float = 60.0
    source_attempts: int = 3
    # At most this many sources resolve at once, and this many of one namespace's (`sourceslots`); a
    # source's timeout counts from when it gets its slot.
    source_resolutions: int = 64
    source_resolutions_per_namespace: int = 8
    early_start: bool = True  # start the next wave's pods while their upstreams build (status.decide)
    # A status change that only reports progress (urgency.urgent_change) waits up to this long, so that the
    # transitions of sibling groups share one write; 0 writes every change at once.
    status_coalesce: float = 1.0
    # A worker pod whose node has not been Ready this long, or that is stuck Terminating this long, is lost:
    # force-deleted, its group retried elsewhere (controller.nodeloss; --node-lost-after).
    node_lost_after: float = nodeloss.DEFAULT_GRACE_SECONDS
    # The admin's limits on what a spec may ask for (builder image, ServiceAccount, tolerations, ...).
    policy: Policy = field(default_factory=Policy)
    # Seconds after which a finished ImageBuild without its own spec.ttlSecondsAfterFinished is deleted
    # (controller.retention); 0 keeps finished builds.
    default_ttl_after_finished: int = 0
    # A finished build's stage tags and worker pods go (controller.stagetags): a Failed or Cancelled build's
    # this long after it finished (--keep-failed-seconds), a Succeeded build's tags at once and its pods
    # after keep_succeeded_pods_seconds (--keep-succeeded-pods-seconds).
    keep_failed_seconds: float = stagetags.DEFAULT_KEEP_FAILED_SECONDS
    keep_succeeded_pods_seconds: float = 0.0
    # How often the in-memory entries of builds and pods are checked against what exists (controller.tracking:
    # a DELETED event lost with a watch cut must not keep them forever); 0: never.
    sweep_seconds: float = tracking.SWEEP_SECONDS
    # At most this many worker pods run at once in all, shared fairly between namespaces
    # (controller.workerqueue; --max-worker-pods); 0: no cap beyond each build's maxParallelPods.
    max_worker_pods: int = 0
    # A platform of spec.platforms with no Ready node of its architecture is built under emulation on the
    # nodes there are (buildah --platform; the nodes need binfmt_misc handlers); False refuses such builds
    # (--no-platform-emulation).
    platform_emulation: bool = True


def _fields(namespace: str, name: str) -> dict[str, str]:
    """Structured fields of a JSON log line about one ImageBuild."""
    return {"imagebuild": name, "namespace": namespace}


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Planned:
    """What planning a new generation produced: the planned status (None: the build stopped or waits),
    the status the API server holds now, the ImageBuild as last read, and events to emit once written;
    ``requeue``: when to look again while it waits."""

    status: dict[str, Any] | None
    base: dict[str, Any]
    ib: dict[str, Any]
    events: list[st.Event] = field(default_factory=list)
    requeue: float = 5.0


class SourceJob:
    """One ImageBuild generation's source being resolved in a thread of its own.

    A black-holed git host (or registry, for spec.source.oci) must hold neither a reconcile thread (eight
    of them stall every tenant) nor the event loop: the pass that needs the source starts the job and
    returns (status Planning, "resolving source"); the job ends within the source timeout and triggers the
    build's next pass, which plans with its result or fails naming spec.source.git.url or .oci.image.
    """

    def __init__(self, uid: str, generation: int) -> None:
        self.uid = uid
        self.generation = generation
        self.done = threading.Event()
        self.resolved: Resolved | None = None
        self.error: str | None = None
        self.timed_out = False
        self.thread: threading.Thread | None = None
        self.started = threading.Event()  # it holds a source slot (`sourceslots`) and resolves
        self.said_queued = False  # a status said it waits for a slot: say when it starts


class PollJob:
    """One look at a finished build's git revision (`polling`), in a thread of its own like `SourceJob`."""

    def __init__(self, uid: str, run: int) -> None:
        self.uid = uid
        self.run = run
        self.done = threading.Event()
        self.commit: str | None = None
        self.error: str | None = None


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        metrics: Metrics,
        *,
        threads: int = 8,
        planner: Callable[..., PlanView] = plan_dockerfile,
    ) -> None:
        self.kube = kube
        # Dockerfile → plan; the operator passes `planner.Planner().plan` (a recycled child process: the
        # parser leaks memory on every parse), tests the pure function itself.
        self.planner = planner
        self.config = config
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reconcile")
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._dirty: dict[tuple[str, str], bool] = {}
        self._due: dict[tuple[str, str], float] = {}
        # The inline Dockerfile's ConfigMap created for (uid, generation) of a build: no second create.
        self._configmaps: dict[tuple[str, str], tuple[str, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pod_states: dict[str, tuple[Any, ...]] = {}
        self._created: set[str] = set()  # uids of the pods this process created (until they are deleted)
        self._held: dict[tuple[str, str], float] = {}  # build → since when a progress write is held back
        # Worker pods the scheduler cannot place: while there are any, no pod starts early (it would only
        # wait, holding room that real work needs).
        self._unschedulable: dict[str, str] = {}  # pod uid → its ImageBuild's uid
        # Where the worker pods run: pod uid → (node, namespace, ImageBuild name), from pod events, so that
        # a node going NotReady (or Ready again) triggers exactly the builds with pods on it.
        self._pod_nodes: dict[str, tuple[str, str, str]] = {}
        self.nodes: NodeWatch | None = None  # started with the operator (watch_nodes)
        # Sources being resolved, per build (SourceJob); guarded by a lock: jobs end in their own threads.
        self._sources: dict[tuple[str, str], SourceJob] = {}
        self._polls: dict[tuple[str, str], PollJob] = {}  # (guarded by _sources_lock)
        self._sources_lock = threading.Lock()
        self._source_slots = SourceSlots(config.source_resolutions, config.source_resolutions_per_namespace)
        self._loop: asyncio.AbstractEventLoop | None = None  # kopf's, for a job's wake-up
        # Every pod uid above → its build, so that a build's end or deletion drops its pods' entries too.
        self._pod_builds: dict[str, tuple[str, str]] = {}
        # Builds a pass found gone (GET 404) although no DELETED event said so (a watch cut): forgotten when
        # the pass ends. (Set from reconcile threads, read in the loop: set.add/discard are atomic.)
        self._vanished: set[tuple[str, str]] = set()
        # Builds whose current generation has ended: a pass may still be due for them (their pods and stage
        # tags kept for --keep-failed-seconds, a TTL), but they do not count as unfinished (`unfinished`).
        self._ended: set[tuple[str, str]] = set()
        self._swept_at = time.monotonic()  # the last memory sweep (tracking)
        # Passes running now: reconcile thread id → (build, started); a pass that runs for minutes holds its
        # build (no other pass of it starts) and is reported with its stack (`_report_slow_passes`).
        self._passes: dict[int, tuple[tuple[str, str], float]] = {}
        self._reported: set[tuple[int, float]] = set()
        # The farm's worker-pod cap (`workerqueue`): the pods that run, what each build waits to start.
        self.queue = WorkerQueue(config.max_worker_pods)
        self._claimed: set[tuple[str, str]] = set()  # builds whose pass told the queue what it wants

    # --- nodes -------------------------------------------------------------------------------------------

    def watch_nodes(self, loop: asyncio.AbstractEventLoop) -> NodeWatch:
        """Start following the Nodes' readiness (a thread with one list+watch); a change triggers the
        builds with pods on that node (in ``loop``, kopf's)."""

        def changed(name: str) -> None:
            loop.call_soon_threadsafe(self._node_changed, name)

        watch = NodeWatch(self.kube, changed, lost_after=self.config.node_lost_after)
        self.nodes = watch
        watch.start()
        return watch

    def _node_changed(self, node: str) -> None:
        for ns, name in sorted({(ns, name) for n, ns, name in self._pod_nodes.values() if n == node}):
            task = asyncio.create_task(self.trigger(ns, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _note_node(self, pod: Mapping[str, Any], deleted: bool) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        node = (pod.get("spec") or {}).get("nodeName")
        owner = next((o for o in meta.get("ownerReferences") or () if o.get("kind") == "ImageBuild"), None)
        if deleted or not node or owner is None:
            self._pod_nodes.pop(uid, None)
        else:
            ns = str(meta.get("namespace") or "default")
            self._pod_nodes[uid] = (str(node), ns, str(owner.get("name")))

    # --- scheduling (async, in kopf's loop) --------------------------------------------------------------

    async def trigger(self, namespace: str, name: str) -> None:
        """Reconcile now; if a pass for this build is running, make it run once more afterwards."""
        key = (namespace, name)
        self._loop = asyncio.get_running_loop()
        self._dirty[key] = True
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            return
        async with lock:
            loop = asyncio.get_running_loop()
            while self._dirty.get(key):
                self._dirty[key] = False
                requeue = await loop.run_in_executor(self._pool, self.reconcile_safely, namespace, name)
                if requeue is None:
                    self._due[key] = math.inf  # only events wake it (e.g. a spec change)
                else:
                    self._due[key] = time.monotonic() + requeue
            # (No await from here on: no other trigger of this build runs before the lock is released.)
            if key in self._vanished:
                self._vanished.discard(key)
                self.forget(namespace, name, in_pass=True)
            elif self._due.get(key) == math.inf:
                # Ended (or waits for an event only): no scheduling state to keep. Its pods' entries stay
                # while the pods exist (their last signature spares a pass per late kubelet write); their
                # DELETED events, the build's deletion or the sweep drop them.
                self._drop(key, in_pass=True, pods=False)

    def pod_changed(self, pod: Mapping[str, Any], deleted: bool = False) -> bool:
        """Whether a worker pod event can change a decision (phase, container state, deletion, node).

        The kubelet writes pod status many times per pod; most writes change nothing the operator reads.
        """
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        self._note_schedulable(pod, deleted)
        self._note_node(pod, deleted)
        if self.queue.enabled:
            running = not deleted and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            self._wake_all(self.queue.pod_seen(uid, str(meta.get("namespace") or "default"), running))
        if deleted:
            self._drop_pod(uid)
            return True
        owner = next((o for o in meta.get("ownerReferences") or () if o.get("kind") == "ImageBuild"), None)
        if owner is not None:
            self._pod_builds[uid] = (str(meta.get("namespace") or "default"), str(owner.get("name")))
        state = observe.pod_signature(pod)
        if self._pod_states.get(uid) == state:
            return False
        self._pod_states[uid] = state
        return True

    def _note_schedulable(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        if not deleted and observe.unschedulable(pod):
            self._unschedulable[uid] = str((meta.get("labels") or {}).get(LABEL_UID))
        else:
            self._unschedulable.pop(uid, None)

    def _refresh_schedulable(self, build_uid: str, listed: list[dict[str, Any]]) -> None:
        """A pass's own pod list is the truth for its build: entries of pods gone from it (a DELETED event
        lost with a watch) do not keep early start off."""
        live = {str((p.get("metadata") or {}).get("uid")) for p in listed}
        for uid, owner in list(self._unschedulable.items()):
            if owner == build_uid and uid not in live:
                self._unschedulable.pop(uid, None)
        for p in listed:
            self._note_schedulable(p)

    def early_start_now(self) -> bool:
        """Early start is on and the scheduler has room: no worker pod is waiting for a node, and no ready
        group waits for a slot of the farm's cap (`workerqueue`)."""
        return self.config.early_start and not self._unschedulable and not self.queue.backlog()

    async def requeue_forever(self, interval: float = 0.1) -> None:
        """Trigger every build whose requeue time has passed (backoff, timeout, waiting for a Secret); every
        ``sweep_seconds``, drop the memory of builds and pods that no longer exist (`sweep`)."""
        published = 0.0
        while True:
            now = time.monotonic()
            if now - published >= 1.0:
                published = now
                for name, size in self.sizes().items():
                    self.metrics.tracked.labels(map=name).set(size)
            every = self.config.sweep_seconds
            if every > 0 and now - self._swept_at >= every:
                self._swept_at = now
                task = asyncio.create_task(self._sweep_safely())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._report_slow_passes(now)
            for (namespace, name), when in list(self._due.items()):
                if when <= now and not self._dirty.get((namespace, name)):
                    self._due[(namespace, name)] = math.inf  # trigger() sets the next one
                    task = asyncio.create_task(self.trigger(namespace, name))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(interval)

    def unfinished(self) -> int:
        """Builds with a pass still due that have not ended (a finished build's clean-up later, e.g. a
        failed one's pods kept for an hour, does not lengthen the safety poll of the running ones)."""
        return sum(1 for key, when in list(self._due.items()) if when != math.inf and key not in self._ended)

    def forget(self, namespace: str, name: str, uid: str | None = None, *, in_pass: bool = False) -> None:
        """The build is gone (DELETED event, a pass's GET found nothing, or the sweep): drop everything.
        ``in_pass``: called by the trigger that holds the build's lock."""
        key = (namespace, name)
        self._drop(key, in_pass=in_pass)
        with self._sources_lock:
            self._sources.pop(key, None)  # its thread ends by its own deadline; the result is dropped
            self._polls.pop(key, None)
        self.metrics.forget(f"{namespace}/{name}")
        correlator = getattr(self.kube, "events", None)
        if uid is not None and correlator is not None:
            correlator.forget_object(uid)

    def _drop(self, key: tuple[str, str], *, in_pass: bool = False, pods: bool = True) -> None:
        """Drop a build's scheduling state and (``pods``) its pods' entries: an event brings back what is
        needed, every pass starts from the API anyway. ``in_pass``: called by the trigger holding the
        build's lock, which releases it right after (no await in between)."""
        lock = self._locks.get(key)
        if lock is not None and lock.locked() and not in_pass:
            return  # a pass runs: when it ends, its trigger drops what is left (gone, or nothing due)
        self._locks.pop(key, None)
        self._dirty.pop(key, None)
        self._due.pop(key, None)
        self._held.pop(key, None)
        self._ended.discard(key)
        self._configmaps.pop(key, None)
        if not pods:
            return
        for uid, owner in list(self._pod_builds.items()):  # (a copy: reconcile threads add pods)
            if owner == key:
                self._drop_pod(uid)

    def _drop_pod(self, uid: str) -> None:
        if self.queue.enabled:
            self._wake_all(self.queue.pod_seen(uid, "", False))
        self._pod_states.pop(uid, None)
        self._created.discard(uid)
        self._unschedulable.pop(uid, None)
        self._pod_nodes.pop(uid, None)
        self._pod_builds.pop(uid, None)

    def sizes(self) -> dict[str, int]:
        """Entries per per-build and per-pod map (metric stagefleet_operator_tracked_entries)."""
        correlator = getattr(self.kube, "events", None)
        return {
            "locks": len(self._locks),
            "dirty": len(self._dirty),
            "due": len(self._due),
            "held": len(self._held),
            "ended": len(self._ended),
            "configmaps": len(self._configmaps),
            "sources": len(self._sources),
            "polls": len(self._polls),
            "pod_states": len(self._pod_states),
            "created": len(self._created),
            "unschedulable": len(self._unschedulable),
            "pod_nodes": len(self._pod_nodes),
            "pod_builds": len(self._pod_builds),
            "metrics": len(self.metrics.build_keys()),
            "events": len(correlator) if correlator is not None else 0,
            "tasks": len(self._tasks),
            **self.queue.sizes(),
        }

    def known(self) -> tuple[set[tuple[str, str]], dict[str, tuple[str, str]]]:
        """The builds and pods (uid → build) with an entry anywhere in memory: what a sweep checks."""
        builds = set(self._locks) | set(self._dirty) | set(self._due) | set(self._held) | set(self._ended)
        builds |= set(self._configmaps) | set(self._sources) | set(self._polls)
        for key in self.metrics.build_keys():
            ns, _, name = key.partition("/")
            builds.add((ns, name))
        pods = dict(self._pod_builds)
        for uid, (_, ns, name) in list(self._pod_nodes.items()):
            pods.setdefault(uid, (ns, name))
        return builds, pods

    def list_existing(self, namespaces: frozenset[str]) -> tracking.Listing:
        """In a thread: what exists in ``namespaces`` (a namespace whose lists fail is left out)."""
        listed: set[str] = set()
        builds: set[tuple[str, str]] = set()
        pods: set[str] = set()
        for ns in sorted(namespaces):
            try:
                names = self.kube.list_imagebuild_names(ns)
                uids = self.kube.list_worker_pod_uids(ns)
            except Exception as e:  # noqa: BLE001 - the next sweep tries again
                log.warning("memory sweep: listing namespace %s failed (%s)", ns, e)
                continue
            listed.add(ns)
            builds |= {(ns, n) for n in names}
            pods |= uids
        return tracking.Listing(frozenset(listed), frozenset(builds), frozenset(pods))

    def apply_sweep(self, stale: tracking.Stale) -> None:
        """Drop what the sweep found gone (in the event loop). A build with a pass running or due is left to
        that pass, which finds it gone itself (or, if it was created again meanwhile, must not lose its
        requeue time)."""
        for ns, name in sorted(stale.builds):
            lock = self._locks.get((ns, name))
            if (lock is not None and lock.locked()) or self._due.get((ns, name), math.inf) != math.inf:
                continue
            log.info("%s/%s is gone (its deletion was not seen): forgotten", ns, name,
                     extra=_fields(ns, name))
            self.forget(ns, name)
        for uid in stale.pods:
            self._drop_pod(uid)

    async def _sweep_safely(self) -> None:
        try:
            await self.sweep()
        except Exception:
            log.exception("memory sweep failed; trying again at the next one")

    async def sweep(self) -> tracking.Stale:
        """Drop the entries of builds and pods gone from the API (`tracking`), and expired Event entries."""
        builds, pods = self.known()
        namespaces = tracking.namespaces_of(builds, pods)
        loop = asyncio.get_running_loop()
        listing = await loop.run_in_executor(None, self.list_existing, namespaces)
        stale = tracking.stale(builds, pods, listing)
        self.apply_sweep(stale)
        correlator = getattr(self.kube, "events", None)
        if correlator is not None:
            correlator.expire(time.monotonic())
        return stale

    # --- one pass (sync, in a worker thread) -------------------------------------------------------------

    def reconcile_safely(self, namespace: str, name: str) -> float | None:
        started = time.monotonic()
        me = threading.get_ident()
        self._passes[me] = ((namespace, name), started)
        self._claimed.discard((namespace, name))
        try:
            for _ in range(5):
                try:
                    result = self.reconcile(namespace, name)
                    self.metrics.reconciles.labels(result="ok").inc()
                    return result
                except Conflict:
                    log.info("status of %s/%s changed meanwhile; re-reading", namespace, name)
            return 1.0
        except Exception:
            self.metrics.reconciles.labels(result="error").inc()
            log.exception(
                "reconcile of %s/%s failed; retrying soon", namespace, name, extra=_fields(namespace, name)
            )
            return 5.0
        finally:
            self._passes.pop(me, None)
            if (namespace, name) in self._claimed:  # its reserved slots hold pods of its own now
                self._claimed.discard((namespace, name))
                self._wake_all(self.queue.release((namespace, name)))
            elif self.queue.enabled:  # (planning, finished, gone: it waits for no slot)
                self._wake_all(self.queue.forget((namespace, name)))
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)

    def _report_slow_passes(self, now: float) -> None:
        """Log, once each, passes running longer than SLOW_PASS_SECONDS with where they are: such a pass
        holds its build's lock, so nothing else happens to that build until it returns."""
        for ident, ((namespace, name), started) in list(self._passes.items()):
            if now - started < SLOW_PASS_SECONDS or (ident, started) in self._reported:
                continue
            self._reported.add((ident, started))
            frame = sys._current_frames().get(ident)
            where = "".join(traceback.format_stack(frame, limit=12)) if frame is not None else "?"
            log.warning("a pass of %s/%s has run for %.0f s; it is at:\n%s", namespace, name, now - started,
                        where, extra=_fields(namespace, name))
        live = {(i, t) for i, (_, t) in self._passes.items()}
        self._reported &= live

    def reconcile(self, namespace: str, name: str) -> float | None:
        """One pass; returns when to look again (None: only on the next event)."""
        ib = self.kube.get_imagebuild(namespace, name)
        if ib is None:
            self._vanished.add((namespace, name))  # forgotten when the pass ends (`trigger`)
            return None
        meta = ib["metadata"]
        if meta.get("deletionTimestamp"):
            self.cleanup(namespace, str(meta["uid"]))
            return None
        status: dict[str, Any] = dict(ib.get("status") or {})
        run = runs.current(meta, status, ib.get("spec"))  # a spec edit or a rebuild request: a new run
        build = BuildRef(name, namespace, str(meta["uid"]), run.number, run)
        now = _now()
        current_gen = runs.run_of(status) == build.generation
        if current_gen and status.get("phase") in buildphase.TERMINAL:
            self._ended.add((namespace, name))
        else:
            self._ended.discard((namespace, name))
        # (A platform's build goes with its parent, never by the operator's default TTL before it.)
        default_ttl = 0 if platforms.is_child(meta) else self.config.default_ttl_after_finished
        ttl = retention.ttl_of(ib.get("spec"), default_ttl)
        expires = retention.expires_in(status, build.generation, ttl, now)
        if expires is not None and expires <= 0:
            self._after_finish(ib, build, status, now, leaving=True)  # its stage tags go with it
            log.info("%s/%s finished %s ago: deleted (ttlSecondsAfterFinished %s)", namespace, name,
                     status.get("completionTime"), ttl, extra=_fields(namespace, name))
            self.kube.delete_imagebuild(namespace, name, build.uid)
            return None
        if current_gen and status.get("phase") in buildphase.TERMINAL and "plan" not in status:
            # Ended before planning (bad spec, source, Dockerfile): nothing runs. A spec edit that keeps the
            # run (spec.suspend) is only observed.
            if status.get("observedGeneration") != run.generation:
                stamped = runs.stamp(status, run)
                self._write(ib, status, stamped)
                status = stamped
            again = self._source_retry(ib, build, status, now)
            if not isinstance(again, tuple):
                return again if expires is None else (expires if again is None else min(expires, again))
            status, build = again  # its source was unavailable: a new run tries again
            current_gen = False

        finished = current_gen and status.get("phase") in buildphase.TERMINAL
        try:
            spec = parse_spec(ib.get("spec"))
        except SpecError as e:
            self._supersede(build, status)
            self._finish_early(ib, build, status, "InvalidSpec", str(e), now)
            return None
        if len(spec.platforms) > 1:  # one child ImageBuild per platform, joined into an index
            again = None if finished else self._fan_out(ib, build, spec, status, now)
            if expires is not None:
                return expires if again is None else min(expires, again)
            return again
        if finished:  # its pods and stage tags, when due
            status, cleanup_in = self._after_finish(ib, build, status, now, spec=spec)
            if cleanup_in is not None:
                expires = cleanup_in if expires is None else min(expires, cleanup_in)
        if finished and spec.source.git is not None:
            polled = self._poll(ib, build, spec, status, now)
            if isinstance(polled, tuple):  # the revision moved: a new run of the same spec
                status, build = polled
                current_gen = finished = False
            elif polled is not None:
                expires = polled if expires is None else min(expires, polled)

        base = status  # what the API server holds: the base of the next status write
        events: list[st.Event] = []
        if not current_gen or "plan" not in status:
            refused = violations(spec, self.config.policy, self.config.worker.builder_image, build.namespace)
            if refused:  # checked before anything is resolved or started on the spec's behalf
                self._supersede(build, status)
                self._finish_early(ib, build, status, POLICY_REASON, "; ".join(refused), now)
                return None
            planned = self._plan(ib, build, spec, status, now)
            if planned.status is None:
                if planned.base.get("phase") in buildphase.TERMINAL:
                    return None
                return planned.requeue  # waiting for a Secret the planning needs, or for the source
            ib, base, status, events = planned.ib, planned.base, planned.status, planned.events

        plan = PlanView.from_status(status["plan"])
        # A very wide build's status lists only some stages (status.summarise_stages): decide on all of them.
        status = report.expand_stages(status, plan, stage_result_refs(spec, build))
        again = self._step(ib, build, spec, plan, status, base, events, now)
        if again is None:
            self._ended.add((namespace, name))
        if again is None and not finished:
            return 0.5  # it just finished (its terminal status is written): the next pass cleans up after it
        if expires is not None:
            return expires if again is None else min(expires, again)
        if again is None and ttl is not None:
            # The pass that wrote the terminal status saw it unfinished; our own status writes start no
            # pass, so look again when the TTL would be up.
            return float(ttl) + 0.5
        return again

    def _plan(
        self, ib: dict[str, Any], build: BuildRef, spec: ImageBuildSpec, status: dict[str, Any], now: datetime
    ) -> Planned:
        """A new generation: stop the old one's pods, resolve the source, plan.

        The planned status is not written here: the same pass starts the first pods and writes once.
        Only a git or OCI source, whose fetch takes a while, gets a visible Planning status first.
        """
        superseded = self._supersede(build, status)
        why = runs.started_by(status, build.run) if build.run else None
        if why and runs.run_of(status) != build.generation:
            self._event(ib, "Normal", "RunStarted", f"{why}: run {build.generation} starts")
        if superseded:
            self._event(
                ib,
                "Normal",
                "Superseded",
                f"{why or 'spec changed'}: stopped {superseded} pod(s) of the old build",
            )
        if spec.source.inline is not None:
            resolved = resolve(spec)  # nothing to fetch
        else:
            job = self._source_job(build)
            if job is None:
                # The git credentials first: while they are missing the build waits (Stalled), writing
                # status only once. An OCI source is read with the push Secret's registry credentials.
                auth: GitAuth | reg.Registry | Planned
                if spec.source.oci is not None:
                    auth = self._registry_client(build, spec)(parse_oci_ref(spec.source.oci.image).host)
                else:
                    auth = self._git_auth(ib, build, spec, status, now)
                if isinstance(auth, Planned):
                    return auth
                job = self._start_source_job(build, spec, auth)
            if not job.done.is_set():
                queued = not job.started.is_set() and self._source_slots.would_wait(build.namespace)
                if queued:
                    job.said_queued = True
                    busy = self._source_slots.busy()
                    message = (
                        f"waiting to resolve {redact(spec.source.where)}: "
                        f"{busy.get(build.namespace, 0)} source(s) of this namespace resolving (at most "
                        f"{self._source_slots.per_namespace}), {sum(busy.values())} in all (at most "
                        f"{self._source_slots.total})"
                    )
                else:
                    message = (
                        f"resolving source: {redact(spec.source.where)} "
                        f"(gives up after {self.config.source_timeout:g}s)"
                    )
                planning = report.progress_status(
                    generation=build.generation,
                    run=build.run,
                    phase=buildphase.PLANNING,
                    reason="Planning",
                    message=message,
                    old=status,
                    now=now,
                )
                self._write(ib, status, planning)
                # the job triggers the next pass when it ends; this is only a safety net
                return Planned(None, planning, ib, requeue=self.config.source_timeout + 5.0)
            with self._sources_lock:
                if self._sources.get((build.namespace, build.name)) is job:
                    del self._sources[(build.namespace, build.name)]
            if job.resolved is None:
                reason = "SourceTimeout" if job.timed_out else "SourceUnavailable"
                failed = self._finish_early(ib, build, status, reason, job.error or "unavailable", now)
                return Planned(None, failed, ib)
            resolved = job.resolved
        planning = status
        from stagefleet.stages import DockerfileError

        try:
            plan = self.planner(
                resolved.dockerfile,
                target=spec.target,
                build_args=spec.build_args,
                filename=resolved.filename,
            )
        except DockerfileError as e:
            failed = self._finish_early(ib, build, planning, "DockerfileError", str(e), now)
            return Planned(None, failed, ib)
        plan = history.prioritise(plan, history.measured(planning))  # a previous generation's durations
        new = report.planned_status(
            generation=build.generation,
            plan=plan,
            source=resolved.status,
            old=planning,
            now=now,
            run=build.run,
        )
        note = st.Event(
            "Normal", "Planned", f"{new['message']}; critical path {' → '.join(plan.critical_path)}"
        )
        events = [note]
        found = self._reuse(build, spec, plan, resolved)
        if found is not None:
            new = reuse.mark(new, plan, found, clock.fmt_time(now))
            if found.found:
                stages = sum(len(plan.group(g).stages) for g in found.found)
                events.append(st.Event(
                    "Normal", "StagesReused",
                    f"{stages} stage(s) of {len(found.found)} group(s) unchanged: their stored results are "
                    f"used, no pod started ({', '.join(sorted(found.found, key=lambda g: int(g[1:])))})",
                ))
        return Planned(new, planning, ib, events)

    def _fan_out(
        self, ib: dict[str, Any], build: BuildRef, spec: ImageBuildSpec, status: dict[str, Any], now: datetime
    ) -> float | None:
        """A pass of a multi-platform build (`platforms`): make its children what its spec says, follow
        them, and write the image index once every platform's image is built."""
        if runs.run_of(status) != build.generation:
            refused = violations(spec, self.config.policy, self.config.worker.builder_image, build.namespace)
            if refused:
                self._finish_early(ib, build, status, POLICY_REASON, "; ".join(refused), now)
                return None
        native: list[set[str] | None] = []  # the nodes' architectures, listed once, only for a new child
        children: list[platforms.Child] = []
        for i, p in enumerate(spec.platforms):
            arch = p.split("/")[1]
            name = platforms.child_name(build.name, p)
            obj = self.kube.get_imagebuild(build.namespace, name)
            if obj is not None and platforms.owned_by(obj, build.uid):
                # Placed when it was created: a node coming or going later must not patch it into a new run.
                here = platforms.placed_natively(obj, arch)
            else:
                if not native:
                    native.append(self._native_arches())
                here = arch in native[0] if native[0] is not None else arch == reuse.build_arch({})
            if not here and not self.config.platform_emulation:
                self._finish_early(ib, build, status, "PlatformUnavailable", (
                    f"spec.platforms[{i}]: {p}: no Ready node of architecture {arch}, and this operator does "
                    "not build under emulation (--no-platform-emulation)"), now)
                return None
            wanted = platforms.child_manifest(ib, p, here, build.run.rebuild if build.run else None)
            try:
                if obj is None:
                    self.kube.create(wanted)
                elif not platforms.owned_by(obj, build.uid):
                    self._finish_early(ib, build, status, "PlatformBuildConflict", (
                        f"spec.platforms[{i}]: {p}: ImageBuild {name} exists and is not this build's: "
                        "rename or delete it"), now)
                    return None
                elif (patch := platforms.spec_difference(obj, wanted)) is not None:
                    self.kube.patch_imagebuild(build.namespace, name, patch)
                    obj = None  # (read again when its next event triggers this pass)
            except Refused as e:
                self._finish_early(ib, build, status, "PlatformBuildRefused", (
                    f"spec.platforms[{i}]: {p}: the API refused ImageBuild {name} ({e.code} {e.reason}): "
                    f"{e.message}"), now)
                return None
            children.append(platforms.Child(p, name, obj))
        index_digest, failure, again = None, None, 10.0
        if all(c.phase == buildphase.SUCCEEDED for c in children):
            commits = {c.platform: ((c.status.get("source") or {}).get("git") or {}).get("commit")
                       for c in children}
            if len(set(commits.values())) > 1:
                failure = ("the platforms were built from other commits (the branch moved meanwhile): "
                           + ", ".join(f"{p} {str(c)[:12]}" for p, c in commits.items()) + "; rebuild it")
            else:
                try:
                    index_digest = self._write_index(build, spec, children)
                except reg.RegistryError as e:
                    if not e.transient:
                        failure = f"writing the image index to {spec.output.repository} failed: {e}"
                    again = 5.0
        new, events = platforms.fan_status(
            build=build, spec_suspend=spec.suspend, status=status, children=children,
            image=spec.output.image, tags=spec.output.refs, index_digest=index_digest, failure=failure,
            now=now,
        )
        self._write(ib, status, new)
        for ev in events:
            self._event(ib, ev.type, ev.reason, ev.message)
        return None if new["phase"] in buildphase.TERMINAL else again

    def _native_arches(self) -> set[str] | None:
        """The architectures of the Ready nodes (None: the nodes cannot be read)."""
        try:
            nodes, _ = self.kube.list_nodes()
        except Exception:  # noqa: BLE001 (no node access: rbac.nodes off)
            return None
        out: set[str] = set()
        for n in nodes:
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (n.get("status") or {}).get("conditions") or ())
            arch = ((n.get("metadata") or {}).get("labels") or {}).get(ARCH_LABEL)
            if ready and arch:
                out.add(str(arch))
        return out

    def _write_index(self, build: BuildRef, spec: ImageBuildSpec, children: list[platforms.Child]) -> str:
        """Put the OCI index of the children's images under every output tag; its digest."""
        where = reg.split_repository(spec.output.repository)
        if where is None:
            raise reg.RegistryError(f"{spec.output.repository} names no registry host")
        client = self._registry_client(build, spec)(where[0])
        images = [(c.platform, str((c.status.get("image") or {}).get("digest"))) for c in children]
        return write_index(client, where[1], [ref.rpartition(":")[2] for ref in spec.output.refs], images)

    def _registry_client(
        self, build: BuildRef, spec: ImageBuildSpec, timeout: float = reuse.LOOKUP_TIMEOUT
    ) -> Callable[[str], reg.Registry]:
        """Registry clients by host, with the workers' push credentials (a dockerconfigjson; read once,
        when first needed)."""
        clients: dict[str, reg.Registry] = {}
        auth: list[str | None] = []

        def client_for(host: str) -> reg.Registry:
            if not auth:
                raw = None
                if spec.output.push_secret:
                    raw = self.kube.read_secret_value(
                        build.namespace, spec.output.push_secret, ".dockerconfigjson"
                    )
                auth.append(raw.decode(errors="replace") if raw is not None else None)
            if host not in clients:
                clients[host] = reg.Registry(host, insecure=host in self.config.worker.insecure_registries,
                                             auth_config=auth[0], timeout=timeout)
            return clients[host]

        return client_for

    def _reuse(
        self, build: BuildRef, spec: ImageBuildSpec, plan: PlanView, resolved: Resolved
    ) -> reuse.Reuse | None:
        """Key the stages of a newly planned generation and find the results that exist (`reuse.lookup`);
        when the final group's does, write the output tags from it (`reuse.copy_image`). None when stage
        reuse is off (spec.cache.reuseStages, cache disabled) or the plan has no parsed stages."""
        cache_repo = spec.cache_repository(build.namespace)
        if not spec.cache.reuse_stages or cache_repo is None or plan.graph is None:
            return None
        client_for = self._registry_client(build, spec)
        context = resolved.index  # an OCI source's, read from its layer
        if resolved.tree is not None:
            # (the workers' clone keeps .git in a context that is the repository's root: its commit counts)
            head = None if spec.source.context_dir else resolved.git_commit
            tree = stagekey.index_git_tree(resolved.tree, spec.source.context_dir, head=head)
            context = tree.without(resolved.ignore)  # (what the builder never copies keys nothing)
        try:
            platform = reuse.build_platform(spec.platform, spec.node_selector)
            found = reuse.lookup(plan.graph, plan, platform=platform, context=context,
                                 cache_repo=cache_repo, client_for=client_for)
        except Exception:  # noqa: BLE001 (reuse saves time; it must never stop a build)
            log.exception(
                "stage reuse lookup of %s/%s failed; building every group", build.namespace, build.name
            )
            return None
        final = plan.final_group
        if final in found.found:
            where = reg.split_repository(spec.output.repository)
            try:
                if where is None:
                    raise reg.RegistryError(f"{spec.output.repository} names no registry host")
                reuse.copy_image(
                    client_for(where[0]), found.image[final], found.found[final], spec.output.refs
                )
            except reg.RegistryError as e:
                found.notes.append(f"output not copied from the stored result, building it: {e}")
                del found.found[final], found.image[final]
        if found.notes:
            log.info("%s/%s stage reuse: %s", build.namespace, build.name, "; ".join(found.notes[:5]),
                     extra=_fields(build.namespace, build.name))
        return found

    def _git_auth(
        self, ib: dict[str, Any], build: BuildRef, spec: ImageBuildSpec, status: dict[str, Any], now: datetime
    ) -> GitAuth | Planned:
        """The credentials of spec.source.git.secretRef, or the Stalled status while a key is missing: the
        Secret, its credential key, and for ssh its known_hosts (host keys are checked strictly unless
        spec.source.git.insecureIgnoreHostKey)."""
        git = spec.source.git
        assert git is not None
        if git.secret is None:
            return GitAuth(insecure_ignore_host_key=git.insecure_ignore_host_key)
        ref = git.secret
        keys = self.kube.secret_keys(build.namespace, ref.name)
        reason, msg = "SecretNotFound", ""
        if keys is None or ref.key not in keys:
            msg = (
                f'waiting for Secret "{ref.name}" key "{ref.key}" (spec.source.git.secretRef): '
                + ("not found in the namespace" if keys is None else "the Secret has no such key")
            )
        elif git.ssh and not git.insecure_ignore_host_key and KNOWN_HOSTS_KEY not in keys:
            reason = "KnownHostsMissing"
            msg = (
                f'waiting for Secret "{ref.name}" key "{KNOWN_HOSTS_KEY}" (spec.source.git.secretRef): ssh '
                "host keys are checked strictly; add the server's host keys (ssh-keyscan HOST) under "
                f'"{KNOWN_HOSTS_KEY}", or set spec.source.git.insecureIgnoreHostKey: true to accept any'
            )
        else:
            auth = self._read_git_auth(build, spec, keys)
            if auth is not None:
                return auth
            msg = f'waiting for Secret "{ref.name}" key "{ref.key}" (spec.source.git.secretRef): not found'
        stalled = report.progress_status(
            generation=build.generation,
            run=build.run,
            phase=buildphase.PENDING,
            reason=reason,
            message=msg,
            old=status,
            now=now,
            stalled=True,
        )
        if self._write(ib, status, stalled):
            self._event(ib, "Warning", reason, msg)
        return Planned(None, stalled, ib)

    def _poll(
        self, ib: dict[str, Any], build: BuildRef, spec: ImageBuildSpec, status: dict[str, Any], now: datetime
    ) -> float | tuple[dict[str, Any], BuildRef] | None:
        """A finished git build: ask for its revision's commit when due (`polling`). Returns when to look
        again, or (the status as written, the new run) when the commit moved; None: never."""
        git = spec.source.git
        assert git is not None
        meta = ib["metadata"]
        due = polling.due_in(status, meta, git.poll_seconds, now)
        if due is None or due > 0:
            return due
        key = (build.namespace, build.name)
        with self._sources_lock:
            job = self._polls.get(key)
            if job is not None and (job.uid, job.run) != (build.uid, build.generation):
                job = None
        if job is None:
            auth = self._git_auth_quietly(build, spec)
            job = PollJob(build.uid, build.generation)
            with self._sources_lock:
                self._polls[key] = job
            threading.Thread(target=self._poll_job, args=(job, build, spec, auth), daemon=True,
                             name=f"poll-{build.namespace}/{build.name}").start()
        if not job.done.is_set():
            return self.config.source_timeout + 5.0  # the job wakes the build; this is a safety net
        with self._sources_lock:
            if self._polls.get(key) is job:
                del self._polls[key]
        answered = polling.answered(status, meta, clock.fmt_time(now))
        if job.error is not None:
            self._write(ib, status, answered)
            self._event(ib, "Warning", "PollFailed", f"{job.error}; asking again in {git.poll_seconds or 0}s")
            return float(git.poll_seconds) if git.poll_seconds else None
        old = polling.commit_of(status)
        self._write(ib, status, answered)
        if job.commit == old or build.run is None:
            return float(git.poll_seconds) if git.poll_seconds else None
        nxt = runs.following(status, build.run)
        self._event(
            ib, "Normal", "RunStarted",
            f"spec.source.git.revision {git.revision!r} moved from {(old or '?')[:12]} to "
            f"{(job.commit or '?')[:12]}: run {nxt.number} starts",
        )
        return answered, BuildRef(build.name, build.namespace, build.uid, nxt.number, nxt)

    def _source_retry(
        self, ib: dict[str, Any], build: BuildRef, status: dict[str, Any], now: datetime
    ) -> float | tuple[dict[str, Any], BuildRef] | None:
        """A run that failed to resolve its git source, with a pollInterval: a new run tries again when the
        interval passed (or at once on a new stagefleet.io/resolve value), as a GitOps source keeps trying.
        Returns when to look again, (the status as written, the new run), or None (never)."""
        try:
            spec = parse_spec(ib.get("spec"))
        except SpecError:
            return None
        git = spec.source.git
        meta = ib["metadata"]
        if git is None or build.run is None:
            return None
        due = polling.retry_in(status, meta, git.poll_seconds, now)
        if due is None or due > 0:
            return due
        nxt = runs.following(status, build.run)
        reason = (status.get("failure") or {}).get("reason")
        answered = polling.answered(status, meta, clock.fmt_time(now))
        self._write(ib, status, answered)  # (the resolve request it answers is not asked again)
        self._event(ib, "Normal", "RunStarted",
                    f"the last run's source was not resolved ({reason}): run {nxt.number} tries again")
        return answered, BuildRef(build.name, build.namespace, build.uid, nxt.number, nxt)

    def _git_auth_quietly(self, build: BuildRef, spec: ImageBuildSpec) -> GitAuth:
        """The git credentials for a poll, or none when the Secret is missing (the poll then fails and
        says so; a finished build's status is not turned into a wait for the Secret)."""
        git = spec.source.git
        assert git is not None
        if git.secret is None:
            return GitAuth(insecure_ignore_host_key=git.insecure_ignore_host_key)
        keys = self.kube.secret_keys(build.namespace, git.secret.name)
        auth = self._read_git_auth(build, spec, keys) if keys is not None else None
        return auth or GitAuth(insecure_ignore_host_key=git.insecure_ignore_host_key)

    def _read_git_auth(
        self, build: BuildRef, spec: ImageBuildSpec, keys: Collection[str]
    ) -> GitAuth | None:
        """The credentials spec.source.git.secretRef holds (``keys``: its Secret's keys); None when its
        credential key cannot be read."""
        git = spec.source.git
        assert git is not None and git.secret is not None
        ref = git.secret
        value = self.kube.read_secret_value(build.namespace, ref.name, ref.key)
        if value is None:
            return None
        if git.ssh:
            known = (
                None
                if git.insecure_ignore_host_key
                else self.kube.read_secret_value(build.namespace, ref.name, KNOWN_HOSTS_KEY)
            )
            return GitAuth(
                ssh_key=value,
                known_hosts=known if known is not None else b"",
                insecure_ignore_host_key=git.insecure_ignore_host_key,
            )
        if is_http_url(git.url):
            user = None
            if USERNAME_KEY in keys:
                user = self.kube.read_secret_value(build.namespace, ref.name, USERNAME_KEY)
            return GitAuth(username=user, password=value)
        return GitAuth()

    def _poll_job(self, job: PollJob, build: BuildRef, spec: ImageBuildSpec, auth: GitAuth) -> None:
        """In the job's thread: one ``git ls-remote`` within the source timeout, in a source slot."""
        try:
            with self._source_slots.slot(build.namespace):
                job.commit = current_commit(spec, auth=auth, timeout=self.config.source_timeout)
        except SourceError as e:
            job.error = str(e)
        except Exception as e:  # never leave a build waiting for a job that died
            log.exception("polling the source of %s/%s failed", build.namespace, build.name)
            job.error = f"polling the source failed: {type(e).__name__}"
        finally:
            job.done.set()
            self._wake(build.namespace, build.name)

    def _source_job(self, build: BuildRef) -> SourceJob | None:
        """The job resolving this generation's source, if one was started (a stale one is dropped)."""
        key = (build.namespace, build.name)
        with self._sources_lock:
            job = self._sources.get(key)
            if job is not None and (job.uid, job.generation) != (build.uid, build.generation):
                del self._sources[key]
                job = None
        return job

    def _start_source_job(
        self, build: BuildRef, spec: ImageBuildSpec, auth: GitAuth | reg.Registry
    ) -> SourceJob:
        job = SourceJob(build.uid, build.generation)
        job.thread = threading.Thread(
            target=self._resolve_job,
            args=(job, build, spec, auth),
            name=f"source-{build.namespace}/{build.name}",
            daemon=True,
        )
        with self._sources_lock:
            self._sources[(build.namespace, build.name)] = job
        job.thread.start()
        return job

    def _resolve_job(
        self, job: SourceJob, build: BuildRef, spec: ImageBuildSpec, auth: GitAuth | reg.Registry
    ) -> None:
        """In the job's thread: wait for a slot of the build's namespace (`sourceslots`), resolve, then wake
        the build."""
        try:
            with self._source_slots.slot(build.namespace):
                job.started.set()
                if job.said_queued:  # its status says it waits: a pass says it resolves now
                    self._wake(build.namespace, build.name)
                self._resolve(job, build, spec, auth)
        except Exception as e:  # never leave a build waiting for a job that died
            log.exception("resolving the source of %s/%s failed", build.namespace, build.name)
            job.error = f"resolving the source failed: {type(e).__name__}"
        finally:
            job.done.set()
            self._wake(build.namespace, build.name)

    def _resolve(
        self, job: SourceJob, build: BuildRef, spec: ImageBuildSpec, auth: GitAuth | reg.Registry
    ) -> None:
        """Resolve, retrying other failures while time is left (a timeout is final)."""
        deadline = time.monotonic() + self.config.source_timeout
        git_auth, registry = (auth, None) if isinstance(auth, GitAuth) else (None, auth)
        for attempt in range(1, self.config.source_attempts + 1):
            try:
                job.resolved = resolve(spec, auth=git_auth, registry=registry,
                                       timeout=max(0.1, deadline - time.monotonic()))
                break
            except SourceTimeout as e:
                job.error, job.timed_out = str(e), True
                break
            except SourceError as e:
                job.error = str(e)
                log.warning(
                    "source of %s/%s not resolved (attempt %d): %s",
                    build.namespace,
                    build.name,
                    attempt,
                    job.error,
                    extra=_fields(build.namespace, build.name),
                )
                pause = min(2.0 * attempt, 5.0)
                if attempt == self.config.source_attempts or time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)

    def _wake_all(self, builds: Collection[tuple[str, str]]) -> None:
        """Trigger the passes of ``builds`` (a slot of the farm's cap is theirs now)."""
        for namespace, name in builds:
            self._wake(namespace, name)

    def _wake(self, namespace: str, name: str) -> None:
        """Trigger a pass from another thread (the build's requeue time is the fallback)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def start() -> None:
            task = asyncio.create_task(self.trigger(namespace, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
            loop.call_soon_threadsafe(start)

    def _finish_early(
        self,
        ib: dict[str, Any],
        build: BuildRef,
        status: dict[str, Any],
        reason: str,
        message: str,
        now: datetime,
    ) -> dict[str, Any]:
        new = report.terminal_status(
            generation=build.generation,
            phase=buildphase.FAILED,
            reason=reason,
            message=message,
            old=status,
            now=now,
            run=build.run,
        )
        if (
            runs.run_of(status) == build.generation
            and status.get("phase") == buildphase.FAILED
            and status.get("message") == message
        ):
            return status
        self._write(ib, status, new)
        self._event(ib, "Warning", reason, message)
        return new

    def _supersede(self, build: BuildRef, status: Mapping[str, Any]) -> int:
        """Delete pods of other generations; returns how many were still running."""
        stopped = 0
        for pod in self.kube.list_worker_pods(build.namespace, build.uid):
            obs = observe.observe_pod(pod)
            if obs is None or obs.generation == build.generation or obs.deleting:
                continue
            stopped += 0 if obs.terminated else 1
            self.kube.delete_pod(build.namespace, obs.name)
        return stopped

    def _step(
        self,
        ib: dict[str, Any],
        build: BuildRef,
        spec: ImageBuildSpec,
        plan: PlanView,
        status: dict[str, Any],
        base: dict[str, Any],
        events: list[st.Event],
        now: datetime,
    ) -> float | None:
        """Decide from ``status`` (maybe just planned, unwritten) and write the result over ``base``."""
        listed = self.kube.list_worker_pods(build.namespace, build.uid)
        self._refresh_schedulable(build.uid, listed)
        for p in listed:
            self._note_node(p, False)
        pods = [o for o in (observe.observe_pod(p) for p in listed) if o]
        missing: dict[str, str] = {}
        if status.get("phase") not in buildphase.TERMINAL:
            needs = secretneeds.secret_needs(spec, plan)
            keys = {n.name: self.kube.secret_keys(build.namespace, n.name) for n in needs}
            missing = secretneeds.secret_problems(needs, keys)

        nodes = self.nodes.snapshot() if self.nodes is not None else None

        spot: Spot | None = None  # the farm's answer (`workerqueue`), with what this pass still may start

        def decide() -> st.Decision:
            return st.decide(
                queue=spot,
                build=build,
                spec=spec,
                plan=plan,
                status=status,
                pods=pods,
                missing_secrets=missing,
                now=now,
                backoff_base=self.config.backoff_base,
                early_start=self.early_start_now(),
                nodes=nodes,
                node_lost_after=self.config.node_lost_after,
            )

        d = decide()
        if self.queue.enabled:
            # What it would start without the farm's cap, asked of the queue: the part granted starts now.
            since = str(status.get("startTime") or clock.fmt_time(now))
            wish = Demand(build.namespace, build.name, len(d.create), spec.priority, since)
            spot = self.queue.claim(wish)
            self._claimed.add((build.namespace, build.name))
            if spot.queued:
                d = decide()
        # Pods the API refuses (admission, quota, an invalid field) are marked in the input status and
        # decided again: those groups wait, the build is Stalled, and a freed slot may go to another group.
        tried: set[str] = set()
        started_events: list[st.Event] = []  # of retries created in a round before the last decide's
        recorded: dict[str, tuple[int, str, str, str]] = {}  # group → (attempt, pod, uid, token hash)
        while todo := [sp for sp in d.create if sp.group.id not in tried]:
            tried.update(sp.group.id for sp in todo)
            # Write-ahead (controller.trust): the hash of each new pod's creation token is in status before
            # the pod exists, so that a restart between the create and the UID's write can tell the pod
            # it created from one someone else put there under that name.
            tokens = {sp.group.id: trust.new_token() for sp in todo}
            hashes = {gid: trust.token_hash(t) for gid, t in tokens.items()}
            intent = trust.with_intents(trust.with_created(d.status, recorded), hashes)
            if self._write(ib, base, intent):
                base = intent
            created, rejected = self._start(build, spec, plan, status, todo, now, tokens)
            if spot is not None:  # (a refused pod's slot may go to another of its ready groups)
                spot = replace(spot, granted=max(0, spot.granted - len(created)))
            for sp, p in created:
                meta = p.get("metadata") or {}
                name, uid = str(meta.get("name")), str(meta.get("uid"))
                recorded[sp.group.id] = (sp.attempt, name, uid, hashes[sp.group.id])
            if not rejected:
                break
            status = trust.with_created(
                rejections.note_rejections(status, rejected, now, self.config.backoff_base), recorded
            )
            pods = [*pods, *(o for o in (observe.observe_pod(p) for _, p in created) if o)]
            started_events += [e for e in (st.started_event(s) for s, _ in created) if e]
            d = decide()
        if recorded:
            d.status = trust.with_created(d.status, recorded)
        events = [*events, *started_events]
        for name in d.delete:
            self.kube.delete_pod(build.namespace, name)
        for name in d.force_delete:
            # Lost (controller.nodeloss): no kubelet will confirm its end, so it is removed from the API at
            # once (the scheduler stops counting it); a kubelet that comes back kills what still runs.
            log.warning(
                "force-deleting lost pod %s of %s/%s",
                name,
                build.namespace,
                build.name,
                extra={**_fields(build.namespace, build.name), "pod": name},
            )
            self.kube.delete_pod(build.namespace, name, grace_seconds=0)
        safety = safety_poll_seconds(self.unfinished())
        requeue = None if d.requeue_after is None else min(d.requeue_after, safety)
        hold = self._hold(build, base, d)
        if hold is not None:
            # Only progress changed: write it with the next change, or when the window ends. Its events
            # wait too: they follow from the status diff, so the pass that writes it emits them.
            return hold if requeue is None else min(requeue, hold)
        self._write(ib, base, d.status)
        for ev in [*events, *d.events]:
            self._event(ib, ev.type, ev.reason, ev.message)
        return requeue

    def _hold(self, build: BuildRef, base: Mapping[str, Any], d: st.Decision) -> float | None:
        """Seconds to hold back this pass's status write (None: write now).

        Only a change that reports progress (`urgency.urgent_change`) in a pass that creates and deletes
        nothing is held, for at most ``status_coalesce`` seconds after the first pass that held it. The time
        is scheduling state only: a restarted operator starts a new window, and every pass recomputes the
        status from the pods, so a held change is never lost.
        """
        key = (build.namespace, build.name)
        window = self.config.status_coalesce
        if (
            window <= 0
            or d.create
            or d.delete
            or d.force_delete
            or dict(base) == d.status
            or urgency.urgent_change(base, d.status) is not None
        ):
            self._held.pop(key, None)
            return None
        now = time.monotonic()
        left = self._held.setdefault(key, now) + window - now
        if left <= 0:
            self._held.pop(key, None)
            return None
        return left

    def _start(
        self,
        build: BuildRef,
        spec: ImageBuildSpec,
        plan: PlanView,
        status: Mapping[str, Any],
        starts: list[st.StartPod],
        now: datetime,
        tokens: Mapping[str, str],
    ) -> tuple[list[tuple[st.StartPod, dict[str, Any]]], dict[str, str]]:
        """Create the pods of ``starts``, each with its group's creation token from ``tokens``: (the pods
        created, each with its StartPod; group id → why the API refused its pod,
        `rejections.rejection_text`). A pod that already exists is in neither (not ours: the next pass
        judges it, `trust`)."""
        source_status = status.get("source") or {}
        git = source_status.get("git") or {}
        created_pods: list[tuple[st.StartPod, dict[str, Any]]] = []
        rejected: dict[str, str] = {}
        if spec.source.inline is not None:
            key = (build.uid, build.generation)
            if self._configmaps.get((build.namespace, build.name)) != key:  # after a restart: one
                # AlreadyExists, then remembered
                try:
                    self.kube.create(dockerfile_configmap(build, spec.source.inline))
                except Refused as e:
                    self._log_refused(build, e, [s.group.id for s in starts])
                    text = rejections.rejection_text(e.kind, e.name, e.code, e.reason, e.message)
                    return [], {s.group.id: text for s in starts}
                self._configmaps[(build.namespace, build.name)] = key
            source = ResolvedSource(configmap=configmap_name(build))
        elif spec.source.oci is not None:
            oci = source_status.get("oci") or {}
            ref = parse_oci_ref(spec.source.oci.image)
            source = ResolvedSource(oci_ref=ref.pinned(str(oci["digest"])) if oci.get("digest") else str(ref))
        else:
            assert spec.source.git is not None
            source = ResolvedSource(
                git_url=spec.source.git.url, git_revision=str(git.get("commit") or "HEAD")
            )
        deadline = suspension.build_deadline(status, spec, now)
        remaining = int((deadline - now).total_seconds())  # (not suspended)
        keys, bases = reuse.recorded(status)
        for start in starts:
            pod = worker_pod(
                build=build,
                spec=spec,
                plan=plan,
                group=start.group,
                attempt=start.attempt,
                source=source,
                upstream=start.upstream,
                config=self.config.worker,
                deadline_seconds=max(remaining, 1),
                upstream_attempts=start.upstream_attempts,
                stage_key=keys.get(start.group.target),
                base_images=bases,
                arch=reuse.build_arch(spec.node_selector),
            )
            pod = trust.stamp(pod, tokens[start.group.id])
            try:
                created = self.kube.create(pod)
            except Refused as e:
                self._log_refused(build, e, [start.group.id])
                why = rejections.rejection_text(e.kind, e.name, e.code, e.reason, e.message)
                rejected[start.group.id] = why
                continue
            if created is not None:
                created_pods.append((start, created))
                # This pass decided with the pod as created: its ADDED event changes nothing (no pass),
                # and it is no orphan (no ImageBuild GET to check).
                self.pod_changed(created)
                if self.queue.enabled:
                    self.queue.started((build.namespace, build.name))  # (counted as a pod from now on)
                self._created.add(str((created.get("metadata") or {}).get("uid")))
                self.metrics.pods_created.inc()
                if start.attempt > 1 and not start.restart:
                    self.metrics.retries.inc()
                log.info(
                    "started pod %s for %s/%s group %s (%s)",
                    pod["metadata"]["name"],
                    build.namespace,
                    build.name,
                    start.group.id,
                    ", ".join(start.group.stages),
                    extra={
                        **_fields(build.namespace, build.name),
                        "group": start.group.id,
                        "attempt": start.attempt,
                        "pod": pod["metadata"]["name"],
                    },
                )
        return created_pods, rejected

    def _log_refused(self, build: BuildRef, e: Refused, groups: list[str]) -> None:
        log.warning(
            "%s %s for %s/%s group %s refused by the API (%d %s): %s",
            e.kind,
            e.name,
            build.namespace,
            build.name,
            ", ".join(groups),
            e.code,
            e.reason,
            e.message,
            extra={**_fields(build.namespace, build.name), "group": ", ".join(groups), "code": e.code},
        )

    def _write(self, ib: dict[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        base = dict(ib)
        base["status"] = dict(old)
        written = self.kube.write_status(base, new)
        if isinstance(written, str) and written:
            ib["metadata"]["resourceVersion"] = written  # (guards a second write in the same pass)
        if written:
            meta = ib["metadata"]
            self.metrics.record(f"{meta['namespace']}/{meta['name']}", old, new)
            if new.get("phase") != old.get("phase"):
                log.info(
                    "%s/%s: %s → %s: %s",
                    meta["namespace"],
                    meta["name"],
                    old.get("phase"),
                    new.get("phase"),
                    new.get("message"),
                    extra={
                        **_fields(meta["namespace"], meta["name"]),
                        "phase": new.get("phase"),
                        "generation": new.get("observedGeneration"),
                    },
                )
        return bool(written)

    def _event(self, ib: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.kube.event(ib, type_, reason, message)

    def _after_finish(
        self,
        ib: dict[str, Any],
        build: BuildRef,
        status: dict[str, Any],
        now: datetime,
        *,
        spec: ImageBuildSpec | None = None,
        leaving: bool = False,
    ) -> tuple[dict[str, Any], float | None]:
        """A finished build: delete its worker pods and remove its stage tags from the registry once they
        are due (`stagetags`; ``leaving``: the ImageBuild is about to be deleted, its tags go now). Returns
        the status (with ``stageTags`` once written) and the seconds until something else is due."""
        keep = self.config.keep_failed_seconds
        waits: list[float] = []
        keep_pods = self.config.keep_succeeded_pods_seconds
        pods_in = stagetags.pods_due_in(status, build.generation, keep, keep_pods, now)
        if pods_in is not None and not leaving:
            if pods_in <= 0:
                self._delete_finished_pods(build, spec)
            else:
                waits.append(pods_in)
        tags_in = stagetags.tags_due_in(status, build.generation, keep, now)
        if tags_in is not None and (tags_in <= 0 or leaving):
            try:
                spec = spec or parse_spec(ib.get("spec"))
            except SpecError:
                return status, None
            new = {**status, "stageTags": self._remove_stage_tags(ib, build, spec, status, now)}
            if self._write(ib, status, new):
                status = new
            tags_in = stagetags.tags_due_in(status, build.generation, keep, now)
        if tags_in is not None:
            waits.append(max(0.5, tags_in))
        return status, min(waits) if waits else None

    def _delete_pods(self, namespace: str, uid: str) -> int:
        """Delete the build's worker pods not already being deleted; how many."""
        deleted = 0
        for pod in self.kube.list_worker_pods(namespace, uid):
            meta = pod.get("metadata") or {}
            if not meta.get("deletionTimestamp"):
                self.kube.delete_pod(namespace, str(meta.get("name")))
                deleted += 1
        return deleted

    def _delete_finished_pods(self, build: BuildRef, spec: ImageBuildSpec | None) -> None:
        deleted = self._delete_pods(build.namespace, build.uid)
        if deleted and spec is not None and spec.source.inline is not None:
            self.kube.delete_configmaps(build.namespace, build.uid)
        if deleted:
            log.info("%s/%s finished: deleted its %d worker pod(s)", build.namespace, build.name, deleted,
                     extra=_fields(build.namespace, build.name))

    def _remove_stage_tags(
        self,
        ib: dict[str, Any],
        build: BuildRef,
        spec: ImageBuildSpec,
        status: Mapping[str, Any],
        now: datetime,
        *,
        final: bool = False,
    ) -> dict[str, Any]:
        """Remove this build's stage result tags (`registry.remove_build_tags`): the ``status.stageTags``
        entry saying how it went. Only the build's own tags; a registry refusing deletes is reported (and a
        Warning event), never a failure of the build."""
        repository = spec.stages_repository(build.namespace)
        attempts = stagetags.attempts_so_far(status) + 1
        before = status.get("stageTags") or {}
        earlier = int(before.get("deleted") or 0) if isinstance(before, Mapping) else 0
        where = reg.split_repository(repository)
        if where is None:
            return stagetags.entry(earlier, f"{repository} names no registry host: stage tags kept", now)
        host, path = where
        try:
            client = self._registry_client(build, spec, timeout=5.0)(host)
            done, found, error = reg.remove_build_tags(client, path, lambda tag: is_stage_tag_of(build, tag))
        except reg.RegistryError as e:
            done, found, error = 0, 0, e
        except Exception as e:  # noqa: BLE001 (a clean-up must never make every pass of the build fail)
            log.exception("removing the stage tags of %s/%s failed", build.namespace, build.name)
            done, found, error = 0, 0, reg.RegistryError(f"{type(e).__name__}: {e}", transient=True)
        deleted = earlier + done
        if error is None:
            message = f"deleted {deleted} stage tag(s) of this build from {repository}"
            log.info("%s/%s: %s", build.namespace, build.name, message,
                     extra=_fields(build.namespace, build.name))
            return stagetags.entry(deleted, message, now)
        kept = f"{found - done} of {found}" if found else "its"
        message = f"deleted {deleted} stage tag(s) of this build from {repository}, kept {kept}: {error}"
        if isinstance(error, reg.Unsupported):
            message += " (enable deletion: distribution's REGISTRY_STORAGE_DELETE_ENABLED=true)"
        retry = error.transient and attempts < stagetags.MAX_ATTEMPTS and not final
        log.warning("%s/%s: %s%s", build.namespace, build.name, message,
                    "; trying again later" if retry else "", extra=_fields(build.namespace, build.name))
        if not retry:
            self._event(ib, "Warning", "StageTagsKept", message)
        return stagetags.entry(deleted, message, now, attempts=attempts, retry=retry)

    def cleanup(self, namespace: str, uid: str, last: Mapping[str, Any] | None = None) -> None:
        """Remove every pod and ConfigMap of a deleted ImageBuild (owner references do it too, eventually);
        with its ``last`` state (the DELETED event's object), also the stage tags it pushed and had not
        removed yet (deleted while building, or while a failed build's were kept): one try, no retry."""
        self._delete_pods(namespace, uid)
        self.kube.delete_configmaps(namespace, uid)
        status = (last or {}).get("status") or {}
        done = status.get("stageTags")
        if last is None or "plan" not in status or (isinstance(done, Mapping) and "retryAt" not in done):
            return
        meta = last.get("metadata") or {}
        build = BuildRef(str(meta.get("name")), namespace, uid, runs.run_of(status) or 1)
        try:
            spec = parse_spec(last.get("spec"))
        except SpecError:
            return
        self._remove_stage_tags(dict(last), build, spec, status, _now(), final=True)

    def delete_orphan(self, pod: Mapping[str, Any]) -> bool:
        """A worker pod whose ImageBuild is gone (deleted while the operator was down): delete it."""
        meta = pod.get("metadata") or {}
        owner = next((o for o in meta.get("ownerReferences") or () if o.get("kind") == "ImageBuild"), None)
        if owner is None or meta.get("deletionTimestamp") or str(meta.get("uid")) in self._created:
            return False  # (a pod this process just created had a live owner; the owner reference covers a
            # deletion racing with the create)
        ib = self.kube.get_imagebuild(str(meta.get("namespace")), str(owner.get("name")))
        if ib is not None and ib["metadata"].get("uid") == owner.get("uid"):
            return False
        self.kube.delete_pod(str(meta.get("namespace")), str(meta.get("name")))
        return True
