"""Pure: a build for several platforms (spec.platforms) as one ImageBuild per platform, joined into one index.

An ImageBuild naming two or more platforms plans nothing itself. It owns one child ImageBuild per platform
(`child_manifest`: its spec with that one platform, its output a per-platform tag of the same repository,
held to nodes of that architecture when the cluster has them), which the operator builds like any other:
its own plan, stage reuse, retries, queue place and status. When every child of the current run has
succeeded, the operator writes an OCI image index of their images under each of the parent's tags
(`index_document`) — what `docker buildx build --platform a,b --push` leaves in a registry. The parent's
status says each platform's state and, in the end, the index digest and each platform's (`fan_status`).

Children are the farm's own unit of work, so a platform's build runs on its own nodes at the same time as
the others, and each is as observable (`kubectl get ib`, `stagefleet logs`) as a plain build.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stagefleet.controller import buildphase, clock, report, runs
from stagefleet.controller.model import Event
from stagefleet.controller.podspec import ARCH_LABEL, BuildRef
from stagefleet.imageindex import OCI_INDEX, PlatformImage, fit, index_document, platform_tag

__all__ = [
    "LABEL_PARENT",
    "OCI_INDEX",
    "Child",
    "PlatformImage",
    "child_manifest",
    "child_name",
    "fan_status",
    "index_document",
    "is_child",
    "platform_tag",
    "spec_difference",
]

LABEL_PARENT = "stagefleet.io/platform-of"  # on a child: its parent's name
ANNOTATION_PLATFORM = "stagefleet.io/platform"
# Children are kept while their parent exists (its garbage collection removes them): a child deleted by a
# TTL while its parent still waits would be built again.
CHILD_DROPPED_FIELDS = ("platforms", "ttlSecondsAfterFinished")


def _suffix(platform: str) -> str:
    """linux/arm/v7 → arm-v7: the platform in a name or tag (the OS is always linux here)."""
    return "-".join(platform.split("/")[1:])


def child_name(parent: str, platform: str) -> str:
    """The child ImageBuild of ``platform``, e.g. app-arm64 (a DNS subdomain of at most 253 characters)."""
    return fit(parent, 253, _suffix(platform))


def is_child(meta: Mapping[str, Any]) -> bool:
    return LABEL_PARENT in (meta.get("labels") or {})


def child_manifest(
    parent: Mapping[str, Any], platform: str, native: bool, rebuild: str | None
) -> dict[str, Any]:
    """The child ImageBuild of ``platform``: the parent's spec with that one platform, pushed to
    REPOSITORY:TAG-linux-ARCH; ``native``: nodes of its architecture exist, and its pods go there (else they
    run anywhere and buildah emulates the platform); ``rebuild``: the parent's rebuild request it answers."""
    meta = parent["metadata"]
    spec = json.loads(json.dumps(parent.get("spec") or {}))
    for key in CHILD_DROPPED_FIELDS:
        spec.pop(key, None)
    spec["platforms"] = [platform]
    output = dict(spec.get("output") or {})
    repository, _, tag = str(output.get("image", "")).rpartition(":")
    if "/" in tag or not repository:  # (a port, no tag: parse_spec's default)
        repository, tag = str(output.get("image", "")), "latest"
    output["image"] = f"{repository}:{platform_tag(tag, platform)}"
    output.pop("tags", None)
    spec["output"] = output
    if native:
        selector = dict(spec.get("nodeSelector") or {})
        selector.setdefault(ARCH_LABEL, platform.split("/")[1])
        spec["nodeSelector"] = selector
    annotations = {ANNOTATION_PLATFORM: platform}
    if rebuild is not None:
        annotations[runs.ANNOTATION_REBUILD] = rebuild
    return {
        "apiVersion": parent.get("apiVersion", "stagefleet.io/v1alpha1"),
        "kind": "ImageBuild",
        "metadata": {
            "name": child_name(str(meta["name"]), platform),
            "namespace": meta["namespace"],
            "labels": {LABEL_PARENT: str(meta["name"])},
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": parent.get("apiVersion", "stagefleet.io/v1alpha1"),
                "kind": "ImageBuild",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }],
        },
        "spec": spec,
    }


def owned_by(child: Mapping[str, Any], parent_uid: str) -> bool:
    return any(
        o.get("uid") == parent_uid and o.get("controller")
        for o in (child.get("metadata") or {}).get("ownerReferences") or ()
    )


def placed_natively(child: Mapping[str, Any], arch: str) -> bool:
    """Whether an existing child was held to nodes of its own architecture when it was made."""
    return ((child.get("spec") or {}).get("nodeSelector") or {}).get(ARCH_LABEL) == arch


def _contains(have: Any, want: Any) -> bool:
    """Whether ``have`` holds everything ``want`` says (fields the API server defaulted may be extra)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(_contains(have.get(k), v) for k, v in want.items())
    return bool(have == want)


def spec_difference(child: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that makes an existing child what ``wanted`` says (its spec and annotations); None
    when it already is. A field the parent's spec lost is removed (null) from the child's."""
    have_spec = child.get("spec") or {}
    want_spec = wanted["spec"]
    want_ann = wanted["metadata"]["annotations"]
    have_ann = (child.get("metadata") or {}).get("annotations") or {}
    patch: dict[str, Any] = {}
    if not _contains(have_spec, want_spec) or set(have_spec) - set(want_spec) - _DEFAULTED:
        patch["spec"] = {**{k: None for k in have_spec if k not in want_spec and k not in _DEFAULTED},
                         **want_spec}
    ann = {k: v for k, v in want_ann.items() if have_ann.get(k) != v}
    if runs.ANNOTATION_REBUILD in have_ann and runs.ANNOTATION_REBUILD not in want_ann:
        ann[runs.ANNOTATION_REBUILD] = None
    if ann:
        patch["metadata"] = {"annotations": ann}
    return patch or None


# Spec fields the CRD defaults: a child's copy may have them although the parent's spec came without.
_DEFAULTED = frozenset({"maxParallelPods", "timeout", "suspend", "priority", "retries", "dockerfile"})


@dataclass(frozen=True)
class Child:
    """What the parent knows of one platform's build."""

    platform: str
    name: str
    obj: Mapping[str, Any] | None  # as read (None: not created yet)

    @property
    def status(self) -> Mapping[str, Any]:
        return (self.obj or {}).get("status") or {}

    @property
    def current(self) -> bool:
        """Its status describes its current spec and rebuild request (not an earlier run's)."""
        if self.obj is None:
            return False
        meta = self.obj.get("metadata") or {}
        return not runs.unanswered(meta, self.status) and self.status.get("observedGeneration") == meta.get(
            "generation"
        )

    @property
    def phase(self) -> str:
        if not self.current:
            return buildphase.PENDING
        return str(self.status.get("phase") or buildphase.PENDING)

    def entry(self) -> dict[str, Any]:
        """Its line in the parent's status.platforms."""
        out: dict[str, Any] = {"platform": self.platform, "imageBuild": self.name, "phase": self.phase}
        image = self.status.get("image") or {}
        if self.phase == buildphase.SUCCEEDED and image.get("digest"):
            out["digest"] = image["digest"]
        message = str(self.status.get("message") or "") if self.current else "starting"
        if message and self.phase != buildphase.SUCCEEDED:
            out["message"] = message[:300]
        return out


def _stalled(child: Child) -> str | None:
    for c in child.status.get("conditions") or ():
        if child.current and c.get("type") == "Stalled" and c.get("status") == "True":
            return str(c.get("message") or c.get("reason") or "stalled")
    return None


def fan_status(
    *,
    build: BuildRef,
    spec_suspend: bool,
    status: Mapping[str, Any],
    children: Sequence[Child],
    image: str,
    tags: Sequence[str],
    index_digest: str | None,
    failure: str | None,
    now: datetime,
) -> tuple[dict[str, Any], list[Event]]:
    """The parent's status from its children's: Failed when one failed (or ``failure``, e.g. the index could
    not be written), Cancelled when one was, Succeeded once ``index_digest`` (the index under every tag) is
    known, Building otherwise. Pure."""
    old_conditions: Sequence[Mapping[str, Any]] = status.get("conditions") or ()
    entries = [c.entry() for c in children]
    events: list[Event] = []
    phases = [c.phase for c in children]
    failed = next((c for c in children if c.phase == buildphase.FAILED), None)
    cancelled = next((c for c in children if c.phase == buildphase.CANCELLED), None)
    stalled = [(c, why) for c in children if (why := _stalled(c)) is not None]
    done = sum(1 for p in phases if p == buildphase.SUCCEEDED)
    if failure is not None or failed is not None:
        phase, reason = buildphase.FAILED, "BuildFailed"
        if failed is not None:
            failure = (f"platform {failed.platform} (ImageBuild {failed.name}) failed: "
                       f"{failed.status.get('message') or 'failed'}")
        message = str(failure)
    elif cancelled is not None:
        phase, reason = buildphase.CANCELLED, str(_reason(cancelled) or "Cancelled")
        message = (f"platform {cancelled.platform} (ImageBuild {cancelled.name}): "
                   f"{cancelled.status.get('message') or 'cancelled'}")
    elif index_digest is not None:
        phase, reason = buildphase.SUCCEEDED, "Succeeded"
        message = f"built {image}@{index_digest} ({', '.join(c.platform for c in children)})"
    else:
        phase, reason = buildphase.BUILDING, "Building"
        message = "; ".join(f"{c.platform}: {c.phase}" + (f" ({e['message']})" if e.get("message") else "")
                            for c, e in zip(children, entries, strict=True))
        if spec_suspend:
            reason = buildphase.SUSPENDED
        elif done == len(children):
            message = f"writing the image index of {done} platforms"
    run = build.run
    observed = run.generation if run else build.generation
    # (Times of an earlier run are not this run's: a spec edit or rebuild starts the clock again.)
    same_run = runs.run_of(status) == build.generation
    new: dict[str, Any] = {k: v for k, v in status.items() if k == "lastSucceeded"}
    new.update({
        "phase": phase,
        "observedGeneration": observed,
        "message": message,
        "startTime": (status.get("startTime") if same_run else None) or clock.fmt_time(now),
        "platforms": entries,
        "progress": f"{done}/{len(children)}",
        "conditions": report.conditions(
            phase, reason, message, observed, old_conditions, now,
            stalled=bool(stalled) and phase not in buildphase.TERMINAL and not spec_suspend,
        ),
    })
    if run:
        new.update(run.fields())
    if stalled and phase not in buildphase.TERMINAL:
        c, why = stalled[0]
        new["message"] = f"{message}; platform {c.platform} (ImageBuild {c.name}) is stalled: {why}"
    if phase in buildphase.TERMINAL:
        kept = same_run and status.get("phase") == phase
        new["completionTime"] = (status.get("completionTime") if kept else None) or clock.fmt_time(now)
    if phase == buildphase.SUCCEEDED and index_digest is not None:
        new["image"] = {
            "name": image,
            "digest": index_digest,
            "short": index_digest[:19],
            "tags": list(tags),
            "platforms": [{"platform": e["platform"], "digest": e.get("digest", "")} for e in entries],
        }
    if phase == buildphase.FAILED:
        new["failure"] = {"message": message, **({"platform": failed.platform} if failed else {})}
    if status.get("phase") != phase:
        if phase == buildphase.SUCCEEDED:
            events.append(Event("Normal", "BuildSucceeded", message))
        elif phase == buildphase.FAILED:
            events.append(Event("Warning", "BuildFailed", message))
        elif phase == buildphase.CANCELLED:
            events.append(Event("Warning", "BuildCancelled", message))
    return new, events


def _reason(child: Child) -> str | None:
    for c in child.status.get("conditions") or ():
        if c.get("type") == "Ready":
            return str(c.get("reason") or "") or None
    return None
