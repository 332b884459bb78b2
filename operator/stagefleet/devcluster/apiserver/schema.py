"""CRD structural-schema admission: pruning, defaulting, validation and x-kubernetes-validations (CEL).

Error texts and field paths follow the apiserver so that clients and people read them the same way.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Mapping
from typing import Any

from . import errors
from .errors import ApiError, cause
from .resources import ResourceType

Schema = Mapping[str, Any]
_ROOT_KEEP = ("apiVersion", "kind", "metadata")
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def _type_ok(value: Any, typ: str) -> bool:
    if typ == "integer":
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            or (isinstance(value, float) and value.is_integer())
        )
    if typ == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = _TYPES.get(typ)
    return expected is None or isinstance(value, expected)


class _Checker:
    def __init__(self) -> None:
        self.causes: list[dict[str, str]] = []
        self.unknown: list[str] = []

    def fail(self, path: str, message: str, reason: str = "FieldValueInvalid") -> None:
        self.causes.append(cause(path, message, reason))

    # pruning + defaulting ---------------------------------------------------------------------------------
    def shape(self, value: Any, sch: Schema, path: str, root: bool = False) -> Any:
        """Drop unknown fields, apply defaults; returns the new value."""
        if isinstance(value, dict) and (
            sch.get("type") == "object" or "properties" in sch or "additionalProperties" in sch or root
        ):
            props: Mapping[str, Any] = sch.get("properties") or {}
            addl = sch.get("additionalProperties")
            preserve = sch.get("x-kubernetes-preserve-unknown-fields") is True
            embedded = sch.get("x-kubernetes-embedded-resource") is True
            out: dict[str, Any] = {}
            for k, v in value.items():
                sub = f"{path}.{k}" if path else k
                if k in props:
                    if v is None and not props[k].get("nullable"):
                        continue
                    out[k] = self.shape(v, props[k], sub)
                elif isinstance(addl, dict):
                    out[k] = self.shape(v, addl, sub)
                elif preserve or addl is True or ((root or embedded) and k in _ROOT_KEEP):
                    out[k] = v
                else:
                    self.unknown.append(sub)
            for k, psch in props.items():
                if k not in out and "default" in psch:
                    out[k] = self.shape(copy.deepcopy(psch["default"]), psch, f"{path}.{k}" if path else k)
            return out
        if isinstance(value, list) and isinstance(sch.get("items"), dict):
            return [self.shape(v, sch["items"], f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    # validation -------------------------------------------------------------------------------------------
    def check(self, value: Any, sch: Schema, path: str, old: Any = None, has_old: bool = False) -> None:
        if value is None:
            if not sch.get("nullable"):
                self.fail(
                    path,
                    f'Invalid value: "null": {path} in body must be of type '
                    f'{sch.get("type", "object")}: "null"',
                    "FieldValueTypeInvalid",
                )
            return
        typ = sch.get("type")
        if sch.get("x-kubernetes-int-or-string"):
            if not (isinstance(value, (int, str)) and not isinstance(value, bool)):
                self.fail(
                    path,
                    f"Invalid value: {_show(value)}: {path} in body must be of type integer-or-string",
                    "FieldValueTypeInvalid",
                )
                return
        elif typ and not _type_ok(value, typ):
            self.fail(
                path,
                f'Invalid value: {_show(value)}: {path} in body must be of type {typ}: "{_json_type(value)}"',
                "FieldValueTypeInvalid",
            )
            return
        self._scalar_rules(value, sch, path)
        if isinstance(value, dict):
            props = sch.get("properties") or {}
            for req in sch.get("required") or []:
                if req not in value:
                    self.fail(f"{path}.{req}" if path else req, "Required value", "FieldValueRequired")
            for k, v in value.items():
                sub = f"{path}.{k}" if path else k
                osub = old.get(k) if has_old and isinstance(old, dict) else None
                ohas = has_old and isinstance(old, dict) and k in old
                if k in props:
                    self.check(v, props[k], sub, osub, ohas)
                elif isinstance(sch.get("additionalProperties"), dict):
                    self.check(v, sch["additionalProperties"], sub, osub, ohas)
            if "maxProperties" in sch and len(value) > sch["maxProperties"]:
                self.fail(
                    path,
                    f"Too many: {len(value)}: must have at most {sch['maxProperties']} items",
                    "FieldValueTooMany",
                )
        if isinstance(value, list) and isinstance(sch.get("items"), dict):
            for i, v in enumerate(value):
                self.check(v, sch["items"], f"{path}[{i}]")
        self._cel(value, sch, path, old, has_old)

    def _scalar_rules(self, value: Any, sch: Schema, path: str) -> None:
        shown = _show(value)
        if "enum" in sch and value not in sch["enum"]:
            supported = ", ".join(_show(e) for e in sch["enum"])
            self.fail(
                path, f"Unsupported value: {shown}: supported values: {supported}", "FieldValueNotSupported"
            )
        if isinstance(value, str):
            if "pattern" in sch and not re.search(sch["pattern"], value):
                self.fail(path, f"Invalid value: {shown}: {path} in body should match '{sch['pattern']}'")
            if "minLength" in sch and len(value) < sch["minLength"]:
                self.fail(
                    path,
                    f"Invalid value: {shown}: {path} in body should be at least "
                    f"{sch['minLength']} chars long",
                )
            if "maxLength" in sch and len(value) > sch["maxLength"]:
                self.fail(
                    path, f"Too long: may not be more than {sch['maxLength']} bytes", "FieldValueTooLong"
                )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in sch and (
                value < sch["minimum"] or (sch.get("exclusiveMinimum") is True and value == sch["minimum"])
            ):
                op = "greater than" if sch.get("exclusiveMinimum") is True else "greater than or equal to"
                self.fail(path, f"Invalid value: {shown}: {path} in body should be {op} {sch['minimum']}")
            if "maximum" in sch and (
                value > sch["maximum"] or (sch.get("exclusiveMaximum") is True and value == sch["maximum"])
            ):
                op = "less than" if sch.get("exclusiveMaximum") is True else "less than or equal to"
                self.fail(path, f"Invalid value: {shown}: {path} in body should be {op} {sch['maximum']}")
        if isinstance(value, list):
            if "minItems" in sch and len(value) < sch["minItems"]:
                self.fail(
                    path,
                    f"Invalid value: {len(value)}: {path} in body should have at least "
                    f"{sch['minItems']} items",
                )
            if "maxItems" in sch and len(value) > sch["maxItems"]:
                self.fail(
                    path,
                    f"Too many: {len(value)}: must have at most {sch['maxItems']} items",
                    "FieldValueTooMany",
                )
            self._unique_items(value, sch, path)

    def _unique_items(self, value: list[Any], sch: Schema, path: str) -> None:
        """list-type set: items unique; list-type map: the list-map-keys unique, as the apiserver checks."""
        kind = sch.get("x-kubernetes-list-type")
        keys = list(sch.get("x-kubernetes-list-map-keys") or [])
        seen: set[str] = set()
        for i, item in enumerate(value):
            if kind == "set":
                ident, shown = json.dumps(item, sort_keys=True), _show(item)
            elif kind == "map" and keys and isinstance(item, dict):
                picked = {k: item.get(k) for k in keys}
                ident = json.dumps(picked, sort_keys=True)
                shown = "map[string]interface {}{" + ", ".join(
                    f'"{k}":{json.dumps(v)}' for k, v in picked.items()
                )
                shown += "}"
            else:
                continue
            if ident in seen:
                self.fail(f"{path}[{i}]", f"Duplicate value: {shown}", "FieldValueDuplicate")
            seen.add(ident)

    def _cel(self, value: Any, sch: Schema, path: str, old: Any, has_old: bool) -> None:
        rules = sch.get("x-kubernetes-validations") or []
        if not rules:
            return
        from . import cel

        for rule in rules:
            expr = rule.get("rule", "")
            if "oldSelf" in expr and not has_old and not rule.get("optionalOldSelf"):
                continue
            # the apiserver shows the schema's type as the value ("object", "string"), never the data
            shown = json.dumps(sch.get("type") or "")
            try:
                ok = cel.evaluate(expr, {"self": value, "oldSelf": old if has_old else None})
            except cel.CELError as e:
                self.fail(path, f"Invalid value: {shown}: rule compile/eval error: {e}")
                continue
            if ok is True:
                continue
            message = rule.get("message") or f"failed rule: {expr}"
            if rule.get("messageExpression"):
                with contextlib.suppress(cel.CELError):
                    message = str(cel.evaluate(rule["messageExpression"], {"self": value}))
            field = path
            if rule.get("fieldPath"):
                field = path + rule["fieldPath"] if path else rule["fieldPath"].lstrip(".")
            reason = {
                "FieldValueRequired": "FieldValueRequired",
                "FieldValueForbidden": "FieldValueForbidden",
                "FieldValueDuplicate": "FieldValueDuplicate",
            }.get(rule.get("reason", ""), "FieldValueInvalid")
            if reason == "FieldValueInvalid":
                self.fail(field, f"Invalid value: {shown}: {message}", reason)
            else:
                self.fail(field, message, reason)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def admit_custom(
    rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, field_validation: str
) -> list[str]:
    """Prune, default and validate a custom resource in place; returns warnings (unknown fields)."""
    sch = rt.schema
    if not sch:
        return []
    checker = _Checker()
    shaped = checker.shape(obj, sch, "", root=True)
    obj.clear()
    obj.update(shaped)
    name = obj.get("metadata", {}).get("name", "")
    if checker.unknown and field_validation == "Strict":
        fields = ", ".join(f'unknown field "{u}"' for u in checker.unknown)
        raise ApiError(
            400,
            "BadRequest",
            f'{rt.kind} in version "{rt.version}" cannot be handled as a '
            f"{rt.kind}: strict decoding error: {fields}",
        )
    body = {k: v for k, v in obj.items() if k not in _ROOT_KEEP}
    props = sch.get("properties") or {}
    for req in sch.get("required") or []:
        if req not in obj:
            checker.fail(req, "Required value", "FieldValueRequired")
    old_body = {k: v for k, v in (old or {}).items() if k not in _ROOT_KEEP}
    for k, v in body.items():
        if k in props:
            checker.check(v, props[k], k, old_body.get(k), k in old_body)
    root_rules = {"x-kubernetes-validations": sch.get("x-kubernetes-validations") or []}
    checker._cel(obj, root_rules, "", old, old is not None)
    if checker.causes:
        raise errors.invalid(rt, name, checker.causes)
    if field_validation == "Warn":
        return [f'unknown field "{u}"' for u in checker.unknown]
    return []


def _rule_causes(sch: Schema, path: str) -> list[dict[str, str]]:
    """x-kubernetes-validations rules that do not compile: the apiserver refuses the CRD, naming the rule."""
    from . import cel

    out: list[dict[str, str]] = []
    for i, rule in enumerate(sch.get("x-kubernetes-validations") or []):
        where = f"{path}.x-kubernetes-validations[{i}].rule"
        expr = rule.get("rule") if isinstance(rule, Mapping) else None
        if not expr:
            out.append(cause(where, "Required value", "FieldValueRequired"))
            continue
        try:
            cel.compile_expr(str(expr))
        except cel.CELError as e:
            out.append(cause(where, f"Invalid value: {_show(expr)}: compilation failed: {e}"))
    for key, sub in (sch.get("properties") or {}).items():
        if isinstance(sub, Mapping):
            out += _rule_causes(sub, f"{path}.properties[{key}]")
    for key in ("items", "additionalProperties"):
        if isinstance(sch.get(key), Mapping):
            out += _rule_causes(sch[key], f"{path}.{key}")
    return out


def admit_crd(rt: ResourceType, crd: dict[str, Any]) -> None:
    """The checks on a CRD that catch real mistakes: name = plural.group, one storage version, CEL rules
    that compile."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    name = crd.get("metadata", {}).get("name", "")
    causes = []
    if name != f"{names.get('plural')}.{spec.get('group')}":
        causes.append(
            cause("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
        )
    if not names.get("kind"):
        causes.append(cause("spec.names.kind", "Required value", "FieldValueRequired"))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(
            cause(
                "spec.versions",
                "Invalid value: null: must have exactly one version marked as storage version",
            )
        )
    elif sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(
            cause("spec.versions", "Invalid value: must have exactly one version marked as storage version")
        )
    for i, version in enumerate(versions):
        sch = ((version or {}).get("schema") or {}).get("openAPIV3Schema")
        if isinstance(sch, Mapping):
            causes += _rule_causes(sch, f"spec.versions[{i}].schema.openAPIV3Schema")
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            cause(
                "spec.scope",
                f'Unsupported value: {_show(spec.get("scope"))}: supported values: "Cluster", "Namespaced"',
                "FieldValueNotSupported",
            )
        )
    if causes:
        raise errors.invalid(rt, name, causes)
    spec.setdefault("conversion", {"strategy": "None"})
    names.setdefault("singular", names.get("kind", "").lower())
    names.setdefault("listKind", names.get("kind", "") + "List")
