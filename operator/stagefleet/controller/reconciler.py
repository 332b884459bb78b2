"""One reconcile pass of one ImageBuild: read → decide (pure) → apply. The shell around the pure core.

Every pass starts from the API (the ImageBuild and its pods), never from memory, so a restarted operator
or a missed event changes nothing. Pods are created before the status that records them is written: if
the operator dies in between, the next pass adopts the pods it finds (deterministic names) instead of
starting them again. Passes for one ImageBuild never overlap (one lock per build); events arriving during
a pass make it run once more.

The parts it wires sit beside it, one concern each: `passes` (when passes run), `podbook` (what pod events
told), `sourcejobs` (sources resolved and polled in threads of their own), `writes` (status and Events),
`fanout` (a multi-platform build's pass), `registryclients` and `stagereuse` (registry I/O), `podstarts`
(creating the pods a decision starts), `cleanup`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from stagefleet.controller import (
    buildphase,
    clock,
    history,
    observe,
    platforms,
    rejections,
    report,
    retention,
    reuse,
    runs,
    secretneeds,
    stagereuse,
    tracking,
    trust,
    urgency,
)
from stagefleet.controller import registry as reg
from stagefleet.controller import status as st
from stagefleet.controller.cleanup import Cleaner
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.fanout import FanOut
from stagefleet.controller.kube import Conflict, Kube
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.model import Event, PlanView, plan_dockerfile
from stagefleet.controller.nodewatch import NodeWatch
from stagefleet.controller.passes import Passes, safety_poll_seconds
from stagefleet.controller.podbook import PodBook
from stagefleet.controller.podspec import (
    BuildRef,
    stage_result_refs,
)
from stagefleet.controller.podstarts import PodStarter
from stagefleet.controller.policy import REASON as POLICY_REASON
from stagefleet.controller.policy import violations
from stagefleet.controller.registryclients import RegistryClients
from stagefleet.controller.source import GitAuth, resolve
from stagefleet.controller.sourcejobs import SourceJobs
from stagefleet.controller.spec import ImageBuildSpec, SpecError, parse_spec
from stagefleet.controller.workerqueue import Demand, Spot, WorkerQueue
from stagefleet.controller.writes import StatusWriter, log_fields
from stagefleet.ocisource import parse_ref as parse_oci_ref

log = logging.getLogger("stagefleet.operator")


def _now() -> datetime:
    return datetime.now(UTC)


def sooner(a: float | None, b: float | None) -> float | None:
    """The earlier of two "look again in" times; None is never."""
    return b if a is None else a if b is None else min(a, b)


@dataclass
class Planned:
    """What planning a new generation produced: the planned status (None: the build stopped or waits),
    the status the API server holds now, the ImageBuild as last read, and events to emit once written;
    ``requeue``: when to look again while it waits."""

    status: dict[str, Any] | None
    base: dict[str, Any]
    ib: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    requeue: float = 5.0


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
        self.passes = Passes(self.reconcile_safely, self._gone, self._idle, threads=threads)
        self.podbook = PodBook()
        self.writer = StatusWriter(kube, metrics)
        self.registry_clients = RegistryClients(kube, config.worker.insecure_registries)
        self.sources = SourceJobs(kube, config, self.writer, self.passes.wake)
        self.fanout = FanOut(kube, config, self.writer, self.registry_clients)
        self.cleaner = Cleaner(kube, config, self.writer, self.registry_clients)
        self._held: dict[tuple[str, str], float] = {}  # build → since when a progress write is held back
        self.nodes: NodeWatch | None = None  # started with the operator (watch_nodes)
        self._swept_at = time.monotonic()  # the last memory sweep (tracking)
        # The farm's worker-pod cap (`workerqueue`): the pods that run, what each build waits to start.
        self.queue = WorkerQueue(config.max_worker_pods)
        self._claimed: set[tuple[str, str]] = set()  # builds whose pass told the queue what it wants
        self.starter = PodStarter(kube, config, metrics, self.queue, self.podbook, self.pod_changed)

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
        for ns, name in self.podbook.builds_on(node):
            self.passes.start(ns, name)

    # --- scheduling (async, in kopf's loop) --------------------------------------------------------------

    async def trigger(self, namespace: str, name: str) -> None:
        """Reconcile now; if a pass for this build is running, make it run once more afterwards."""
        await self.passes.trigger(namespace, name)

    def pod_changed(self, pod: Mapping[str, Any], deleted: bool = False) -> bool:
        """Whether a worker pod event can change a decision (phase, container state, deletion, node).

        The kubelet writes pod status many times per pod; most writes change nothing the operator reads.
        """
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        self.podbook.note_schedulable(pod, deleted)
        self.podbook.note_node(pod, deleted)
        if self.queue.enabled:
            running = not deleted and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            self.passes.wake_all(self.queue.pod_seen(uid, str(meta.get("namespace") or "default"), running))
        if deleted:
            self._drop_pod(uid)
            return True
        return self.podbook.remember(pod)

    def early_start_now(self) -> bool:
        """Early start is on and the scheduler has room: no worker pod is waiting for a node, and no ready
        group waits for a slot of the farm's cap (`workerqueue`)."""
        return self.config.early_start and not self.podbook.unschedulable and not self.queue.backlog()

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
                self.passes.spawn(self._sweep_safely())
            self.passes.report_slow(now)
            self.passes.start_due(now)
            await asyncio.sleep(interval)

    def unfinished(self) -> int:
        """Builds with a pass still due that have not ended (`Passes.unfinished`)."""
        return self.passes.unfinished()

    def forget(self, namespace: str, name: str, uid: str | None = None, *, in_pass: bool = False) -> None:
        """The build is gone (DELETED event, a pass's GET found nothing, or the sweep): drop everything.
        ``in_pass``: called by the trigger that holds the build's lock."""
        key = (namespace, name)
        self._drop(key, in_pass=in_pass)
        self.sources.forget(key)
        self.metrics.forget(f"{namespace}/{name}")
        correlator = getattr(self.kube, "events", None)
        if uid is not None and correlator is not None:
            correlator.forget_object(uid)

    def _gone(self, namespace: str, name: str) -> None:
        """A pass found the build gone (its trigger calls this, holding the build's lock)."""
        self.forget(namespace, name, in_pass=True)

    def _idle(self, key: tuple[str, str]) -> None:
        """No pass is due for the build (its trigger calls this, holding the build's lock)."""
        self._drop(key, in_pass=True, pods=False)

    def _drop(self, key: tuple[str, str], *, in_pass: bool = False, pods: bool = True) -> None:
        """Drop a build's scheduling state and (``pods``) its pods' entries: an event brings back what is
        needed, every pass starts from the API anyway. ``in_pass``: called by the trigger holding the
        build's lock, which releases it right after (no await in between)."""
        if not self.passes.drop(key, in_pass=in_pass):
            return  # a pass runs: when it ends, its trigger drops what is left (gone, or nothing due)
        self._held.pop(key, None)
        self.starter.configmaps.pop(key, None)
        if not pods:
            return
        for uid in self.podbook.pods_of(key):
            self._drop_pod(uid)

    def _drop_pod(self, uid: str) -> None:
        if self.queue.enabled:
            self.passes.wake_all(self.queue.pod_seen(uid, "", False))
        self.podbook.drop(uid)

    def sizes(self) -> dict[str, int]:
        """Entries per per-build and per-pod map (metric stagefleet_operator_tracked_entries)."""
        correlator = getattr(self.kube, "events", None)
        return {
            "locks": len(self.passes.locks),
            "dirty": len(self.passes.dirty),
            "due": len(self.passes.due),
            "held": len(self._held),
            "ended": len(self.passes.ended),
            "configmaps": len(self.starter.configmaps),
            "sources": len(self.sources.jobs),
            "polls": len(self.sources.polls),
            **self.podbook.sizes(),  # pod_states, created, unschedulable, pod_nodes, pod_builds
            "metrics": len(self.metrics.build_keys()),
            "events": len(correlator) if correlator is not None else 0,
            "tasks": len(self.passes.tasks),
            **self.queue.sizes(),
        }

    def known(self) -> tuple[set[tuple[str, str]], dict[str, tuple[str, str]]]:
        """The builds and pods (uid → build) with an entry anywhere in memory: what a sweep checks."""
        passes = self.passes
        builds = set(passes.locks) | set(passes.dirty) | set(passes.due) | set(self._held) | set(passes.ended)
        builds |= set(self.starter.configmaps) | self.sources.jobs.keys() | self.sources.polls.keys()
        for key in self.metrics.build_keys():
            ns, _, name = key.partition("/")
            builds.add((ns, name))
        return builds, self.podbook.known()

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
            if self.passes.busy((ns, name)):
                continue
            log.info("%s/%s is gone (its deletion was not seen): forgotten", ns, name,
                     extra=log_fields(ns, name))
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
        me = self.passes.begin((namespace, name), started)
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
                "reconcile of %s/%s failed; retrying soon", namespace, name, extra=log_fields(namespace, name)
            )
            return 5.0
        finally:
            self.passes.end(me)
            if (namespace, name) in self._claimed:  # its reserved slots hold pods of its own now
                self._claimed.discard((namespace, name))
                self.passes.wake_all(self.queue.release((namespace, name)))
            elif self.queue.enabled:  # (planning, finished, gone: it waits for no slot)
                self.passes.wake_all(self.queue.forget((namespace, name)))
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)

    def reconcile(self, namespace: str, name: str) -> float | None:
        """One pass; returns when to look again (None: only on the next event)."""
        ib = self.kube.get_imagebuild(namespace, name)
        if ib is None:
            self.passes.vanished.add((namespace, name))  # forgotten when the pass ends (`trigger`)
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
            self.passes.ended.add((namespace, name))
        else:
            self.passes.ended.discard((namespace, name))
        # (A platform's build goes with its parent, never by the operator's default TTL before it.)
        default_ttl = 0 if platforms.is_child(meta) else self.config.default_ttl_after_finished
        ttl = retention.ttl_of(ib.get("spec"), default_ttl)
        expires = retention.expires_in(status, build.generation, ttl, now)
        if expires is not None and expires <= 0:
            self.cleaner.after_finish(ib, build, status, now, leaving=True)  # its stage tags go with it
            log.info("%s/%s finished %s ago: deleted (ttlSecondsAfterFinished %s)", namespace, name,
                     status.get("completionTime"), ttl, extra=log_fields(namespace, name))
            self.kube.delete_imagebuild(namespace, name, build.uid)
            return None
        if current_gen and status.get("phase") in buildphase.TERMINAL and "plan" not in status:
            # Ended before planning (bad spec, source, Dockerfile): nothing runs. A spec edit that keeps the
            # run (spec.suspend) is only observed.
            if status.get("observedGeneration") != run.generation:
                stamped = runs.stamp(status, run)
                self.writer.write(ib, status, stamped)
                status = stamped
            again = self.sources.retry(ib, build, status, now)
            if not isinstance(again, tuple):
                return sooner(again, expires)
            status, build = again  # its source was unavailable: a new run tries again
            current_gen = False

        finished = current_gen and status.get("phase") in buildphase.TERMINAL
        try:
            spec = parse_spec(ib.get("spec"))
        except SpecError as e:
            self._supersede(build, status)
            self.writer.finish_early(ib, build, status, "InvalidSpec", str(e), now)
            return None
        if len(spec.platforms) > 1:  # one child ImageBuild per platform, joined into an index
            again = None if finished else self.fanout.run(ib, build, spec, status, now)
            return sooner(again, expires)
        if finished:  # its pods and stage tags, when due
            status, cleanup_in = self.cleaner.after_finish(ib, build, status, now, spec=spec)
            expires = sooner(expires, cleanup_in)
        if finished and spec.source.git is not None:
            polled = self.sources.poll(ib, build, spec, status, now)
            if isinstance(polled, tuple):  # the revision moved: a new run of the same spec
                status, build = polled
                current_gen = finished = False
            else:
                expires = sooner(expires, polled)

        base = status  # what the API server holds: the base of the next status write
        events: list[Event] = []
        if not current_gen or "plan" not in status:
            refused = violations(spec, self.config.policy, self.config.worker.builder_image, build.namespace)
            if refused:  # checked before anything is resolved or started on the spec's behalf
                self._supersede(build, status)
                self.writer.finish_early(ib, build, status, POLICY_REASON, "; ".join(refused), now)
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
            self.passes.ended.add((namespace, name))
        if again is None and not finished:
            return 0.5  # it just finished (its terminal status is written): the next pass cleans up after it
        if expires is not None:
            return sooner(again, expires)
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
            self.writer.event(ib, "Normal", "RunStarted", f"{why}: run {build.generation} starts")
        if superseded:
            self.writer.event(
                ib,
                "Normal",
                "Superseded",
                f"{why or 'spec changed'}: stopped {superseded} pod(s) of the old build",
            )
        if spec.source.inline is not None:
            resolved = resolve(spec)  # nothing to fetch
        else:
            job = self.sources.job(build)
            if job is None:
                # The git credentials first: while they are missing the build waits (Stalled), writing
                # status only once. An OCI source is read with the push Secret's registry credentials.
                auth: GitAuth | reg.Registry | dict[str, Any]
                if spec.source.oci is not None:
                    host = parse_oci_ref(spec.source.oci.image).host
                    auth = self.registry_clients.for_build(build, spec)(host)
                else:
                    auth = self.sources.git_auth(ib, build, spec, status, now)
                if isinstance(auth, dict):  # the Stalled status it wrote
                    return Planned(None, auth, ib)
                job = self.sources.start(build, spec, auth)
            if not job.done.is_set():
                planning = report.progress_status(
                    generation=build.generation,
                    run=build.run,
                    phase=buildphase.PLANNING,
                    reason="Planning",
                    message=self.sources.waiting(build, spec, job),
                    old=status,
                    now=now,
                )
                self.writer.write(ib, status, planning)
                # the job triggers the next pass when it ends; this is only a safety net
                return Planned(None, planning, ib, requeue=self.config.source_timeout + 5.0)
            self.sources.take(build, job)
            if job.resolved is None:
                reason = "SourceTimeout" if job.timed_out else "SourceUnavailable"
                failed = self.writer.finish_early(ib, build, status, reason, job.error or "unavailable", now)
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
            failed = self.writer.finish_early(ib, build, planning, "DockerfileError", str(e), now)
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
        note = Event(
            "Normal", "Planned", f"{new['message']}; critical path {' → '.join(plan.critical_path)}"
        )
        events = [note]
        found = stagereuse.find(self.registry_clients, build, spec, plan, resolved)
        if found is not None:
            new = reuse.mark(new, plan, found, clock.fmt_time(now))
            if found.found:
                stages = sum(len(plan.group(g).stages) for g in found.found)
                events.append(Event(
                    "Normal", "StagesReused",
                    f"{stages} stage(s) of {len(found.found)} group(s) unchanged: their stored results are "
                    f"used, no pod started ({', '.join(sorted(found.found, key=lambda g: int(g[1:])))})",
                ))
        return Planned(new, planning, ib, events)

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
        events: list[Event],
        now: datetime,
    ) -> float | None:
        """Decide from ``status`` (maybe just planned, unwritten) and write the result over ``base``."""
        listed = self.kube.list_worker_pods(build.namespace, build.uid)
        self.podbook.refresh_schedulable(build.uid, listed)
        for p in listed:
            self.podbook.note_node(p, False)
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
        started_events: list[Event] = []  # of retries created in a round before the last decide's
        recorded: dict[str, tuple[int, str, str, str]] = {}  # group → (attempt, pod, uid, token hash)
        while todo := [sp for sp in d.create if sp.group.id not in tried]:
            tried.update(sp.group.id for sp in todo)
            # Write-ahead (controller.trust): the hash of each new pod's creation token is in status before
            # the pod exists, so that a restart between the create and the UID's write can tell the pod
            # it created from one someone else put there under that name.
            tokens = {sp.group.id: trust.new_token() for sp in todo}
            hashes = {gid: trust.token_hash(t) for gid, t in tokens.items()}
            intent = trust.with_intents(trust.with_created(d.status, recorded), hashes)
            if self.writer.write(ib, base, intent):
                base = intent
            created, rejected = self.starter.start(build, spec, plan, status, todo, now, tokens)
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
                extra={**log_fields(build.namespace, build.name), "pod": name},
            )
            self.kube.delete_pod(build.namespace, name, grace_seconds=0)
        safety = safety_poll_seconds(self.unfinished())
        requeue = None if d.requeue_after is None else min(d.requeue_after, safety)
        hold = self._hold(build, base, d)
        if hold is not None:
            # Only progress changed: write it with the next change, or when the window ends. Its events
            # wait too: they follow from the status diff, so the pass that writes it emits them.
            return sooner(requeue, hold)
        self.writer.write(ib, base, d.status)
        for ev in [*events, *d.events]:
            self.writer.event(ib, ev.type, ev.reason, ev.message)
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

    # --- clean-up (`cleanup`) ----------------------------------------------------------------------------

    def cleanup(self, namespace: str, uid: str, last: Mapping[str, Any] | None = None) -> None:
        """Remove every pod and ConfigMap of a deleted ImageBuild, and with its ``last`` state (the DELETED
        event's object) the stage tags it left (`Cleaner.after_deletion`)."""
        self.cleaner.after_deletion(namespace, uid, last, _now())

    def delete_orphan(self, pod: Mapping[str, Any]) -> bool:
        """A worker pod whose ImageBuild is gone (deleted while the operator was down): delete it."""
        return self.cleaner.delete_orphan(pod, self.podbook.created)
