"""Pure: what the ImageBuild's status should be and what to do next.

Input: the spec, the recorded plan and status, the worker pods that exist, the Secrets that are missing and
the time. Output (`Decision`): the new status, pods to create and delete, events. No I/O, so every
transition — a pod vanishing, an operator restart between a pod create and the status write, a retry after
backoff — is a unit test. State lives only in status and pods; calling `decide` twice on the same input
gives the same answer, which is what makes the operator restart-safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stagefleet.buildstate import outcome, ready, retries
from stagefleet.buildstate.phases import ACTIVE as S_ACTIVE
from stagefleet.buildstate.phases import DONE as S_DONE
from stagefleet.buildstate.phases import FAILED as S_FAILED
from stagefleet.buildstate.phases import PENDING as S_PENDING
from stagefleet.buildstate.phases import RETRYING as S_RETRYING
from stagefleet.buildstate.phases import RUNNING as S_RUNNING
from stagefleet.buildstate.phases import SUCCEEDED as S_SUCCEEDED
from stagefleet.buildstate.phases import WAITING as S_WAITING
from stagefleet.controller import fields, nodeloss, polling, trust, verdict
from stagefleet.controller.buildphase import (
    BUILDING,
    CANCELLED,
    FAILED,
    SUCCEEDED,
    SUSPENDED,
    TERMINAL,
)
from stagefleet.controller.clock import fmt_time, parse_time
from stagefleet.controller.groupstate import GroupState, recorded_states
from stagefleet.controller.model import Event, GroupPlan, PlanView
from stagefleet.controller.nodeloss import LostPod, NodeReadiness
from stagefleet.controller.observe import STUCK_REASONS, PodObservation, WorkerResult
from stagefleet.controller.podspec import (
    BuildRef,
    pod_name,
    stage_result_refs,
)
from stagefleet.controller.report import (
    SUMMARY_STAGES,
    conditions,
    stage_entries,
    summarise_stages,
    summary_fields,
)
from stagefleet.controller.runs import stamp
from stagefleet.controller.spec import ImageBuildSpec
from stagefleet.controller.suspension import Suspension, build_deadline, pause_stopped, suspension
from stagefleet.controller.workerqueue import Spot

# Fields of a generation's status that passes carry over as planned (`reuse.mark` writes the last two).
KEPT_FIELDS = (
    "source",
    "plan",
    "startTime",
    "observedGeneration",
    "run",
    "rebuild",
    "baseImages",
    "reuse",
    *polling.CARRIED,
)

# A pod refused at its node's admission (`observe.ADMISSION_REASONS`) is retried at once on whatever node
# the scheduler picks, without using an attempt, up to ADMISSION_RETRIES times in a row, after 1, 2, 4, 8 s.
ADMISSION_RETRIES = 5
ADMISSION_BACKOFF_CAP = 8.0


@dataclass(frozen=True)
class StartPod:
    """A pod to create. ``upstream`` holds the consumed stages whose groups succeeded (stage → (image ref,
    digest)); a consumed stage missing from it belongs to a group still running: the pod starts early and
    its worker waits for the result tag of that group's current attempt (``upstream_attempts``: group id →
    attempt; ``--upstream-wait``)."""

    group: GroupPlan
    attempt: int
    upstream: Mapping[str, tuple[str, str]]
    upstream_attempts: Mapping[str, int] = field(default_factory=dict)
    restart: bool = False  # replaces a pod restarted for a superseded upstream attempt (not a retry)

    @property
    def waits_for(self) -> tuple[str, ...]:
        """The consumed stages this pod's worker has to wait for."""
        return tuple(stage for stage, _gid in self.group.consumes if stage not in self.upstream)


@dataclass
class Decision:
    status: dict[str, Any]
    create: list[StartPod] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    # Lost pods (`nodeloss`): deleted with gracePeriodSeconds=0, since no kubelet will confirm their end.
    force_delete: list[str] = field(default_factory=list)


def _classify_failure(pod: PodObservation) -> tuple[bool, str]:
    """(is_build_error, message) for a Failed pod."""
    r = pod.result
    code = pod.exit_code
    if retries.is_build_error(code):
        if r and r.error_message:
            where = f"stage {r.error_stage}" if r.error_stage else "build"
            line = f" (Dockerfile line {r.error_line})" if r.error_line else ""
            return True, f"{where}{line}: {r.error_message}"
        return True, f"{retries.NO_RETRY[code or 0]} (worker exit code {code})"
    detail = (r.error_message if r and r.error_message else None) or pod.message or pod.reason or "failed"
    what = f"worker exit code {code}" if code is not None else (pod.reason or "pod failed")
    return False, f"{what}: {detail}" if detail not in what else what


def decide(
    *,
    build: BuildRef,
    spec: ImageBuildSpec,
    plan: PlanView,
    status: Mapping[str, Any],
    pods: Sequence[PodObservation],
    missing_secrets: Mapping[str, str],
    now: datetime,
    backoff_base: float = 5.0,
    stuck_grace: float = 120.0,
    early_start: bool = False,
    nodes: Mapping[str, NodeReadiness] | None = None,
    node_lost_after: float = nodeloss.DEFAULT_GRACE_SECONDS,
    queue: Spot | None = None,
) -> Decision:
    """One reconcile step of a planned build (status.plan of this generation exists).

    ``queue``: the farm's answer (`workerqueue`) to the pods an unlimited pass would start: at most
    ``queue.granted`` pods start, the other ready groups wait with its queue position as their message.

    ``early_start``: with slots to spare, also start the pods of the next wave while their upstream groups
    run (one wave ahead, see `_early_groups`), so pod start, worker start and base-image pulls overlap the
    upstream build instead of following it; their workers wait for the upstream results in the registry.

    ``nodes``: the Ready condition of the cluster's nodes (None: Nodes cannot be read). A pod whose node
    has not been Ready for ``node_lost_after`` seconds, or that is stuck Terminating that long, is lost
    (`nodeloss`): force-deleted, and its group retried elsewhere as an infrastructure failure. Results are
    per attempt (each attempt pushes its own tag), so a lost attempt that still runs cannot overwrite its
    successor's; a pod that waits for (or consumed) the result of an upstream attempt that was superseded
    is restarted against the new attempt, not counting against spec.retries.
    """
    generation = build.generation
    old_conditions: Sequence[Mapping[str, Any]] = status.get("conditions") or ()
    lost = nodeloss.lost_pods(pods, nodes, now, node_lost_after)
    delete = sorted(p.name for p in pods if p.generation != generation and not p.deleting)
    current = [p for p in pods if p.generation == generation]
    old_entries = {str(e.get("name")): e for e in status.get("stages") or () if isinstance(e, Mapping)}
    phase = str(status.get("phase") or BUILDING)
    events: list[Event] = []

    if phase in TERMINAL:
        # Nothing more to build; only make sure no pod of ours still runs (e.g. after a restart).
        delete += sorted(p.name for p in current if not p.terminated and not p.deleting)
        return Decision(
            status=stamp(status, build.run) if build.run else dict(status),
            delete=[n for n in delete if n not in lost],
            force_delete=sorted(lost),
            requeue_after=nodeloss.next_loss_in(pods, nodes, now, node_lost_after),
        )

    states = recorded_states(plan, old_entries)
    settled = [gid for gid, gs in states.items() if gs.phase == S_SUCCEEDED]
    current = _trusted_pods(states, current, delete, events)
    by_group: dict[str, list[PodObservation]] = {}
    for p in current:
        by_group.setdefault(p.group, []).append(p)

    pause = suspension(status, spec.suspend, now)
    deadline = build_deadline(status, spec, now, pause)
    if any(p.terminated and p.reason == "DeadlineExceeded" for p in current):
        deadline = min(deadline, now)  # a pod's activeDeadlineSeconds is the build's remaining timeout

    pc = _PassContext(spec, now, backoff_base, stuck_grace, lost, delete, events)
    # Upstream groups before the groups that consume them (a lower wave), so that a group's check of the
    # upstream attempts its pod waited for sees those groups as this pass leaves them.
    for g in sorted(plan.groups, key=lambda g: g.wave):
        gs = states[g.id]
        gpods = sorted(by_group.get(g.id, ()), key=lambda p: p.attempt)
        before = gs.phase
        _observe_group(g, gs, gpods[-1] if gpods else None, states, pc)
        if gs.phase != before:
            events.extend(_group_events(g, gs, before))

    # The first group (by wave) that failed fails the build: (group, message, failure detail).
    by_wave = [g.id for g in sorted(plan.groups, key=lambda g: g.wave)]
    standing = outcome.outcome(by_wave, {gid: gs.phase for gid, gs in states.items()})
    build_failure: verdict.Failure | None = None
    if standing.failed_group is not None:
        fs = states[standing.failed_group]
        build_failure = (standing.failed_group, fs.message or "failed", fs.failure or {})

    delete += _superseded(current, states, lost)

    stalled_msg = ""
    if missing_secrets:
        stalled_msg = "waiting for " + "; ".join(missing_secrets[k] for k in sorted(missing_secrets))

    create: list[StartPod] = []
    if build_failure is None and now < deadline and not spec.suspend and not missing_secrets:
        create = _start_groups(build, spec, plan, states, now, early_start, queue, events)

    early = _started_early(plan, states)

    rejected_msg, quota_msg = verdict.refusals(plan, states)
    going = verdict.Going(early, queue, stalled_msg, rejected_msg, quota_msg, old_conditions)
    new_phase, reason, message = verdict.verdict(build, spec, plan, states, standing, build_failure, deadline,
                                                  now, going, events)
    final = states[plan.final_group]

    if new_phase in (FAILED, CANCELLED):
        delete += sorted(p.name for p in current if not p.terminated and not p.deleting)
        create = []
    delete = [n for n in delete if n not in lost]

    stages = stage_entries(plan, states, old_entries)
    # The run's number is `generation`; observedGeneration is the spec's (a suspend-only edit keeps the run).
    recorded = fields.integer(status.get("observedGeneration"))
    observed = build.run.generation if build.run else (recorded or generation)
    new_status: dict[str, Any] = {
        k: v for k, v in status.items() if k in KEPT_FIELDS
    }
    new_status.update(
        {
            "phase": new_phase,
            "observedGeneration": observed,
            "message": message,
            "stages": stages,
            "startTime": status.get("startTime") or fmt_time(now),
            "conditions": conditions(
                new_phase,
                reason,
                message,
                observed,
                old_conditions,
                now,
                stalled=bool(stalled_msg or rejected_msg) and new_phase not in TERMINAL and not spec.suspend,
            ),
        }
    )
    if build.run:
        new_status.update(build.run.fields())
    if queue is not None and queue.queued and new_phase not in TERMINAL and not spec.suspend:
        new_status["queue"] = queue.status()
    events += _pause_fields(new_status, pause, new_phase not in TERMINAL, delete, current)
    _outcome_fields(new_status, new_phase, spec, final.digest, build_failure, now)
    summary_fields(new_status, stages)
    if len(stages) > SUMMARY_STAGES:
        summarise_stages(
            new_status,
            stages,
            plan,
            settled,
            terminal=new_phase in TERMINAL,
            image_of=stage_result_refs(spec, build),
        )

    if stalled_msg and not str(status.get("message") or "").startswith("waiting for"):
        events.append(Event("Warning", "SecretNotFound", stalled_msg))

    requeue: float | None = None
    if new_phase not in TERMINAL:
        loss_in = nodeloss.next_loss_in(pods, nodes, now, node_lost_after)
        paused = pause.since is not None
        requeue = _requeue_after(states, now, None if paused else deadline, loss_in, bool(stalled_msg))
    return Decision(
        status=new_status,
        create=create,
        delete=sorted(set(delete)),
        events=events,
        requeue_after=requeue,
        force_delete=sorted(lost),
    )


def _started_early(plan: PlanView, states: Mapping[str, GroupState]) -> list[str]:
    """The active groups whose workers wait for an upstream result; their message says for which."""
    early = []
    for g in plan.groups:
        gs = states[g.id]
        pending = [stage for stage, pg in g.consumes if states[pg].phase != S_SUCCEEDED]
        if gs.phase in S_ACTIVE and pending:
            gs.message = gs.message or f"started early: waits for {', '.join(pending)}"
            early.append(g.id)
    return early


def _pause_fields(new_status: dict[str, Any], pause: Suspension, unfinished: bool, delete: Sequence[str],
                  current: Sequence[PodObservation]) -> list[Event]:
    """`suspendedAt`/`suspendedSeconds`, and the Event of a suspension that begins or ends this pass."""
    new_status.pop("suspendedAt", None)
    new_status.pop("suspendedSeconds", None)
    if unfinished and pause.since is not None:
        new_status["suspendedAt"] = fmt_time(pause.since)
    if pause.seconds:
        new_status["suspendedSeconds"] = round(pause.seconds, 3)
    if unfinished and pause.began:
        stopped = pause_stopped(delete, current)
        return [Event("Normal", SUSPENDED, f"spec.suspend: no pod starts; stopped {stopped} pod(s)")]
    if unfinished and pause.ended:
        return [Event("Normal", "Resumed", "spec.suspend is false: the run goes on")]
    return []


def _outcome_fields(new_status: dict[str, Any], phase: str, spec: ImageBuildSpec, digest: str | None,
                    failure: verdict.Failure | None, now: datetime) -> None:
    """What an ended run records: when, the image it built (and `lastSucceeded`), or its failure."""
    if phase in TERMINAL:
        new_status["completionTime"] = fmt_time(now)
    if phase == SUCCEEDED:
        new_status["image"] = {
            "name": spec.output.image,
            "digest": digest,
            "short": (digest or "")[:19],  # sha256: and 12 hex digits, for the printer column
            "tags": list(spec.output.refs),
        }
        last = polling.last_succeeded(new_status)
        if last is not None:
            new_status["lastSucceeded"] = last  # kept by the next runs (a Deployment can follow it)
    if failure is not None:
        gid, msg, detail = failure
        new_status["failure"] = {"group": gid, **detail, "message": msg}


def _superseded(current: Sequence[PodObservation], states: Mapping[str, GroupState],
                lost: Mapping[str, LostPod]) -> list[str]:
    """Pods of an attempt that is no longer the group's (a restarted waiter, a pod left over from a lost
    status write): their results are never used; stop them."""
    out = []
    for p in current:
        ps = states.get(p.group)
        if ps is None or p.terminated or p.deleting or p.name in lost:
            continue
        if p.attempt < ps.attempts or (p.attempt == ps.attempts and ps.phase == S_WAITING and ps.attempts):
            out.append(p.name)
    return out


def _start_groups(
    build: BuildRef,
    spec: ImageBuildSpec,
    plan: PlanView,
    states: Mapping[str, GroupState],
    now: datetime,
    early_start: bool,
    queue: Spot | None,
    events: list[Event],
) -> list[StartPod]:
    """The pods to create now, as the core (`ready.to_start`) picks the groups, within spec.maxParallelPods
    and the farm's grant; each picked group's state moves to its next attempt. Ready groups left without a
    slot of the farm say their place in its queue."""
    active = sum(1 for s in states.values() if s.phase in S_ACTIVE)
    slots = spec.max_parallel_pods - active
    if queue is not None:
        slots = min(slots, queue.granted)
    phases = {gid: gs.phase for gid, gs in states.items()}
    due = {gid for gid, gs in states.items() if _due(gs, now)}
    starts, left = ready.to_start(plan.groups, phases, due, slots, early_start=early_start)
    create: list[StartPod] = []
    for g in starts:
        gs = states[g.id]
        upstream = {
            stage: (states[pg].image or "", states[pg].digest or "")
            for stage, pg in g.consumes
            if states[pg].phase == S_SUCCEEDED
        }
        waited = {pg: states[pg].attempts for _, pg in g.consumes if states[pg].phase != S_SUCCEEDED}
        restart = gs.phase == S_WAITING and gs.attempts > 0
        gs.attempts += 1
        gs.phase, gs.retry_at, gs.message, gs.rejections = S_PENDING, None, None, 0
        gs.start, gs.completion, gs.node = None, None, None
        gs.pod_uid, gs.pod_token = None, None  # (the reconciler records them around the create)
        create.append(StartPod(g, gs.attempts, upstream, waited, restart))
        gs.pod = pod_name(build, g.id, gs.attempts)
        started = started_event(create[-1])
        if started is not None:
            events.append(started)
    if queue is not None and queue.queued:
        for g in left:
            states[g.id].message = queue.say(build.namespace)
    return create


def _requeue_after(
    states: Mapping[str, GroupState],
    now: datetime,
    deadline: datetime | None,
    loss_in: float | None,
    stalled: bool,
) -> float | None:
    """When the next pass is due without an event: the first retry or refused create that comes due, the
    deadline (None while suspended), a pod's node counting as lost; every 5 s while Secrets are missing."""
    waits = [
        (parse_time(s.retry_at) or now) - now
        for s in states.values()
        if s.phase == S_RETRYING or (s.phase == S_WAITING and s.rejections)
    ]
    if deadline is not None:
        waits.append(deadline - now)
    if loss_in is not None:
        waits.append(timedelta(seconds=loss_in))
    requeue = max(0.5, min(w.total_seconds() for w in waits)) if waits else None
    if stalled:
        requeue = min(requeue, 5.0) if requeue is not None else 5.0
    return requeue


@dataclass
class _PassContext:
    """What every group's judgement in one `decide` pass reads (its inputs) and adds to (pods to delete,
    events)."""

    spec: ImageBuildSpec
    now: datetime
    backoff_base: float
    stuck_grace: float
    lost: Mapping[str, LostPod]
    delete: list[str]
    events: list[Event]


def _observe_group(
    g: GroupPlan,
    gs: GroupState,
    latest: PodObservation | None,
    states: Mapping[str, GroupState],
    pc: _PassContext,
) -> None:
    """Bring a group's state up to date with its newest pod (adopted, running, stuck, lost, done or
    failed), or with that pod's absence."""
    if gs.phase in S_DONE:
        if gs.phase == S_FAILED and gs.failure is None:
            gs.failure = {"group": g.id, "message": gs.message or ""}
        return
    if (
        gs.phase in S_ACTIVE
        and gs.attempts > 0
        and gs.pod_uid is None
        and (latest is None or latest.attempt < gs.attempts)
    ):
        # Its pod was never created (the operator stopped after recording the attempt, or the create
        # met a pod of that name it did not make): the attempt is started again, not counted as used.
        gs.attempts -= 1
        gs.phase, gs.pod, gs.pod_token, gs.node, gs.start = S_WAITING, None, None, None, None
    # Restarted (its pod waited for a superseded upstream attempt): that pod is being removed and no
    # longer speaks for the group; the next pod is the next attempt.
    restarting = gs.phase == S_WAITING and gs.attempts > 0
    judged = gs.phase in (S_RETRYING, S_FAILED) and latest is not None and latest.attempt == gs.attempts
    if gs.rejections and (latest is None or latest.attempt <= gs.attempts):
        pass  # the API refused its next pod (note_rejections): it waits for retryAt, as recorded
    elif latest is not None and (
        latest.attempt > gs.attempts or (latest.attempt == gs.attempts and not restarting)
    ):
        # Adopt the newest pod: it may have been created just before a restart lost the status write.
        gs.rejections = 0
        gs.attempts = latest.attempt
        gs.pod, gs.node = latest.name, latest.node or gs.node
        gs.start = latest.started or gs.start
        stuck_for = (pc.now - (parse_time(latest.created) or pc.now)).total_seconds()
        loss = pc.lost.get(latest.name)
        if loss is not None:
            # Its node stopped reporting (or it never finishes terminating): whatever its containers
            # still do, the pod is given up (force-deleted) and the group retried elsewhere.
            if not judged:
                gs.completion = fmt_time(loss.at)
                _fail_or_retry(
                    g, gs, latest, False, f"{loss.reason}: {loss.message}", loss.at, pc.spec, pc.backoff_base
                )
        elif not latest.terminated and latest.deleting and gs.phase in (S_RETRYING, S_FAILED):
            pass  # already judged (e.g. stuck pulling) and being removed: keep the verdict
        elif (
            not latest.terminated
            and latest.reason in STUCK_REASONS
            and (latest.reason == "InvalidImageName" or stuck_for >= pc.stuck_grace)
        ):
            # The kubelet would wait forever (image pull back-off, unusable config): give up on this pod.
            msg = f"pod {latest.name}: {latest.reason}: {latest.message or 'container never started'}"
            pc.delete.append(latest.name)
            _fail_or_retry(
                g, gs, latest, latest.reason == "InvalidImageName", msg, pc.now, pc.spec, pc.backoff_base
            )
        elif not latest.terminated and pc.spec.suspend:
            _suspend(gs, latest, pc.delete)
        elif not latest.terminated:
            gs.phase = S_RUNNING if latest.phase == "Running" else S_PENDING
            if latest.phase == "Running":
                gs.admission_rejections = 0  # a node took it: later refusals start a new count
            gs.retry_at = None
            gs.message = None
            if latest.reason in STUCK_REASONS:
                gs.message = f"pod {latest.name}: {latest.reason}: {latest.message or ''}".strip()
            stale = _superseded_waits(latest, states)
            if stale:
                _restart(g, gs, latest, stale, pc.delete, pc.events)
        elif latest.phase == "Succeeded" and latest.result and latest.result.ok and latest.result.digest:
            r = latest.result
            verdict, why = _consumed_check(g, latest, r, states)
            if verdict == "restart":
                _restart(g, gs, latest, why, pc.delete, pc.events)
            elif verdict == "mismatch":
                # Built from other content than the recorded upstream result: an infrastructure failure
                # (counted, retried with the recorded digests), never an accepted result.
                gs.completion = latest.finished or fmt_time(pc.now)
                failed_at = parse_time(latest.finished) or pc.now
                _fail_or_retry(g, gs, None, False, why, failed_at, pc.spec, pc.backoff_base)
            elif verdict == "hold":
                gs.phase, gs.message = S_RUNNING, why
            else:
                gs.phase, gs.digest, gs.image = S_SUCCEEDED, r.digest, r.image
                gs.completion = latest.finished or fmt_time(pc.now)
                gs.cached_steps, gs.steps = r.cached_steps, r.steps
                gs.stage_results = {s.name: s for s in r.stages}
                gs.message = None
        elif latest.rejected_at_admission and (judged or gs.admission_rejections < ADMISSION_RETRIES):
            if not judged:
                _retry_admission(g, gs, latest, pc.now)
        else:
            if latest.phase == "Succeeded":
                is_build, msg = (
                    False,
                    "worker exited without a result (no digest in its termination message)",
                )
            else:
                is_build, msg = _classify_failure(latest)
            # A pod the kubelet refused (OutOfcpu) never ran a container and has no finish time: the
            # time its failure was first judged stands, or its retry time would move with every pass.
            seen = gs.completion if judged else None
            gs.completion = latest.finished or seen or fmt_time(pc.now)
            failed_at = parse_time(gs.completion) or pc.now
            _fail_or_retry(g, gs, latest, is_build, msg, failed_at, pc.spec, pc.backoff_base)
    elif gs.phase in S_ACTIVE and gs.attempts > 0:
        # Its pod is gone (deleted, evicted and removed, node lost): an infrastructure failure.
        msg = f"pod {gs.pod or '?'} disappeared (deleted or its node was lost)"
        _fail_or_retry(g, gs, None, False, msg, pc.now, pc.spec, pc.backoff_base)


def started_event(start: StartPod) -> Event | None:
    """The event for a pod `decide` starts: only retries have one (a first start is said by the pod's own
    Scheduled/Started events, and status names the pod: one write less per group)."""
    if start.attempt <= 1:
        return None
    g = start.group
    why = "restart" if start.restart else "retry"
    return Event(
        "Normal", "GroupStarted", f"group {g.id} ({', '.join(g.stages)}): attempt {start.attempt} ({why})"
    )


def _trusted_pods(
    states: Mapping[str, GroupState],
    pods: Sequence[PodObservation],
    delete: list[str],
    events: list[Event],
) -> list[PodObservation]:
    """The pods of this generation that may speak for their groups (`trust`); the others are deleted,
    each with a Warning event.

    A pod of the group's current attempt (or a later one) is trusted when its UID is the one recorded for
    the group, or — no UID recorded yet: the operator stopped between creating it and recording it — when
    it has the recorded pod name and a creation token that hashes to the recorded ``podToken``; its UID is
    then recorded. Pods of earlier attempts are not judged: their results are never read (a running one
    is stopped as before).
    """
    out: list[PodObservation] = []
    for p in pods:
        gs = states.get(p.group)
        if gs is not None and p.attempt < gs.attempts:
            out.append(p)
            continue
        if gs is not None and p.attempt == gs.attempts:
            if gs.pod_uid is not None and p.uid == gs.pod_uid:
                out.append(p)
                continue
            if gs.pod_uid is None and p.name == gs.pod and trust.matches(p.token, gs.pod_token):
                gs.pod_uid = p.uid
                out.append(p)
                continue
        if not p.deleting:
            delete.append(p.name)
            message = trust.untrusted_message(p.name, p.group, p.attempt)
            events.append(Event("Warning", trust.UNTRUSTED, message))
    return out


def _superseded_waits(pod: PodObservation, states: Mapping[str, GroupState]) -> str | None:
    """Why a pod started early waits in vain, or None: an upstream attempt it waits for is no longer its
    group's (retried, or restarted itself), so its tag is never pushed — or pushed by a lost attempt whose
    result the operator will not accept."""
    for pg, attempt in sorted(pod.waits.items()):
        ps = states.get(pg)
        if ps is None or ps.phase == S_FAILED:
            continue  # (a failed upstream fails the build, which stops every pod)
        if ps.attempts != attempt:
            return f"upstream group {pg} attempt {attempt} was superseded by attempt {ps.attempts}"
        if ps.phase in (S_RETRYING, S_WAITING):
            return f"upstream group {pg} attempt {attempt} was superseded"
    return None


def _consumed_check(
    g: GroupPlan, pod: PodObservation, r: WorkerResult, states: Mapping[str, GroupState]
) -> tuple[str, str]:
    """Whether a group's successful result may be accepted ("ok"), must wait until an upstream result it
    consumed is accepted itself ("hold"), was built from an upstream attempt that was superseded
    ("restart"), or from other content than the upstream result the operator recorded ("mismatch"), each
    with why.

    The rule: a group's result is accepted only when every upstream it consumed is exactly the digest
    recorded in status for that upstream group. A pod started after its upstream succeeded is given that
    digest (``--upstream REPO@DIGEST``) and builds from it. A pod started early waited for the upstream's
    tag and pinned whatever digest the tag named when it looked; its worker result names that digest
    (``upstreams``), and it must equal the recorded one: a tag overwritten between the upstream's push and
    the pull (by anyone who can push to the stage repository) makes the result a "mismatch", an
    infrastructure failure that is retried against the recorded digest — never a Succeeded group built
    from other content. A result that does not say what it consumed by tag is not accepted either."""
    hold = ""
    for stage, pg in g.consumes:
        ps = states[pg]
        used = r.upstreams.get(stage)
        waited = pod.waits.get(pg)
        if ps.phase == S_SUCCEEDED:
            if waited is not None and waited != ps.attempts:
                why = f"waited for group {pg} attempt {waited}, but attempt {ps.attempts} succeeded"
                return "restart", why
            if (used or waited is not None) and used != ps.digest:
                took = f"{stage}@{used}" if used else f"{stage} without reporting its digest"
                return "mismatch", (
                    f"upstream digest mismatch: consumed {took}, but group {pg} recorded {ps.digest} "
                    "(its result tag was overwritten between push and pull?)"
                )
        elif used or waited is not None:
            if waited is not None and (ps.attempts != waited or ps.phase not in S_ACTIVE):
                return "restart", f"consumed the result of group {pg} attempt {waited}, which was superseded"
            hold = hold or f"finished; its result waits until group {pg}'s result (consumed) is recorded"
    return ("hold", hold) if hold else ("ok", "")


def _suspend(gs: GroupState, pod: PodObservation, delete: list[str]) -> None:
    """spec.suspend: the group's pod is stopped; the group starts again on resume, using no retry."""
    if not pod.deleting:
        delete.append(pod.name)
    gs.phase, gs.restarts, gs.retry_at = S_WAITING, gs.restarts + 1, None
    gs.start, gs.completion, gs.node = None, None, None
    gs.message = "suspended (spec.suspend): its pod was stopped; it starts again on resume"


def _restart(
    g: GroupPlan, gs: GroupState, pod: PodObservation, why: str, delete: list[str], events: list[Event]
) -> None:
    """Replace the group's pod: it waited for (or built from) a superseded upstream attempt. The group
    waits to be started again (a new attempt, started as soon as its upstreams allow it) without using one
    of spec.retries."""
    if not pod.terminated and not pod.deleting:
        delete.append(pod.name)
    gs.phase, gs.restarts, gs.retry_at = S_WAITING, gs.restarts + 1, None
    gs.start, gs.completion, gs.node = None, None, None
    gs.message = f"restarting: {why}"
    events.append(
        Event(
            "Normal",
            "GroupRestarted",
            f"group {g.id} ({', '.join(g.stages)}): {why}; pod {pod.name} is replaced",
        )
    )


def _due(gs: GroupState, now: datetime) -> bool:
    """Whether a group wants a pod now (`ready.is_due`): a refused pod create holds it like a backoff."""
    return ready.is_due(gs.phase, parse_time(gs.retry_at), now, held=bool(gs.rejections))


def _fail_or_retry(
    g: GroupPlan,
    gs: GroupState,
    pod: PodObservation | None,
    is_build: bool,
    msg: str,
    failed_at: datetime,
    spec: ImageBuildSpec,
    backoff_base: float,
) -> None:
    """The group's attempt failed: retried or failed, as `retries.judge` says."""
    verdict = retries.judge(
        attempts=gs.attempts,
        restarts=gs.restarts,
        retries=spec.retries,
        build_error=is_build,
        exit_code=pod.exit_code if pod is not None else None,
        message=msg,
        failed_at=failed_at,
        backoff_base=backoff_base,
    )
    if verdict.retry_at is not None:
        gs.phase = S_RETRYING
        gs.retry_at = fmt_time(verdict.retry_at)
        gs.message = f"{verdict.message}; retrying at {gs.retry_at}"
        return
    gs.phase = S_FAILED
    gs.message = verdict.message
    r = pod.result if pod else None
    gs.failure = {
        "group": g.id,
        "kind": (r.error_kind if r and r.error_kind else ("build" if is_build else "infrastructure")),
        "stage": (r.error_stage if r and r.error_stage else g.target),
        "attempts": gs.attempts,
    }
    if r and r.error_line:
        gs.failure["line"] = r.error_line
    if pod and pod.exit_code is not None:
        gs.failure["exitCode"] = pod.exit_code


def _retry_admission(g: GroupPlan, gs: GroupState, pod: PodObservation, now: datetime) -> None:
    """Its node refused the pod before running it: a restart (no attempt used), due after 1, 2, 4, 8 s, so
    the scheduler can place it again once the node's count catches up; the sixth refusal in a row counts."""
    gs.admission_rejections += 1
    gs.restarts += 1
    gs.phase = S_RETRYING
    gs.completion = fmt_time(now)
    delay = min(2.0 ** (gs.admission_rejections - 1), ADMISSION_BACKOFF_CAP)
    gs.retry_at = fmt_time(now + timedelta(seconds=delay))
    where = f"node {pod.node}" if pod.node else "its node"
    gs.message = (
        f"pod {pod.name} refused by {where} at admission ({pod.reason}: {pod.message or 'no detail'}); "
        f"not counted as an attempt, retrying at {gs.retry_at}"
    )


def _group_events(g: GroupPlan, gs: GroupState, before: str) -> list[Event]:
    stages = ", ".join(g.stages)
    # Pending → Running has no event of ours: the kubelet's own Started event on the pod says it.
    if gs.phase == S_SUCCEEDED:
        cached = f", {gs.cached_steps}/{gs.steps} steps cached" if gs.steps is not None else ""
        return [Event("Normal", "StageSucceeded", f"{stages} built {gs.digest}{cached}")]
    if gs.phase == S_RETRYING:
        return [Event("Warning", "GroupRetrying", f"group {g.id} ({stages}) {gs.message}")]
    if gs.phase == S_FAILED:
        return [Event("Warning", "StageFailed", f"group {g.id} ({stages}) failed: {gs.message}")]
    return []
