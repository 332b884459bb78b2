"""Pure: how status reads. The stage entries, the kstatus conditions, the summary of a very wide build,
and the status of a run before its pods exist (planning, planned, ended early)."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from stagefleet.buildstate.phases import RETRYING as S_RETRYING
from stagefleet.buildstate.phases import SUCCEEDED as S_SUCCEEDED
from stagefleet.buildstate.phases import WAITING as S_WAITING
from stagefleet.controller import history, polling
from stagefleet.controller.buildphase import BUILDING, CANCELLED, FAILED, SUCCEEDED, TERMINAL
from stagefleet.controller.clock import fmt_time
from stagefleet.controller.groupstate import GroupState
from stagefleet.controller.model import PlanView
from stagefleet.controller.runs import Run, run_of


def stage_entries(
    plan: PlanView, states: Mapping[str, GroupState], old: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for g in plan.groups:
        gs = states[g.id]
        rejected = gs.rejections if gs.phase in (S_WAITING, S_RETRYING) else 0
        for name in g.stages:
            e: dict[str, Any] = {"name": name, "group": g.id, "phase": gs.phase, "attempts": gs.attempts}
            optional: dict[str, Any] = {
                "pod": gs.pod,
                "node": gs.node,
                "startTime": gs.start,
                "completionTime": gs.completion,
                "retryAt": gs.retry_at if gs.phase == S_RETRYING or rejected else None,
                "message": gs.message,
                "groupCachedSteps": gs.cached_steps,
                "groupSteps": gs.steps,
                "rejections": rejected or None,
                "restarts": gs.restarts or None,
                "admissionRejections": gs.admission_rejections or None,
                "podUID": gs.pod_uid,
                "podToken": gs.pod_token,
            }
            if gs.phase == S_SUCCEEDED and name == g.target:
                optional["digest"] = gs.digest
                optional["image"] = gs.image
            r = gs.stage_results.get(name)
            prev = old.get(name, {})
            if r is not None:
                optional["duration"] = round(r.seconds, 3) if r.seconds is not None else None
                optional["cachedSteps"] = r.cached_steps
                optional["steps"] = r.steps
            elif gs.phase == S_SUCCEEDED:
                for k in ("duration", "cachedSteps", "steps", "reused"):
                    optional[k] = prev.get(k)
            optional["key"] = prev.get("key")  # recorded at plan time (`reuse.mark`)
            e.update({k: v for k, v in optional.items() if v is not None})
            out.append(e)
    return out


def _condition(
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    old: Sequence[Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    value = "True" if status else "False"
    prev = next((c for c in old if c.get("type") == ctype), None)
    when = prev.get("lastTransitionTime") if prev and prev.get("status") == value else None
    return {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": when or fmt_time(now),
    }


def conditions(
    phase: str,
    reason: str,
    message: str,
    generation: int,
    old: Sequence[Mapping[str, Any]],
    now: datetime,
    *,
    stalled: bool = False,
) -> list[dict[str, Any]]:
    """kstatus: Ready only on success; Reconciling while work goes on; Stalled on errors needing a fix.
    Suspended on purpose (spec.suspend): Reconciling=True with reason Suspended (not done: Flux waits, Argo CD
    says Suspended), Ready=False with that reason."""
    ready = phase == SUCCEEDED
    is_stalled = stalled or phase in (FAILED, CANCELLED)
    reconciling = phase not in TERMINAL and not is_stalled
    return [
        _condition("Ready", ready, reason, message, generation, old, now),
        _condition(
            "Reconciling",
            reconciling,
            reason if reconciling else phase,
            message if reconciling else "",
            generation,
            old,
            now,
        ),
        _condition(
            "Stalled",
            is_stalled,
            reason if is_stalled else "NotStalled",
            message if is_stalled else "",
            generation,
            old,
            now,
        ),
    ]


# More stages than this and status.stages is summarised (`summarise_stages`): with every stage listed in
# full, a 2,000-stage build's status passes 1.1 MB, near the API's object size limit (etcd: 1.5 MiB).
SUMMARY_STAGES = 256
_SETTLED_KEYS = ("attempts", "digest", "podUID", "image")


def summarise_stages(
    status: dict[str, Any],
    stages: Sequence[Mapping[str, Any]],
    plan: PlanView,
    settled: Iterable[str],
    *,
    terminal: bool,
    image_of: Callable[[str, int], str] | None = None,
) -> None:
    """Put a summary of ``stages`` (the full entries, `stage_entries`) into ``status``.

    ``stagesSummarized: true``; ``stageCounts``: every stage by phase; ``stages``: only the groups that
    run, wait for a retry or a refused pod, failed, were cancelled, or succeeded in this very pass (their
    durations reach the metrics) — in full. A group still Waiting with nothing recorded is not listed (no
    entry means exactly that). What a later pass needs of the groups that succeeded before this one
    (``settled``: attempt, digest, the pod's UID for `trust`, the image unless `image_of` derives it) goes
    into ``settledGroups``, gzip-compressed (digests do not shrink otherwise: 2,000 of them in clear are
    ~200 KB) — and nowhere once the build ended, when nothing reads it any more. `expand_stages` undoes it
    for the next pass, so summarising loses nothing `decide` reads.
    """
    settled = set(settled)
    targets = {g.id: g.target for g in plan.groups}
    listed: list[dict[str, Any]] = []
    kept: list[list[Any]] = []
    for e in stages:
        gid, phase = str(e.get("group")), e.get("phase")
        if phase == S_WAITING and not e.get("attempts") and set(e) <= {"name", "group", "phase", "attempts"}:
            continue
        if phase == S_SUCCEEDED and gid in settled:
            if not terminal and e.get("name") == targets.get(gid):
                attempts = int(e.get("attempts") or 0)
                image = e.get("image")
                if image_of is not None and image == image_of(gid, attempts):
                    image = None
                kept.append([gid, attempts, e.get("digest"), e.get("podUID"), image])
            continue
        listed.append(dict(e))
    status["stages"] = listed
    status["stagesSummarized"] = True
    status["stageCounts"] = stage_counts(stages)
    status.pop("settledGroups", None)
    if kept:
        text = json.dumps(kept, separators=(",", ":")).encode()
        status["settledGroups"] = base64.b64encode(gzip.compress(text, mtime=0)).decode()


def expand_stages(
    status: Mapping[str, Any], plan: PlanView, image_of: Callable[[str, int], str] | None = None
) -> dict[str, Any]:
    """A summarised status (`summarise_stages`) with every stage listed again, as a pass's input. An
    unsummarised status, or an ended build's (`decide` returns it as it is), is returned as it is."""
    if not status.get("stagesSummarized") or status.get("phase") in TERMINAL:
        return dict(status)
    listed = {str(e.get("name")): e for e in status.get("stages") or () if isinstance(e, Mapping)}
    settled: dict[str, dict[str, Any]] = {}
    blob = status.get("settledGroups")
    if isinstance(blob, str):
        for gid, attempts, digest, uid, image in json.loads(gzip.decompress(base64.b64decode(blob))):
            if image is None and image_of is not None:
                image = image_of(str(gid), int(attempts))
            values = dict(zip(_SETTLED_KEYS, (attempts, digest, uid, image), strict=True))
            settled[str(gid)] = {k: v for k, v in values.items() if v is not None}
    out: list[dict[str, Any]] = []
    for g in plan.groups:
        for n in g.stages:
            if n in listed:
                out.append(dict(listed[n]))
            elif g.id in settled:
                e = {"name": n, "group": g.id, "phase": S_SUCCEEDED}
                own = settled[g.id].items()
                e.update({k: v for k, v in own if n == g.target or k not in ("digest", "image")})
                out.append(e)
            else:
                out.append({"name": n, "group": g.id, "phase": S_WAITING, "attempts": 0})
    return {**status, "stages": out}


def stage_counts(stages: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many stages are in each phase (over the full entries)."""
    counts: dict[str, int] = {}
    for e in stages:
        counts[str(e.get("phase"))] = counts.get(str(e.get("phase")), 0) + 1
    return dict(sorted(counts.items()))


def summary_fields(status: dict[str, Any], stages: Sequence[Mapping[str, Any]]) -> None:
    done = sum(1 for s in stages if s.get("phase") == S_SUCCEEDED)
    status["stagesDone"] = done
    status["stagesTotal"] = len(stages)
    status["progress"] = f"{done}/{len(stages)}"


def terminal_status(
    *,
    generation: int,
    phase: str,
    reason: str,
    message: str,
    old: Mapping[str, Any],
    now: datetime,
    run: Run | None = None,
) -> dict[str, Any]:
    """Status for a build that ends before any pod ran: invalid spec, Dockerfile error, unreachable source.
    ``generation`` is the run's number; ``run`` (default: that generation's first) what the status says.
    The planning status it ends, with its end and failure (no durations kept for a next plan)."""
    status = progress_status(
        generation=generation, phase=phase, reason=reason, message=message, old=old, now=now, run=run
    )
    status.pop("lastDurations", None)
    status["completionTime"] = fmt_time(now)
    status["failure"] = {"reason": reason, "message": message}
    return status


def progress_status(
    *,
    generation: int,
    phase: str,
    reason: str,
    message: str,
    old: Mapping[str, Any],
    now: datetime,
    stalled: bool = False,
    run: Run | None = None,
) -> dict[str, Any]:
    """Status while resolving the source and planning (no plan yet)."""
    ids = (run or Run(generation, generation)).fields()
    status: dict[str, Any] = {
        **polling.carried(old),
        "phase": phase,
        **ids,
        "message": message,
        "startTime": (old.get("startTime") if run_of(old) == generation else None) or fmt_time(now),
        "stages": [],
        "conditions": conditions(
            phase,
            reason,
            message,
            ids["observedGeneration"],
            old.get("conditions") or (),
            now,
            stalled=stalled,
        ),
    }
    summary_fields(status, [])
    durations = history.measured(old)
    if durations:  # (for the next plan's critical path: this status lists no stages; the longest 500)
        longest = sorted(durations.items(), key=lambda kv: -kv[1])[:500]
        status["lastDurations"] = dict(sorted(longest))
    return status


def planned_status(
    *,
    generation: int,
    plan: PlanView,
    source: Mapping[str, Any],
    old: Mapping[str, Any],
    now: datetime,
    run: Run | None = None,
) -> dict[str, Any]:
    """The first status of a run once it has a plan: every stage Waiting."""
    ids = (run or Run(generation, generation)).fields()
    states = {g.id: GroupState() for g in plan.groups}
    stages = stage_entries(plan, states, {})
    n = len(plan.groups)
    waves = 1 + max((g.wave for g in plan.groups), default=-1)
    message = f"planned {len(stages)} stages in {n} group{'s' * (n != 1)}, {waves} wave{'s' * (waves != 1)}"
    status: dict[str, Any] = {
        **polling.carried(old),
        "phase": BUILDING,
        **ids,
        "message": message,
        "startTime": (old.get("startTime") if run_of(old) == generation else None) or fmt_time(now),
        "source": dict(source),
        "plan": plan.to_status(),
        "stages": stages,
        "conditions": conditions(
            BUILDING, "Building", message, ids["observedGeneration"], old.get("conditions") or (), now
        ),
    }
    summary_fields(status, stages)
    if len(stages) > SUMMARY_STAGES:
        summarise_stages(status, stages, plan, (), terminal=False)
    return status


def group_states(status: Mapping[str, Any]) -> dict[str, str]:
    """group id → phase, from a recorded status (for metrics and CLI)."""
    out: dict[str, str] = {}
    for e in status.get("stages") or ():
        out.setdefault(str(e.get("group")), str(e.get("phase")))
    return out
