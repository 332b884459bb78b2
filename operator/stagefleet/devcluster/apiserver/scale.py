"""The `scale` subresource (autoscaling/v1 Scale) over an object's replicas, for `kubectl scale`."""

from __future__ import annotations

import copy
import json
from typing import Any

from . import errors, patching
from .api import Core, WriteOptions
from .resources import ResourceType


def _path(path: str) -> list[str]:
    return [p for p in path.split(".") if p]


def _read(obj: Any, path: str) -> Any:
    for part in _path(path):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _selector(obj: dict[str, Any], rt: ResourceType) -> str:
    if rt.is_custom:
        return str(_read(obj, rt.scale_paths[2]) or "")
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def to_scale(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    keep = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in keep if k in meta},
        "spec": {"replicas": _read(obj, rt.scale_paths[0]) or 0},
        "status": {"replicas": _read(obj, rt.scale_paths[1]) or 0, "selector": _selector(obj, rt)},
    }


def write(
    core: Core, rt: ResourceType, ns: str, name: str, method: str, ctype: str, raw: bytes, opts: WriteOptions
) -> dict[str, Any]:
    """PUT or PATCH a Scale: only spec.replicas reaches the object (resourceVersion is a precondition)."""
    obj = core.get(rt, ns, name)
    current = to_scale(rt, obj)
    if method == "PUT":
        try:
            new = json.loads(raw)
        except ValueError:
            raise errors.bad_request("invalid Scale body") from None
    elif ctype.startswith("application/json-patch+json"):
        new = patching.json_patch(current, json.loads(raw))
    else:
        new = patching.merge_patch(current, json.loads(raw))
    rv = (new.get("metadata") or {}).get("resourceVersion")
    if rv and rv != obj["metadata"]["resourceVersion"]:
        raise errors.conflict(rt, name)
    replicas = (new.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise errors.invalid(
            rt,
            name,
            [
                errors.cause(
                    "spec.replicas", f"Invalid value: {replicas!r}: must be greater than or equal to 0"
                )
            ],
        )
    updated = copy.deepcopy(obj)
    cur: dict[str, Any] = updated
    parts = _path(rt.scale_paths[0])
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = replicas
    return to_scale(rt, core.update(rt, ns, name, updated, opts=opts))
