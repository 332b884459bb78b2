"""Pure: which status changes are written at once, and which only report progress and may share a
later write (the reconciler's status coalescing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stagefleet.buildstate.phases import PENDING as S_PENDING
from stagefleet.buildstate.phases import RUNNING as S_RUNNING
from stagefleet.buildstate.phases import SUCCEEDED as S_SUCCEEDED

# Status keys that only report progress: a change confined to them (and to the per-stage details below)
# may wait a moment to be written together with the next change.
_PROGRESS_KEYS = frozenset(
    {"stages", "message", "conditions", "stagesDone", "progress", "stageCounts", "settledGroups"}
)

# Stage phase changes that only report progress (a pod started or finished well).
_PROGRESS_STEPS = frozenset({(S_PENDING, S_RUNNING), (S_PENDING, S_SUCCEEDED), (S_RUNNING, S_SUCCEEDED)})


def urgent_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """Why the status change ``old`` → ``new`` must be written at once; None when it only reports progress.

    Progress: a group's pod went Pending → Running or finished well (Succeeded), with its node, times,
    digest and durations, and the build's message, counts and condition messages that follow from it.
    Such a change may be held back for a short window (the reconciler's ``status_coalesce``) so the
    transitions of sibling groups share one write; the next pass recomputes it from the pods, so nothing is
    lost by waiting. Everything else is written at once: the build's phase, plan, source, times, image or
    failure; a condition's status or reason; a pod started (new attempt or pod name) or refused by the API,
    a group failing, retrying or cancelled; a stage message that appears or changes (a stuck image pull,
    say). A queued build's moving place in the farm's queue (`status.queue` and its "queued:" messages,
    while it stays queued) is progress: every pod's end elsewhere moves it.
    """
    for key in sorted(set(old) | set(new), key=lambda k: (k != "phase", k)):
        if key == "queue" and old.get(key) and new.get(key):
            continue
        if key not in _PROGRESS_KEYS and old.get(key) != new.get(key):
            return f"{key} changed"
    conds_old = {c.get("type"): (c.get("status"), c.get("reason")) for c in old.get("conditions") or ()}
    conds_new = {c.get("type"): (c.get("status"), c.get("reason")) for c in new.get("conditions") or ()}
    if conds_old != conds_new:
        return "conditions changed"
    stages_old = list(old.get("stages") or ())
    stages_new = list(new.get("stages") or ())
    if [(s.get("name"), s.get("group")) for s in stages_old] != [
        (s.get("name"), s.get("group")) for s in stages_new
    ]:
        return "stages changed"
    for a, b in zip(stages_old, stages_new, strict=True):
        name = b.get("name")
        if (a.get("attempts"), a.get("pod")) != (b.get("attempts"), b.get("pod")):
            return f"stage {name}: pod started"
        if a.get("rejections") != b.get("rejections") and b.get("rejections"):
            return f"stage {name}: pod refused"  # (its retryAt must be recorded before it comes)
        pa, pb = a.get("phase"), b.get("phase")
        if pa != pb and (pa, pb) not in _PROGRESS_STEPS:
            return f"stage {name}: {pa} → {pb}"
        queued = all(str(x.get("message") or "").startswith("queued:") for x in (a, b))
        if b.get("message") and b.get("message") != a.get("message") and not queued:
            return f"stage {name}: message"
    return None
