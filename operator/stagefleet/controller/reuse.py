"""Stage reuse in the operator: the plan-time lookup (`stagefleet.reuse`, shared with local mode), the
architecture a build's keys are computed for, and how the lookup's outcome is recorded in status.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Mapping
from typing import Any

from stagefleet.controller.model import PlanView
from stagefleet.reuse import (
    LOOKUP_TIMEOUT,
    ClientFor,
    Reuse,
    copy_image,
    find_results,
    lookup,
    machine_arch,
    resolve_images,
)

__all__ = [
    "LOOKUP_TIMEOUT",
    "ClientFor",
    "Reuse",
    "build_arch",
    "build_platform",
    "copy_image",
    "find_results",
    "lookup",
    "mark",
    "recorded",
    "resolve_images",
]


def build_arch(node_selector: Mapping[str, str]) -> str:
    """The architecture a build's keys are computed for: its nodeSelector's ``kubernetes.io/arch``, else the
    operator's own. Workers of keyed groups are held to it with a nodeSelector, so the key says what was
    built (a pod on another architecture's node would build another platform's image)."""
    return node_selector.get("kubernetes.io/arch") or machine_arch(_platform.machine())


def build_platform(platform: str | None, node_selector: Mapping[str, str]) -> str:
    """The platform a build's keys are computed for: the one spec.platforms names, else its nodes'."""
    return platform or f"linux/{build_arch(node_selector)}"


def mark(status: Mapping[str, Any], plan: PlanView, found: Reuse, now: str) -> dict[str, Any]:
    """A planned status (`status.planned_status`) with the lookup's outcome recorded. Pure.

    Every keyed stage's entry gets ``key``; every stage of a found group is Succeeded with ``reused`` (the
    result's digest) and its target the ``image`` and ``digest`` consumers build from, so `status.decide`
    starts no pod for it. The resolved base images go to ``status.baseImages`` (the pins of keyed
    workers), and a short note why stages are not keyed, when some are not, to ``status.reuse``."""
    out = dict(status)
    stages: list[dict[str, Any]] = []
    for e in status.get("stages") or ():
        e = dict(e)
        name = str(e.get("name"))
        result = found.keys.get(name)
        if result is not None and result.key is not None:
            e["key"] = result.key
        gid = str(e.get("group"))
        if gid in found.found:
            digest = found.found[gid]
            e.update({"phase": "Succeeded", "reused": digest, "completionTime": now})
            e.pop("message", None)
            if name == plan.group(gid).target:
                e.update({"digest": digest, "image": found.image[gid]})
        stages.append(e)
    out["stages"] = stages
    if found.bases:
        out["baseImages"] = [{"image": i, "digest": d} for i, d in sorted(found.bases.items())]
    unkeyed = sorted({r.reason for r in found.keys.values() if r.key is None and r.reason})
    out["reuse"] = {
        "keyed": sum(1 for r in found.keys.values() if r.key is not None),
        "reused": sum(len(plan.group(g).stages) for g in found.found),
        **({"notes": [*unkeyed, *found.notes][:10]} if unkeyed or found.notes else {}),
    }
    return out


def recorded(status: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(stage → key, image → digest) as `mark` recorded them in status. Pure."""
    keys = {
        str(e.get("name")): str(e["key"])
        for e in status.get("stages") or ()
        if isinstance(e, Mapping) and isinstance(e.get("key"), str)
    }
    bases = {
        str(b.get("image")): str(b.get("digest"))
        for b in status.get("baseImages") or ()
        if isinstance(b, Mapping) and b.get("image") and b.get("digest")
    }
    return keys, bases
