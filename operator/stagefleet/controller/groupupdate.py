"""Pure: one group's state brought up to date with its newest worker pod, in one `status.decide` pass.

The pod may be adopted (created just before a lost status write), running, stuck pulling, on a lost node,
refused at admission, finished with a result that may or may not be accepted (`_consumed_check`), failed, or
gone. Each case ends in the group's next phase: running, succeeded, retrying or failed (`retries.judge`),
restarted against a new upstream attempt, or stopped for spec.suspend. The pass-level rules (which pods are
trusted, which groups start, the build's verdict) stay in `status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from stagefleet.buildstate import retries
from stagefleet.buildstate.phases import ACTIVE as S_ACTIVE
from stagefleet.buildstate.phases import DONE as S_DONE
from stagefleet.buildstate.phases import FAILED as S_FAILED
from stagefleet.buildstate.phases import PENDING as S_PENDING
from stagefleet.buildstate.phases import RETRYING as S_RETRYING
from stagefleet.buildstate.phases import RUNNING as S_RUNNING
from stagefleet.buildstate.phases import SUCCEEDED as S_SUCCEEDED
from stagefleet.buildstate.phases import WAITING as S_WAITING
from stagefleet.controller.clock import fmt_time, parse_time
from stagefleet.controller.groupstate import GroupState
from stagefleet.controller.model import Event, GroupPlan
from stagefleet.controller.nodeloss import LostPod
from stagefleet.controller.observe import STUCK_REASONS, PodObservation, WorkerResult
from stagefleet.controller.spec import ImageBuildSpec

# A pod refused at its node's admission (`observe.ADMISSION_REASONS`) is retried at once on whatever node
# the scheduler picks, without using an attempt, up to ADMISSION_RETRIES times in a row, after 1, 2, 4, 8 s.
ADMISSION_RETRIES = 5
ADMISSION_BACKOFF_CAP = 8.0


@dataclass
class PassContext:
    """What every group's judgement in one `decide` pass reads (its inputs) and adds to (pods to delete,
    events)."""

    spec: ImageBuildSpec
    now: datetime
    backoff_base: float
    stuck_grace: float
    lost: Mapping[str, LostPod]
    delete: list[str]
    events: list[Event]


def observe(
    g: GroupPlan,
    gs: GroupState,
    latest: PodObservation | None,
    states: Mapping[str, GroupState],
    pc: PassContext,
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


def phase_events(g: GroupPlan, gs: GroupState, before: str) -> list[Event]:
    """The Events of a group whose phase moved from ``before`` this pass."""
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
