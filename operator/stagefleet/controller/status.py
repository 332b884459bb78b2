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

from stagefleet.buildstate import outcome, ready
from stagefleet.buildstate.phases import ACTIVE as S_ACTIVE
from stagefleet.buildstate.phases import PENDING as S_PENDING
from stagefleet.buildstate.phases import RETRYING as S_RETRYING
from stagefleet.buildstate.phases import SUCCEEDED as S_SUCCEEDED
from stagefleet.buildstate.phases import WAITING as S_WAITING
from stagefleet.controller import fields, groupupdate, nodeloss, polling, trust, verdict
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
from stagefleet.controller.observe import PodObservation
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

    pc = groupupdate.PassContext(spec, now, backoff_base, stuck_grace, lost, delete, events)
    # Upstream groups before the groups that consume them (a lower wave), so that a group's check of the
    # upstream attempts its pod waited for sees those groups as this pass leaves them.
    for g in sorted(plan.groups, key=lambda g: g.wave):
        gs = states[g.id]
        gpods = sorted(by_group.get(g.id, ()), key=lambda p: p.attempt)
        before = gs.phase
        groupupdate.observe(g, gs, gpods[-1] if gpods else None, states, pc)
        if gs.phase != before:
            events.extend(groupupdate.phase_events(g, gs, before))

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


def _due(gs: GroupState, now: datetime) -> bool:
    """Whether a group wants a pod now (`ready.is_due`): a refused pod create holds it like a backoff."""
    return ready.is_due(gs.phase, parse_time(gs.retry_at), now, held=bool(gs.rejections))


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
