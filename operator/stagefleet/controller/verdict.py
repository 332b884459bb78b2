"""Pure: the build's phase, reason and message once a pass has observed its groups.

The first failed group fails the build (the others are cancelled); the deadline cancels it; every group
succeeded ends it; otherwise it goes on, and the message says what runs, started early, retries or
queues — or what it waits for (suspension, missing Secrets, refused pods, the namespace's quota).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stagefleet.buildstate import outcome
from stagefleet.buildstate.phases import ACTIVE as S_ACTIVE
from stagefleet.buildstate.phases import CANCELLED as S_CANCELLED
from stagefleet.buildstate.phases import RETRYING as S_RETRYING
from stagefleet.buildstate.phases import SUCCEEDED as S_SUCCEEDED
from stagefleet.buildstate.phases import WAITING as S_WAITING
from stagefleet.controller.buildphase import (
    BUILDING,
    CANCELLED,
    FAILED,
    PENDING,
    QUEUED,
    QUOTA,
    REJECTED,
    SUCCEEDED,
    SUSPENDED,
)
from stagefleet.controller.groupstate import GroupState
from stagefleet.controller.model import Event, PlanView
from stagefleet.controller.podspec import BuildRef
from stagefleet.controller.rejections import quota_exhausted
from stagefleet.controller.spec import ImageBuildSpec
from stagefleet.controller.workerqueue import Spot

#: The first group (by wave) that failed: (group, message, failure detail for status.failure).
Failure = tuple[str, str, dict[str, Any]]


def refusals(plan: PlanView, states: Mapping[str, GroupState]) -> tuple[str, str]:
    """(refused, quota) messages: groups whose pod the API refused to create wait (`note_rejections`) and
    the build is Stalled; when only the namespace's quota refused them, the build waits for it
    (Reconciling, WaitingForQuota). "" for none."""
    refused = [g for g in plan.groups
               if states[g.id].rejections and states[g.id].phase in (S_WAITING, S_RETRYING)]
    rejected, quota = (
        "; ".join(f"group {g.id} ({', '.join(g.stages)}) not started: {states[g.id].message}"
                  for g in refused if quota_exhausted(states[g.id].message) == q)
        for q in (False, True)
    )
    return rejected, quota


def verdict(
    build: BuildRef,
    spec: ImageBuildSpec,
    plan: PlanView,
    states: Mapping[str, GroupState],
    standing: outcome.Outcome,
    failure: Failure | None,
    deadline: datetime,
    now: datetime,
    going: Going,
    events: list[Event],
) -> tuple[str, str, str]:
    """(phase, reason, message) of the build; cancels the groups a failure or the deadline leaves
    unfinished, and appends the build's Events."""
    final = states[plan.final_group]
    if failure is not None:
        gid, msg, _detail = failure
        message = f"group {gid} ({', '.join(plan.group(gid).stages)}) failed: {msg}"
        for other in outcome.cancelled_by_failure({g.id: states[g.id].phase for g in plan.groups}):
            states[other].phase, states[other].message = S_CANCELLED, f"cancelled: group {gid} failed"
        events.append(Event("Warning", "BuildFailed", message))
        return FAILED, "BuildFailed", message
    if now >= deadline and final.phase != S_SUCCEEDED:
        message = f"timed out after {fmt_duration(spec.timeout_seconds)} (spec.timeout)"
        for why in (going.rejected, going.quota):
            if why:
                message += f"; {why}"
        for other in outcome.unfinished({g.id: states[g.id].phase for g in plan.groups}):
            states[other].phase, states[other].message = S_CANCELLED, "cancelled: build timed out"
        events.append(Event("Warning", "BuildCancelled", message))
        return CANCELLED, "Timeout", message
    if standing.succeeded:  # (starting groups this pass changed no group's success)
        # All groups, not only the final one: a final pod started early can finish before the operator has
        # seen its upstream pods' results (a delayed watch event); the build ends once status has them all.
        message = f"built {spec.output.image}@{final.digest}"
        events.append(Event("Normal", "BuildSucceeded", message))
        return SUCCEEDED, "Succeeded", message
    return building(build, spec, plan, states, going, events)


@dataclass(frozen=True)
class Going:
    """What the message of a run that goes on draws from: the groups started early, the farm queue's
    answer, what it waits for — each as a message, "" for nothing: missing Secrets, pods the API refused,
    the namespace's exhausted quota — and the last status's conditions (an Event only when a wait begins
    or changes)."""

    early: Sequence[str]
    queue: Spot | None
    secrets: str
    rejected: str
    quota: str
    conditions: Sequence[Mapping[str, Any]]


def building(
    build: BuildRef,
    spec: ImageBuildSpec,
    plan: PlanView,
    states: Mapping[str, GroupState],
    going: Going,
    events: list[Event],
) -> tuple[str, str, str]:
    """(phase, reason, message) of a run that goes on: what runs, started early, retries or queues; or
    why it waits (suspended, Secrets missing, pods refused, quota) — with an event when such a wait
    begins or changes."""
    new_phase = BUILDING
    running = [g.id for g in plan.groups if states[g.id].phase in S_ACTIVE and g.id not in going.early]
    retrying = [g.id for g in plan.groups if states[g.id].phase == S_RETRYING]
    reason = "Building"
    parts = []
    if running:
        parts.append(f"running {some(running)}")
    if going.early:
        parts.append(f"{some(going.early)} started early")
    if retrying:
        parts.append(f"retrying {some(retrying)}")
    if going.queue is not None and going.queue.queued and not going.secrets:
        parts.append(going.queue.say(build.namespace))
        reason = QUEUED if not running and not going.early else reason
    message = "; ".join(parts) or "waiting to start groups"
    if spec.suspend:
        done = sum(1 for gs in states.values() if gs.phase == S_SUCCEEDED)
        reason = SUSPENDED
        message = (
            f"suspended (spec.suspend): {done}/{len(states)} groups done, no pod runs; "
            "setting it to false resumes this run"
        )
    elif going.secrets:
        reason, message = "SecretNotFound", going.secrets
    elif going.rejected:
        reason, message = REJECTED, going.rejected
        prev_stalled = next((c for c in going.conditions if c.get("type") == "Stalled"), {})
        if (prev_stalled.get("status"), prev_stalled.get("reason"), prev_stalled.get("message")) != (
            "True",
            REJECTED,
            message[:1024],
        ):
            events.append(Event("Warning", REJECTED, message))  # once, and again only when it changes
    elif going.quota:
        waiting = f"waiting for the namespace's ResourceQuota: {going.quota}"
        message = f"{message}; {waiting}" if running or going.early or retrying else waiting
        reason = QUOTA
        prev = next((c for c in going.conditions if c.get("type") == "Reconciling"), {})
        if prev.get("reason") != QUOTA:
            events.append(Event("Normal", QUOTA, message))  # when the wait begins, not on every pass
    held = going.secrets or going.rejected or going.quota
    if held and not any(states[g.id].attempts for g in plan.groups):
        new_phase = PENDING
    return new_phase, reason, message


def some(ids: Sequence[str], most: int = 20) -> str:
    """A list of group ids for a message; a very wide build's hundreds cut to the first ``most``."""
    if len(ids) <= most:
        return ", ".join(ids)
    return f"{', '.join(ids[:most])} and {len(ids) - most} more"


def fmt_duration(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"
