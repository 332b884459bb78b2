"""The CRD's status schema as the API server applies it: a field it does not declare is pruned on write
(status has no x-kubernetes-preserve-unknown-fields, so `kubectl explain` documents every field), and a
value of another type is refused. `undeclared` finds both in a status the operator would write."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

CRD = Path(__file__).resolve().parents[2] / "crds" / "imagebuild.yaml"


@cache
def status_schema() -> dict[str, Any]:
    doc = yaml.safe_load(CRD.read_text())
    return dict(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"])


def _type_ok(value: Any, kind: str | None) -> bool:
    if kind is None:
        return True
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return {"string": str, "boolean": bool, "object": dict, "array": list}[kind] is type(value) or (
        kind == "object" and isinstance(value, dict)
    )


def undeclared(value: Any, schema: dict[str, Any] | None = None, path: str = "status") -> list[str]:
    """Paths in ``value`` the schema would prune (not declared) or refuse (another type)."""
    schema = status_schema() if schema is None else schema
    if value is None:
        return [f"{path}: null"]
    if not _type_ok(value, schema.get("type")):
        return [f"{path}: {type(value).__name__} where the CRD says {schema.get('type')}"]
    problems: list[str] = []
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                problems += undeclared(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                problems += undeclared(item, extra, f"{path}.{key}")
            else:
                problems.append(f"{path}.{key}: not declared (pruned)")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += undeclared(item, schema["items"], f"{path}[{i}]")
    return problems
