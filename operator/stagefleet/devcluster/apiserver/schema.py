"""CRD structural-schema admission: pruning, defaulting, validation and x-kubernetes-validations (CEL).

Error texts and field paths follow kube-apiserver 1.24 (the real test tier) so that clients and people read
them the same way on both tiers; see `_Checker` for its quirks.
"""

from __future__ import annotations

import copy
import decimal
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from . import errors
from .errors import cause
from .resources import ResourceType

Schema = Mapping[str, Any]
_ROOT_KEEP = ("apiVersion", "kind", "metadata")


def go_value(value: Any) -> str:
    """A value as kube-apiserver's field errors print it (`Invalid value: <this>`): numbers and booleans
    plain, strings quoted, null as "null", lists and maps in Go syntax (`map[string]interface {}{"a":1}`)."""
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_quote(value)
    return _go_sharp(value)


def _go_quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _go_float(f: float) -> str:
    """Go's %v of a float64: the shortest digits that read back, in e-notation when the decimal exponent is
    below -4 or 6 and more (1e+06, 1.5e-05)."""
    if f != f:
        return "NaN"
    if f in (math.inf, -math.inf):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "0"
    sign, digits, exponent = decimal.Decimal(repr(f)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    exp = len(digits) + int(exponent) - 1  # of the first digit
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{minus}0.{'0' * (-exp - 1)}{text}"
    whole = text.ljust(exp + 1, "0")
    frac = text[exp + 1 :]
    return f"{minus}{whole[: exp + 1]}{'.' + frac if frac else ''}"


def _go_sharp(value: Any) -> str:
    """Go's %#v of a decoded JSON value."""
    if value is None:
        return "interface {}(nil)"
    if isinstance(value, dict):
        inner = ", ".join(f"{_go_quote(str(k))}:{_go_sharp(value[k])}" for k in sorted(value))
        return "map[string]interface {}{" + inner + "}"
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(_go_sharp(v) for v in value) + "}"
    return go_value(value)


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


def _bound(value: Any, bound: Any) -> str:
    """A schema bound as the apiserver prints it: as an integer when checking an integer."""
    if isinstance(value, int) and float(bound).is_integer():
        return str(int(bound))
    return _go_float(float(bound)) if isinstance(bound, float) else str(bound)


def _enum_has(enum: list[Any], value: Any) -> bool:
    for e in enum:
        if isinstance(e, bool) or isinstance(value, bool):
            if type(e) is type(value) and e == value:
                return True
        elif e == value:
            return True
    return False


class _Checker:
    """kube-apiserver 1.24's checks of a custom resource: first the OpenAPI schema (kube-openapi's
    validator), then list-type uniqueness, then x-kubernetes-validations (CEL), each group in its words.

    The OpenAPI validator has quirks clients see: inside arrays it reports the array's path without an
    index (`spec.tags` for `spec.tags[1]`, `spec.secrets.secretRef.key`); it keeps one error per distinct
    text, and as its texts leave out the value, two bad items of one list give one error; a string reports
    only its first failing check (maxLength, minLength, pattern); min/maxProperties stop the object's other
    checks. CEL and uniqueness errors do carry indexes (`spec.tolerations[0]`, map keys as `spec.m[k]`)."""

    def __init__(self) -> None:
        self.schema_errors: list[dict[str, str]] = []
        self.duplicates: list[dict[str, str]] = []
        self.cel_errors: list[dict[str, str]] = []
        self._seen: set[str] = set()

    @property
    def causes(self) -> list[dict[str, str]]:
        return self.schema_errors + self.duplicates + self.cel_errors

    def _schema_error(self, text: str, path: str, message: str, reason: str = "FieldValueInvalid") -> None:
        """One kube-openapi error, whose text (`text`, without the value) is reported once."""
        if text not in self._seen:
            self._seen.add(text)
            self.schema_errors.append(cause(path, message, reason))

    def _invalid(self, path: str, value: Any, detail: str) -> None:
        text = f"{path} in body {detail}"
        self._schema_error(text, path, f"Invalid value: {go_value(value)}: {text}")

    # pruning + defaulting ---------------------------------------------------------------------------------
    def shape(self, value: Any, sch: Schema, root: bool = False) -> Any:
        """Drop unknown fields and nulls of non-nullable fields, apply defaults; returns the new value."""
        if isinstance(value, dict) and (
            sch.get("type") == "object" or "properties" in sch or "additionalProperties" in sch or root
        ):
            props: Mapping[str, Any] = sch.get("properties") or {}
            addl = sch.get("additionalProperties")
            preserve = sch.get("x-kubernetes-preserve-unknown-fields") is True
            embedded = sch.get("x-kubernetes-embedded-resource") is True
            out: dict[str, Any] = {}
            for k, v in value.items():
                if k in props:
                    if v is None and not props[k].get("nullable"):
                        continue
                    out[k] = self.shape(v, props[k])
                elif isinstance(addl, dict):
                    if v is None and not addl.get("nullable"):
                        continue
                    out[k] = self.shape(v, addl)
                elif preserve or addl is True or ((root or embedded) and k in _ROOT_KEEP):
                    out[k] = v
            for k, psch in props.items():
                if k not in out and "default" in psch:
                    out[k] = self.shape(copy.deepcopy(psch["default"]), psch)
            return out
        if isinstance(value, list) and isinstance(sch.get("items"), dict):
            return [self.shape(v, sch["items"]) for v in value]
        return value

    # OpenAPI schema (kube-openapi's SchemaValidator) --------------------------------------------------------
    def openapi(self, value: Any, sch: Schema, path: str) -> None:
        types = (
            ["integer", "string"]
            if sch.get("x-kubernetes-int-or-string")
            else ([sch["type"]] if sch.get("type") else [])
        )
        if value is None:
            if types and not sch.get("nullable"):
                self._invalid(path, "null", f'must be of type {",".join(types)}: "null"')
            self._enum(value, sch, path)
            return
        actual = _json_type(value)
        if (
            types
            and actual not in types
            and not (actual == "number" and "integer" in types and float(value).is_integer())
            and not (actual == "integer" and "number" in types)
        ):
            self._invalid(path, actual, f'must be of type {",".join(types)}: "{actual}"')
        if isinstance(value, str):
            self._string(value, sch, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self._number(value, sch, path)
        elif isinstance(value, list):
            if isinstance(sch.get("items"), Mapping):
                for item in value:
                    self.openapi(item, sch["items"], path)  # the array's path: no index
            if "minItems" in sch and len(value) < sch["minItems"]:
                self._invalid(path, len(value), f"should have at least {sch['minItems']} items")
            if "maxItems" in sch and len(value) > sch["maxItems"]:
                self._invalid(path, len(value), f"should have at most {sch['maxItems']} items")
        self._enum(value, sch, path)
        if isinstance(value, dict):
            self._object(value, sch, path)

    def _string(self, value: str, sch: Schema, path: str) -> None:
        if "maxLength" in sch and len(value) > sch["maxLength"]:
            self._invalid(path, value, f"should be at most {sch['maxLength']} chars long")
        elif "minLength" in sch and len(value) < sch["minLength"]:
            self._invalid(path, value, f"should be at least {sch['minLength']} chars long")
        elif "pattern" in sch and not re.search(sch["pattern"], value):
            self._invalid(path, value, f"should match '{sch['pattern']}'")

    def _number(self, value: float, sch: Schema, path: str) -> None:
        factor = sch.get("multipleOf")
        if factor and not (value / factor).is_integer():
            self._invalid(path, value, f"should be a multiple of {_bound(value, factor)}")
        if "minimum" in sch:
            low, excl = sch["minimum"], sch.get("exclusiveMinimum") is True
            if value < low or (excl and value == low):
                op = "greater than" if excl else "greater than or equal to"
                self._invalid(path, value, f"should be {op} {_bound(value, low)}")
        if "maximum" in sch:
            high, excl = sch["maximum"], sch.get("exclusiveMaximum") is True
            if value > high or (excl and value == high):
                op = "less than" if excl else "less than or equal to"
                self._invalid(path, value, f"should be {op} {_bound(value, high)}")

    def _enum(self, value: Any, sch: Schema, path: str) -> None:
        enum = sch.get("enum")
        if not enum or _enum_has(list(enum), value):
            return
        supported = ", ".join(_go_quote(e if isinstance(e, str) else json.dumps(e)) for e in enum)
        self._schema_error(
            f"{path} in body should be one of {json.dumps(enum)}",
            path,
            f"Unsupported value: {go_value(value)}: supported values: {supported}",
            "FieldValueNotSupported",
        )

    def _object(self, value: dict[str, Any], sch: Schema, path: str) -> None:
        if "minProperties" in sch and len(value) < sch["minProperties"]:
            self._invalid(
                path, sch["minProperties"], f"should have at least {sch['minProperties']} properties"
            )
            return
        if "maxProperties" in sch and len(value) > sch["maxProperties"]:
            self._invalid(
                path, sch["maxProperties"], f"should have at most {sch['maxProperties']} properties"
            )
            return
        props = sch.get("properties") or {}
        addl = sch.get("additionalProperties")
        for k, v in value.items():
            if k not in props and isinstance(addl, Mapping):
                self.openapi(v, addl, f"{path}.{k}" if path else k)
        for k, psch in props.items():
            if k in value:
                self.openapi(value[k], psch, f"{path}.{k}" if path else k)
        for req in sch.get("required") or []:
            if req not in value:
                field = f"{path}.{req}" if path else req
                self._schema_error(
                    f"{field} in body is required", field, "Required value", "FieldValueRequired"
                )

    # list-type uniqueness ---------------------------------------------------------------------------------
    def unique(self, value: Any, sch: Schema, path: str) -> None:
        """list-type set: items unique; list-type map: the list-map-keys unique (indexed paths)."""
        if isinstance(value, dict):
            props = sch.get("properties") or {}
            addl = sch.get("additionalProperties")
            for k, v in value.items():
                if k in props:
                    self.unique(v, props[k], f"{path}.{k}" if path else k)
                elif isinstance(addl, Mapping):
                    self.unique(v, addl, f"{path}.{k}" if path else k)
            return
        if not isinstance(value, list):
            return
        kind = sch.get("x-kubernetes-list-type")
        keys = list(sch.get("x-kubernetes-list-map-keys") or [])
        seen: set[str] = set()
        for i, item in enumerate(value):
            ident = None
            if kind == "set":
                ident, shown = json.dumps(item, sort_keys=True), go_value(item)
            elif kind == "map" and keys and isinstance(item, dict):
                picked = {k: item.get(k) for k in keys}
                ident, shown = json.dumps(picked, sort_keys=True), _go_sharp(picked)
            if ident is not None:
                if ident in seen:
                    self.duplicates.append(
                        cause(f"{path}[{i}]", f"Duplicate value: {shown}", "FieldValueDuplicate")
                    )
                seen.add(ident)
        if isinstance(sch.get("items"), Mapping):
            for i, item in enumerate(value):
                self.unique(item, sch["items"], f"{path}[{i}]")

    # x-kubernetes-validations -------------------------------------------------------------------------------
    def cel(self, value: Any, sch: Schema, path: str, old: Any = None, has_old: bool = False) -> None:
        """A node's rules, then its children's (fields by name, map values as [key], items as [i])."""
        self._rules(value, sch, path, old, has_old)
        if isinstance(value, dict):
            props = sch.get("properties") or {}
            addl = sch.get("additionalProperties")
            olds = old if has_old and isinstance(old, dict) else {}
            for k, v in value.items():
                if k in props:
                    self.cel(v, props[k], f"{path}.{k}" if path else k, olds.get(k), k in olds)
                elif isinstance(addl, Mapping):
                    self.cel(v, addl, f"{path}[{k}]", olds.get(k), k in olds)
        elif isinstance(value, list) and isinstance(sch.get("items"), Mapping):
            for i, item in enumerate(value):
                self.cel(item, sch["items"], f"{path}[{i}]")

    def _rules(self, value: Any, sch: Schema, path: str, old: Any, has_old: bool) -> None:
        """1.24's rules: `rule` and `message` (fieldPath, reason, messageExpression and optionalOldSelf came
        later; a 1.24 server drops them from the CRD). The value is shown as the apiserver prints it."""
        from . import cel

        for rule in sch.get("x-kubernetes-validations") or []:
            expr = rule.get("rule", "")
            if "oldSelf" in expr and not has_old:
                continue  # a transition rule: only on update, when there was an old value
            message = rule.get("message") or ""
            try:
                ok = cel.evaluate(expr, {"self": value, "oldSelf": old if has_old else None})
            except cel.CELError as e:
                named = message.strip() or expr.strip()
                self.cel_errors.append(
                    cause(path, f"Invalid value: {go_value(value)}: {e} evaluating rule: {named}")
                )
                continue
            if ok is not True:
                text = message or f"failed rule: {expr.strip()}"
                self.cel_errors.append(cause(path, f"Invalid value: {go_value(value)}: {text}"))


def admit_custom(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Prune (unknown fields silently, as 1.24 without server-side field validation), default and validate
    a custom resource in place; 422 Invalid with every error otherwise."""
    sch = rt.schema
    if not sch:
        return
    checker = _Checker()
    shaped = checker.shape(obj, sch, root=True)
    obj.clear()
    obj.update(shaped)
    name = obj.get("metadata", {}).get("name", "")
    body = {k: v for k, v in obj.items() if k not in _ROOT_KEEP}
    old_body = {k: v for k, v in (old or {}).items() if k not in _ROOT_KEEP}
    root = {k: v for k, v in sch.items() if k != "x-kubernetes-validations"}
    checker.openapi(
        body, {**root, "required": [r for r in sch.get("required") or [] if r not in _ROOT_KEEP]}, ""
    )
    checker.unique(body, sch, "")
    checker._rules(obj, sch, "", old, old is not None)
    props = sch.get("properties") or {}
    for k, v in body.items():
        if k in props:
            checker.cel(v, props[k], k, old_body.get(k), k in old_body)
    if checker.causes:
        raise errors.invalid(rt, name, checker.causes)


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
            msg = _go_quote(str(rule.get("message") or ""))
            shown = f"apiextensions.ValidationRule{{Rule:{_go_quote(str(expr))}, Message:{msg}}}"
            out.append(cause(where, f"Invalid value: {shown}: compilation failed: {e}"))
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
    schemas = [((version or {}).get("schema") or {}).get("openAPIV3Schema") for version in versions]
    if schemas and all(s == schemas[0] for s in schemas):
        # one schema for every version: 1.24 holds it as the internal spec.validation and names it so
        schemas, where = schemas[:1], ["spec.validation.openAPIV3Schema"]
    else:
        where = [f"spec.versions[{i}].schema.openAPIV3Schema" for i in range(len(schemas))]
    for sch, prefix in zip(schemas, where, strict=True):
        if isinstance(sch, Mapping):
            causes += _rule_causes(sch, prefix)
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            cause(
                "spec.scope",
                f"Unsupported value: {go_value(spec.get('scope'))}: "
                'supported values: "Cluster", "Namespaced"',
                "FieldValueNotSupported",
            )
        )
    if causes:
        raise errors.invalid(rt, name, causes)
    spec.setdefault("conversion", {"strategy": "None"})
    names.setdefault("singular", names.get("kind", "").lower())
    names.setdefault("listKind", names.get("kind", "") + "List")
