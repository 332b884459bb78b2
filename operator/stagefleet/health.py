"""Health of an ImageBuild as GitOps tools see it: kstatus (Flux, kpt, `kubectl wait`) and Argo CD.

Pure functions on the object as a plain dict (what `kubectl get -o json` prints):

* :func:`kstatus` follows kstatus' generic rules exactly (sigs.k8s.io/cli-utils ``pkg/kstatus``: deletion,
  ``observedGeneration`` vs ``metadata.generation``, then the first ``Reconciling``/``Stalled`` condition
  that is True, else Current). ImageBuild has no type-specific kstatus rules, so this is what Flux computes.
* :func:`argocd_health` is the Python twin of ``gitops/argocd-health.lua`` (tests run both on the same
  table of statuses and require them to agree).
* :func:`is_ready` is ``kubectl wait --for=condition=Ready``.
* :func:`convention_problems` lists where a status breaks the conventions the two checks rely on (e.g. a
  Failed phase without ``Stalled=True`` would look Current to Flux). The e2e suite runs it on every status
  object the operator writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

KStatus = Literal["InProgress", "Current", "Failed", "Terminating"]
ArgoHealth = Literal["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"]

PHASES = ("Pending", "Planning", "Building", "Succeeded", "Failed", "Cancelled")
ACTIVE_PHASES = ("Pending", "Planning", "Building")
TERMINAL_PHASES = ("Succeeded", "Failed", "Cancelled")

# The Argo CD health status each kstatus status corresponds to. Terminating has no Argo CD twin: Argo CD
# shows deletion itself; the Lua reports Progressing.
KSTATUS_TO_ARGOCD: dict[str, str] = {
    "InProgress": "Progressing",
    "Terminating": "Progressing",
    "Current": "Healthy",
    "Failed": "Degraded",
}
# Argo CD says more than kstatus: a build paused on purpose (spec.suspend) is Suspended there and
# InProgress for kstatus (Reconciling=True with reason Suspended: Flux waits for it, never takes it as done).
ARGOCD_ALSO: dict[str, tuple[str, ...]] = {"InProgress": ("Suspended",)}


def agree(kstatus_status: str, argocd_status: str) -> bool:
    """Whether kstatus' and Argo CD's verdicts on one object say the same."""
    return KSTATUS_TO_ARGOCD[kstatus_status] == argocd_status or argocd_status in ARGOCD_ALSO.get(
        kstatus_status, ()
    )


@dataclass(frozen=True)
class Result:
    status: str
    message: str


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = _mapping(obj.get("status")).get("conditions")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    return [c for c in raw if isinstance(c, Mapping)]


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """The first condition of the given type, or None."""
    return next((c for c in _conditions(obj) if c.get("type") == type_), None)


def condition_true(obj: Mapping[str, Any], type_: str) -> bool:
    c = condition(obj, type_)
    return c is not None and c.get("status") == "True"


def is_ready(obj: Mapping[str, Any]) -> bool:
    """What `kubectl wait --for=condition=Ready` waits for."""
    return condition_true(obj, "Ready")


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _kind(obj: Mapping[str, Any]) -> str:
    kind = obj.get("kind")
    return kind if isinstance(kind, str) and kind else "ImageBuild"


def kstatus(obj: Mapping[str, Any]) -> Result:
    """kstatus' generic rules (cli-utils ``checkGenericProperties``); ImageBuild has no specific ones."""
    meta = _mapping(obj.get("metadata"))
    if meta.get("deletionTimestamp"):
        return Result("Terminating", "Resource scheduled for deletion")
    generation = _int(meta.get("generation"))
    status = _mapping(obj.get("status"))
    if generation is not None and "observedGeneration" in status:
        observed = _int(status.get("observedGeneration"))
        if observed != generation:
            return Result(
                "InProgress",
                f"{_kind(obj)} generation is {generation}, but latest observed generation is {observed}",
            )
    for c in _conditions(obj):
        if c.get("status") != "True":
            continue
        if c.get("type") == "Reconciling":
            return Result("InProgress", str(c.get("message") or ""))
        if c.get("type") == "Stalled":
            return Result("Failed", str(c.get("message") or ""))
    return Result("Current", "Resource is current")


def _condition_message(c: Mapping[str, Any], fallback: str) -> str:
    for key in ("message", "reason"):
        value = c.get(key)
        if isinstance(value, str) and value:
            return value
    return fallback


def argocd_health(obj: Mapping[str, Any]) -> Result:
    """The Argo CD health of an ImageBuild; the same decisions as gitops/argocd-health.lua."""
    meta = _mapping(obj.get("metadata"))
    if meta.get("deletionTimestamp") is not None:
        return Result("Progressing", "ImageBuild is being deleted")
    raw_status = obj.get("status")
    if not isinstance(raw_status, Mapping) or raw_status.get("observedGeneration") is None:
        return Result("Progressing", "Waiting for the stagefleet operator to observe the ImageBuild")
    status: Mapping[str, Any] = raw_status
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed != generation:
        return Result(
            "Progressing",
            f"ImageBuild generation is {generation}, but latest observed generation is {observed}",
        )
    ready: Mapping[str, Any] | None = None
    for c in _conditions(obj):
        if c.get("type") == "Reconciling" and c.get("status") == "True":
            if c.get("reason") == "Suspended":  # spec.suspend: paused on purpose, resumes when false
                return Result("Suspended", _condition_message(c, "Suspended"))
            return Result("Progressing", _condition_message(c, "Reconciling"))
        if c.get("type") == "Stalled" and c.get("status") == "True":
            return Result("Degraded", _condition_message(c, "Stalled"))
        if c.get("type") == "Ready":
            ready = c
    phase = status.get("phase")
    message = status.get("message")
    if phase in ("Failed", "Cancelled"):
        return Result("Degraded", f"{phase}: {message}" if message else str(phase))
    if phase == "Succeeded" and ready is not None and ready.get("status") == "True":
        image = _mapping(status.get("image"))
        digest = image.get("digest")
        if digest:
            return Result("Healthy", f"Built {image.get('name') or ''}@{digest}")
        return Result("Healthy", _condition_message(ready, "Succeeded"))
    if phase is not None:
        return Result("Progressing", f"Phase {phase}: {message}" if message else f"Phase {phase}")
    return Result("Progressing", "Waiting for the build to start")


def convention_problems(obj: Mapping[str, Any]) -> list[str]:
    """Where the status breaks the kstatus conventions the GitOps checks rely on (empty list: none).

    For an ImageBuild whose status the operator has written for the current generation:
    an active phase has Reconciling=True and Ready=False; Succeeded has Ready=True and neither Reconciling
    nor Stalled True; Failed/Cancelled has Stalled=True and Ready=False; Reconciling and Stalled are never
    both True; observedGeneration is present.
    """
    status = _mapping(obj.get("status"))
    if not status:
        return ["status is missing"]
    problems: list[str] = []
    observed = _int(status.get("observedGeneration"))
    generation = _int(_mapping(obj.get("metadata")).get("generation"))
    if observed is None:
        problems.append("status.observedGeneration is missing")
    elif generation is not None and observed > generation:
        problems.append(f"status.observedGeneration {observed} is ahead of metadata.generation {generation}")
    phase = status.get("phase")
    if phase not in PHASES:
        problems.append(f"status.phase {phase!r} is not one of {', '.join(PHASES)}")
    for c in _conditions(obj):
        if c.get("status") not in ("True", "False", "Unknown"):
            problems.append(f"condition {c.get('type')} has status {c.get('status')!r}")
    reconciling = condition_true(obj, "Reconciling")
    stalled = condition_true(obj, "Stalled")
    ready = condition(obj, "Ready")
    if ready is None:
        problems.append("condition Ready is missing")
    if reconciling and stalled:
        problems.append("Reconciling and Stalled are both True")
    if phase in ACTIVE_PHASES:
        if not reconciling and not stalled:
            problems.append(f"phase {phase} without Reconciling=True (Flux would report Current)")
        if is_ready(obj):
            problems.append(f"phase {phase} with Ready=True")
    elif phase == "Succeeded":
        if not is_ready(obj):
            problems.append("phase Succeeded without Ready=True")
        if reconciling or stalled:
            problems.append("phase Succeeded with Reconciling or Stalled True")
        if not _mapping(status.get("image")).get("digest"):
            problems.append("phase Succeeded without status.image.digest")
    elif phase in ("Failed", "Cancelled"):
        if not stalled:
            problems.append(f"phase {phase} without Stalled=True (Flux would report Current)")
        if is_ready(obj):
            problems.append(f"phase {phase} with Ready=True")
    return problems
