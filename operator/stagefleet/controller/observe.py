"""Pure: what the operator reads of a worker pod (`PodObservation`) and of its worker's result JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stagefleet.controller import fields, trust
from stagefleet.controller.podspec import (
    ANNOTATION_UPSTREAM_ATTEMPTS,
    LABEL_ATTEMPT,
    LABEL_GENERATION,
    LABEL_GROUP,
    WORKER_CONTAINER,
    parse_attempts,
)

# A pod the node's kubelet refused at admission (its own resource check raced the scheduler's, e.g. pods
# that just finished still counted: "OutOfcpu"), so no container ever ran (`rejected_at_admission`).
ADMISSION_REASONS = (
    "UnexpectedAdmissionError",
    "NodeAffinity",
    "NodeName",
    "NodePorts",
    "PodOSNotSupported",
    "PodOSSelectorNodeLabelDoesNotMatch",
)
# Waiting reasons the kubelet never gets out of by itself.
STUCK_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
)


@dataclass(frozen=True)
class StageResult:
    name: str
    seconds: float | None
    cached_steps: int | None
    steps: int | None


@dataclass(frozen=True)
class WorkerResult:
    """The worker's result JSON (docs/contracts.md)."""

    ok: bool
    image: str | None
    digest: str | None
    cached_steps: int | None
    steps: int | None
    stages: tuple[StageResult, ...]
    error_kind: str | None
    error_message: str | None
    error_stage: str | None
    error_line: int | None
    upstreams: Mapping[str, str] = field(default_factory=dict)  # stage → digest the worker consumed


def parse_result(text: str | None) -> WorkerResult | None:
    """The last line of a termination message / log that parses as a worker result, else None."""
    if not text:
        return None
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if not isinstance(d, dict) or "ok" not in d:
            continue
        err_raw = d.get("error")
        err: dict[str, Any] = err_raw if isinstance(err_raw, dict) else {}
        stages = tuple(
            StageResult(
                str(s.get("name")),
                fields.number(s.get("seconds")),
                fields.integer(s.get("cachedSteps")),
                fields.integer(s.get("steps")),
            )
            for s in d.get("stages") or ()
            if isinstance(s, dict)
        )
        return WorkerResult(
            ok=bool(d.get("ok")),
            image=fields.text(d.get("image")),
            digest=fields.text(d.get("digest")),
            cached_steps=fields.integer(d.get("cachedSteps")),
            steps=fields.integer(d.get("steps")),
            stages=stages,
            error_kind=fields.text(err.get("kind")),
            error_message=fields.text(err.get("message")),
            error_stage=fields.text(err.get("stage")),
            error_line=fields.integer(err.get("line")),
            upstreams={
                str(k): str(v) for k, v in (d.get("upstreams") or {}).items() if isinstance(v, str)
            }
            if isinstance(d.get("upstreams"), dict)
            else {},
        )
    return None


@dataclass(frozen=True)
class PodObservation:
    """What the operator needs to know about one worker pod."""

    name: str
    group: str
    generation: int
    attempt: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    deleting: bool = False
    node: str | None = None
    started: str | None = None
    finished: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    result: WorkerResult | None = None
    created: str | None = None
    deletion_timestamp: str | None = None
    # Started early: upstream group id → the attempt whose result tag its worker waits for.
    waits: Mapping[str, int] = field(default_factory=dict)
    uid: str | None = None
    token: str | None = None  # its creation token (`trust`)

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def rejected_at_admission(self) -> bool:
        """Failed by its node's kubelet before any container started (OutOfcpu, UnexpectedAdmissionError…)."""
        reason = self.reason or ""
        return (
            self.phase == "Failed"
            and self.exit_code is None
            and self.finished is None
            and (reason.startswith("OutOf") or reason in ADMISSION_REASONS)
        )


def observe_pod(pod: Mapping[str, Any]) -> PodObservation | None:
    """Read a worker pod (as the API returns it); None when it lacks stagefleet's labels."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        group = str(labels[LABEL_GROUP])
        generation = int(labels[LABEL_GENERATION])
        attempt = int(labels[LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None
    st = pod.get("status") or {}
    phase = str(st.get("phase") or "Pending")
    reason = fields.text(st.get("reason"))
    message = fields.text(st.get("message"))
    started = fields.text(st.get("startTime"))
    finished: str | None = None
    exit_code: int | None = None
    term_message: str | None = None
    for cs in st.get("containerStatuses") or ():
        if cs.get("name") != WORKER_CONTAINER:
            continue
        state = cs.get("state") or {}
        if "running" in state:
            started = fields.text((state["running"] or {}).get("startedAt")) or started
        if "terminated" in state:
            t = state["terminated"] or {}
            started = fields.text(t.get("startedAt")) or started
            finished = fields.text(t.get("finishedAt"))
            exit_code = fields.integer(t.get("exitCode"))
            term_message = fields.text(t.get("message"))
            reason = reason or fields.text(t.get("reason"))
        if "waiting" in state:
            w = state["waiting"] or {}
            if w.get("reason") in STUCK_REASONS:
                reason, message = fields.text(w.get("reason")), fields.text(w.get("message")) or message
    return PodObservation(
        name=str(meta.get("name")),
        group=group,
        generation=generation,
        attempt=attempt,
        phase=phase,
        deleting=bool(meta.get("deletionTimestamp")),
        node=fields.text((pod.get("spec") or {}).get("nodeName")),
        started=started,
        finished=finished,
        exit_code=exit_code,
        reason=reason,
        message=term_message or message,
        result=parse_result(term_message),
        created=fields.text(meta.get("creationTimestamp")),
        deletion_timestamp=fields.text(meta.get("deletionTimestamp")),
        waits=parse_attempts(fields.text((meta.get("annotations") or {}).get(ANNOTATION_UPSTREAM_ATTEMPTS))),
        uid=fields.text(meta.get("uid")),
        token=fields.text((meta.get("annotations") or {}).get(trust.ANNOTATION_TOKEN)),
    )


def pod_signature(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a worker pod that `decide` reads; equal signatures mean an event changes nothing."""
    o = observe_pod(pod)
    if o is None:
        return ()
    # Not the node: binding alone changes no decision (the node is recorded with the next change).
    return (o.phase, o.deleting, o.started, o.finished, o.exit_code, o.reason, o.message)


def unschedulable(pod: Mapping[str, Any]) -> bool:
    """Whether the scheduler has said it cannot place this pod (PodScheduled False, Unschedulable): the
    cluster is full, so starting pods that would only wait (early start) would take room from real work."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending") or (pod.get("spec") or {}).get("nodeName"):
        return False
    return any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in status.get("conditions") or ()
        if isinstance(c, Mapping)
    )
