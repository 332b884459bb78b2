"""JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch and server-side apply merging.

Strategic merge knows list merge keys by field name (containers by name, ports by containerPort, ...): the
same keys the Kubernetes Go types declare for the fields kubectl patches in practice.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .errors import ApiError, bad_request

MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "secrets": "name",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
}


def apply_merge(target: Any, applied: Any) -> Any:
    """Server-side apply merge for custom resources: maps merge recursively, lists and scalars replace."""
    if not isinstance(applied, dict) or not isinstance(target, dict):
        return copy.deepcopy(applied)
    result = copy.deepcopy(target)
    for key, value in applied.items():
        result[key] = apply_merge(result.get(key), value)
    return result


def merge_key(field: str, items: list[Any]) -> str:
    """The merge key of a list field; `ports` is keyed by containerPort in pods, by port in services."""
    if field == "ports" and not any(isinstance(i, dict) and "containerPort" in i for i in items):
        return "port"
    return MERGE_KEYS.get(field, "name")


# List fields merged as sets of primitives (patchStrategy:"merge" on []string).
PRIMITIVE_MERGE = {"finalizers"}


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, list):
            cur = cur[int(p)]
        elif isinstance(cur, dict) and p in cur:
            cur = cur[p]
        else:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: "
                f"doc is missing path: /{'/'.join(parts)}",
            )
    return cur


def _get(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return doc
    parent = _parent(doc, parts)
    last = parts[-1]
    try:
        return parent[int(last)] if isinstance(parent, list) else parent[last]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ApiError(422, "Invalid", f"doc is missing key: /{'/'.join(parts)}") from None


def _remove(doc: Any, parts: list[str]) -> Any:
    value = _get(doc, parts)
    parent = _parent(doc, parts)
    if isinstance(parent, list):
        del parent[int(parts[-1])]
    else:
        del parent[parts[-1]]
    return value


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _parent(doc, parts)
    last = parts[-1]
    if isinstance(parent, list):
        idx = len(parent) if last == "-" else int(last)
        if idx > len(parent):
            raise ApiError(422, "Invalid", f"index out of range: {idx}")
        parent.insert(idx, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise ApiError(422, "Invalid", f"cannot add at /{'/'.join(parts)}")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _get(doc, parts)
            if parts:
                _remove(doc, parts)
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = _remove(doc, src) if kind == "move" else copy.deepcopy(_get(doc, src))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _get(doc, parts) != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value /{'/'.join(parts)} failed")
        else:
            raise bad_request(f"unknown json patch op {kind!r}")
    return doc


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge patch for built-in kinds: directives $patch, $setElementOrder, $retainKeys,
    $deleteFromPrimitiveList are honoured or tolerated."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, merge_key(key, value + result[key]))
        elif isinstance(value, list) and key in PRIMITIVE_MERGE and isinstance(result.get(key), list):
            result[key] = result[key] + [v for v in value if v not in result[key]]
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        before = target if isinstance(target, dict) else {}
        result = {k: v for k, v in result.items() if k in retain or k not in before or k in patch}
    return result


def _merge_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            out.append(copy.deepcopy(item))
            continue
        idx = next((i for i, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif idx is None:
            out.append({k: v for k, v in copy.deepcopy(item).items() if k != "$patch"})
        else:
            out[idx] = strategic_merge(out[idx], item)
    return out


# -- server-side apply -------------------------------------------------------------------------------------


def field_set(obj: Any, prefix: tuple[str, ...] = (), *, keyed: bool = True) -> set[tuple[str, ...]]:
    """Leaf and list-item paths an applied configuration sets (lists with a merge key are per item unless
    `keyed` is off: custom resources apply their lists atomically here)."""
    paths: set[tuple[str, ...]] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = prefix + (k,)
            paths.add(p)
            if isinstance(v, dict):
                paths |= field_set(v, p, keyed=keyed)
            elif keyed and isinstance(v, list) and k in MERGE_KEYS:
                mk = merge_key(k, v)
                for item in v:
                    if isinstance(item, dict) and mk in item:
                        ip = p + (f"[{item[mk]}]",)
                        paths.add(ip)
                        paths |= field_set(item, ip)
    return paths


def value_at(obj: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    """The value at a field_set path (list items addressed as "[key]"), and whether it exists."""
    cur = obj
    for i, part in enumerate(path):
        if part.startswith("[") and isinstance(cur, list):
            key = merge_key(path[i - 1], cur)
            cur = next((c for c in cur if isinstance(c, dict) and str(c.get(key)) == part[1:-1]), None)
            if cur is None:
                return False, None
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return False, None
    return True, cur


def remove_paths(obj: Any, paths: set[tuple[str, ...]]) -> Any:
    """Drop fields a manager applied before but no longer applies (deepest first)."""
    for path in sorted(paths, key=len, reverse=True):
        _remove_path(obj, path)
    return obj


def _remove_path(obj: Any, path: tuple[str, ...]) -> None:
    cur = obj
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if part.startswith("[") and isinstance(cur, list):
            key = merge_key(path[i - 1], cur)
            idx = next(
                (j for j, c in enumerate(cur) if isinstance(c, dict) and str(c.get(key)) == part[1:-1]), None
            )
            if idx is None:
                return
            if last:
                del cur[idx]
                return
            cur = cur[idx]
        elif isinstance(cur, dict) and part in cur:
            if last:
                del cur[part]
                return
            cur = cur[part]
        else:
            return


def fields_v1(obj: Any) -> dict[str, Any]:
    """managedFields fieldsV1 for an applied configuration (f:field / k:{key} notation)."""
    out: dict[str, Any] = {}
    if not isinstance(obj, dict):
        return out
    for k, v in obj.items():
        if k in ("apiVersion", "kind"):
            continue
        if isinstance(v, dict):
            out[f"f:{k}"] = fields_v1(v) or {}
            if not v:
                out[f"f:{k}"] = {}
            else:
                out[f"f:{k}"]["."] = {}
        elif isinstance(v, list) and k in MERGE_KEYS:
            items: dict[str, Any] = {}
            mk = merge_key(k, v)
            for item in v:
                if isinstance(item, dict) and mk in item:
                    sub = fields_v1(item)
                    sub["."] = {}
                    items["k:" + json.dumps({mk: item[mk]}, separators=(",", ":"))] = sub
            out[f"f:{k}"] = items
        else:
            out[f"f:{k}"] = {}
    return out
