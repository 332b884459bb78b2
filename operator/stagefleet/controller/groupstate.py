"""A plan group's runtime state, as status records it on each of its stages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stagefleet.buildstate.phases import WAITING as S_WAITING
from stagefleet.controller import fields
from stagefleet.controller.model import PlanView
from stagefleet.controller.observe import StageResult


@dataclass
class GroupState:
    """A group's runtime state, stored on each of its stages' status entries."""

    phase: str = S_WAITING
    attempts: int = 0
    pod: str | None = None
    node: str | None = None
    start: str | None = None
    completion: str | None = None
    retry_at: str | None = None
    digest: str | None = None
    image: str | None = None
    message: str | None = None
    cached_steps: int | None = None
    steps: int | None = None
    stage_results: dict[str, StageResult] = field(default_factory=dict)
    failure: dict[str, Any] | None = None
    rejections: int = 0  # consecutive refused creates of its next pod (none was created; no attempt used)
    # Attempts ended by a restart, not a failure (a waiter whose upstream attempt was superseded, a pod its
    # node refused at admission): they do not count against spec.retries.
    restarts: int = 0
    admission_rejections: int = 0  # consecutive attempts refused by a node's kubelet (ADMISSION_RETRIES)
    # The current attempt's pod as the operator recorded it (`trust`): its UID once created, and before
    # that the hash of the token its create carries.
    pod_uid: str | None = None
    pod_token: str | None = None

    @classmethod
    def from_entry(cls, e: Mapping[str, Any]) -> GroupState:
        return cls(
            phase=str(e.get("phase") or S_WAITING),
            attempts=int(e.get("attempts") or 0),
            pod=fields.text(e.get("pod")),
            node=fields.text(e.get("node")),
            start=fields.text(e.get("startTime")),
            completion=fields.text(e.get("completionTime")),
            retry_at=fields.text(e.get("retryAt")),
            digest=fields.text(e.get("digest")),
            image=fields.text(e.get("image")),
            message=fields.text(e.get("message")),
            cached_steps=fields.integer(e.get("groupCachedSteps")),
            steps=fields.integer(e.get("groupSteps")),
            rejections=fields.integer(e.get("rejections")) or 0,
            restarts=fields.integer(e.get("restarts")) or 0,
            admission_rejections=fields.integer(e.get("admissionRejections")) or 0,
            pod_uid=fields.text(e.get("podUID")),
            pod_token=fields.text(e.get("podToken")),
        )


def recorded_states(plan: PlanView, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, GroupState]:
    """Each group's state as the last status recorded it (``entries``: its stage entries by name)."""
    states: dict[str, GroupState] = {}
    for g in plan.groups:
        # Every entry of a group's stages carries its state; a summarised status may list only one of them.
        first = next((entries[n] for n in g.stages if n in entries), None)
        gs = states[g.id] = GroupState.from_entry(first) if first else GroupState()
        target = entries.get(g.target) or {}
        # Only the group's target stage carries the pushed image (and is what downstream groups consume).
        gs.digest = fields.text(target.get("digest"))
        gs.image = fields.text(target.get("image"))
        if first:
            gs.stage_results = {
                n: StageResult(n, fields.number(entries[n].get("duration")),
                               fields.integer(entries[n].get("cachedSteps")),
                               fields.integer(entries[n].get("steps")))
                for n in g.stages if n in entries and "duration" in entries[n]
            }
    return states
