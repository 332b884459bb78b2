"""OpenAPI v2 as kube-apiserver 1.24 publishes custom resources, in JSON and in gnostic protobuf.

How the real kubectl (1.34) validates what it sends depends on these documents: it asks `/openapi/v3`
first (1.24 has none: 404), then `/openapi/v2`. A kind whose PATCH operation does not list a
`fieldValidation` parameter (none does on 1.24: it has no server-side field validation) is checked on the
client against its v2 definition — missing required fields, unknown fields and wrong types, in kubectl's
words: `error validating data: ValidationError(Widget.spec): missing required field "size" in
dev.stagefleet.kubectltest.v1.Widget.spec` — and the server checks the rest (patterns, enums, bounds, CEL).
So the emulator publishes what 1.24 publishes and kubectl answers on both tiers alike.

Per served CRD version: `<reversed group>.<version>.<Kind>` and `...<Kind>List`, converted from the
structural schema as 1.24 does for v2 (defaults, `nullable` types and junctors dropped; an object that
preserves unknown fields loses its type and properties; a root that does, everything; embedded resources get
apiVersion/kind/metadata) plus `metadata` as a reference to `ObjectMeta_v2`. Built-in kinds have no
definitions here (the emulator does not validate them either), so kubectl skips their client-side check.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

from .resources import Registry, ResourceType

Visible = Callable[[ResourceType], bool]
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
OBJECT_META_REF = f"#/definitions/{META}ObjectMeta_v2"
CONVENTIONS = "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
API_VERSION = {
    "description": "APIVersion defines the versioned schema of this representation of an object. Servers "
    "should convert recognized schemas to the latest internal value, and may reject unrecognized values. "
    f"More info: {CONVENTIONS}#resources",
    "type": "string",
}
KIND = {
    "description": "Kind is a string value representing the REST resource this object represents. Servers "
    "may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. "
    f"More info: {CONVENTIONS}#types-kinds",
    "type": "string",
}
OBJECT_META_PROP = {
    "description": f"Standard object's metadata. More info: {CONVENTIONS}#metadata",
    "$ref": OBJECT_META_REF,
}
EMBEDDED_API_VERSION = {
    "description": "apiVersion defines the versioned schema of this representation of an object. "
    f"More info: {CONVENTIONS}#resources",
    "type": "string",
}
EMBEDDED_KIND = {
    "description": "kind is a string value representing the type of this object. In CamelCase. "
    f"More info: {CONVENTIONS}#types-kinds",
    "type": "string",
}


def _s(description: str, **rest: Any) -> dict[str, Any]:
    return {"description": description, **rest}


_TIME = {"$ref": f"#/definitions/{META}Time"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
# The metadata definitions a custom resource's schema refers to (the same fields and types as 1.24's; the
# descriptions are short ones of the emulator's own).
META_DEFINITIONS: dict[str, Any] = {
    f"{META}ObjectMeta_v2": _s(
        "Metadata that all persisted resources must have.",
        type="object",
        properties={
            "annotations": _s("Unstructured key value map set by external tools.", **_STRINGS),
            "clusterName": _s("Not used.", type="string"),
            "creationTimestamp": _s("When the object was created (set by the server).", **_TIME),
            "deletionGracePeriodSeconds": _s(
                "Seconds allowed to terminate gracefully.", type="integer", format="int64"
            ),
            "deletionTimestamp": _s("When the object will be deleted (set by the server).", **_TIME),
            "finalizers": _s(
                "Must be empty before the object is deleted from the registry.",
                type="array",
                items={"type": "string"},
                **{"x-kubernetes-patch-strategy": "merge"},
            ),
            "generateName": _s("Prefix of a name the server generates.", type="string"),
            "generation": _s(
                "Sequence number of the desired state (set by the server).", type="integer", format="int64"
            ),
            "labels": _s("Map of string keys and values to organize and select objects.", **_STRINGS),
            "managedFields": _s(
                "Which manager owns which fields.",
                type="array",
                items={"$ref": f"#/definitions/{META}ManagedFieldsEntry"},
            ),
            "name": _s("Name, unique within a namespace.", type="string"),
            "namespace": _s("The namespace the object lives in.", type="string"),
            "ownerReferences": _s(
                "Objects this object depends on.",
                type="array",
                items={"$ref": f"#/definitions/{META}OwnerReference_v2"},
                **{"x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"},
            ),
            "resourceVersion": _s("Internal version of the object (opaque).", type="string"),
            "selfLink": _s("Deprecated, not set.", type="string"),
            "uid": _s("Unique in time and space (set by the server).", type="string"),
        },
    ),
    f"{META}ManagedFieldsEntry": _s(
        "A workflow-id, a FieldSet and the group version of the resource the fieldset applies to.",
        type="object",
        properties={
            "apiVersion": _s("Version of the resource the fieldset applies to.", type="string"),
            "fieldsType": _s("Format of fieldsV1 (only FieldsV1).", type="string"),
            "fieldsV1": _s("The set of fields.", **{"$ref": f"#/definitions/{META}FieldsV1"}),
            "manager": _s("The manager.", type="string"),
            "operation": _s("Apply or Update.", type="string"),
            "subresource": _s("The subresource written through, if any.", type="string"),
            "time": _s("When the fields were last changed.", **_TIME),
        },
    ),
    f"{META}FieldsV1": _s("A set of fields, as a trie of JSON-like keys.", type="object"),
    f"{META}OwnerReference_v2": _s(
        "Enough information to identify an owning object in the same namespace.",
        type="object",
        required=["apiVersion", "kind", "name", "uid"],
        properties={
            "apiVersion": _s("API version of the referent.", type="string"),
            "blockOwnerDeletion": _s("Foreground deletion waits for this dependent.", type="boolean"),
            "controller": _s("The owner is the managing controller.", type="boolean"),
            "kind": _s("Kind of the referent.", type="string"),
            "name": _s("Name of the referent.", type="string"),
            "uid": _s("UID of the referent.", type="string"),
        },
        **{"x-kubernetes-map-type": "atomic"},
    ),
    f"{META}Time": _s("A timestamp in RFC 3339 form.", type="string", format="date-time"),
    f"{META}ListMeta": _s(
        "Metadata that lists have.",
        type="object",
        properties={
            "continue": _s("Token for the next chunk of a limited list.", type="string"),
            "remainingItemCount": _s("Items left after this chunk.", type="integer", format="int64"),
            "resourceVersion": _s("Version the list was read at (opaque).", type="string"),
            "selfLink": _s("Deprecated, not set.", type="string"),
        },
    ),
}

_DROPPED = ("default", "nullable", "allOf", "anyOf", "oneOf", "not")


def _to_v2(sch: Mapping[str, Any]) -> dict[str, Any]:
    """One structural-schema node as 1.24 publishes it in v2 (apiextensions' ToStructuralOpenAPIV2 and
    the builder: kubectl must not trip over what v2 cannot say)."""
    out = {k: copy.deepcopy(v) for k, v in sch.items() if k not in _DROPPED}
    props = {k: _to_v2(v) for k, v in (sch.get("properties") or {}).items() if isinstance(v, Mapping)}
    if props:
        out["properties"] = props
    if isinstance(sch.get("items"), Mapping):
        out["items"] = _to_v2(sch["items"])
    addl = sch.get("additionalProperties")
    if isinstance(addl, Mapping):
        converted = _to_v2(addl)
        out["additionalProperties"] = converted if converted else False
    if sch.get("nullable") or sch.get("x-kubernetes-preserve-unknown-fields"):
        for k in ("type", "items", "properties"):
            out.pop(k, None)
    if out.get("type") == "array" and "items" not in out:
        out.pop("type")
    required = list(sch.get("required") or [])
    nullable = {
        k for k, v in (sch.get("properties") or {}).items() if isinstance(v, Mapping) and v.get("nullable")
    }
    if isinstance(addl, Mapping) and addl.get("nullable"):
        required = []
    required = [r for r in required if r not in nullable]
    if required:
        out["required"] = required
    else:
        out.pop("required", None)
    rules = sch.get("x-kubernetes-validations")
    if rules:  # the internal Go type without JSON tags: its field names, empty ones included
        out["x-kubernetes-validations"] = [
            {"Rule": r.get("rule", ""), "Message": r.get("message", "")}
            for r in rules
            if isinstance(r, Mapping)
        ]
    if sch.get("x-kubernetes-embedded-resource") is True:
        eprops = out.setdefault("properties", {})
        eprops.update(
            {
                "apiVersion": dict(EMBEDDED_API_VERSION),
                "kind": dict(EMBEDDED_KIND),
                "metadata": dict(OBJECT_META_PROP),
            }
        )
        ereq = out.setdefault("required", [])
        ereq += [k for k in ("kind", "apiVersion") if k not in ereq]
    return out


def _gvk(rt: ResourceType, kind: str) -> list[dict[str, str]]:
    return [{"group": rt.group, "kind": kind, "version": rt.version}]


def definition_name(rt: ResourceType, kind: str | None = None) -> str:
    return ".".join(reversed(rt.group.split("."))) + f".{rt.version}.{kind or rt.kind}"


def object_definition(rt: ResourceType) -> dict[str, Any]:
    """A custom resource version's definition: its schema in v2 form with TypeMeta and ObjectMeta; a type
    whose root preserves unknown fields (or has no schema) is just an object, so kubectl checks nothing."""
    sch = rt.schema
    if not sch or sch.get("x-kubernetes-preserve-unknown-fields"):
        return {"type": "object", "x-kubernetes-group-version-kind": _gvk(rt, rt.kind)}
    out = _to_v2(sch)
    props = out.setdefault("properties", {})
    props["metadata"] = dict(OBJECT_META_PROP)
    props["apiVersion"] = dict(API_VERSION)
    props["kind"] = dict(KIND)
    out["x-kubernetes-group-version-kind"] = _gvk(rt, rt.kind)
    return out


def list_definition(rt: ResourceType) -> dict[str, Any]:
    return {
        "description": f"{rt.kind}List is a list of {rt.kind}",
        "required": ["items"],
        "properties": {
            "apiVersion": dict(API_VERSION),
            "items": {
                "description": f"List of {rt.plural}. More info: {CONVENTIONS}",
                "type": "array",
                "items": {"$ref": f"#/definitions/{definition_name(rt)}"},
            },
            "kind": dict(KIND),
            "metadata": {
                "description": f"Standard list metadata. More info: {CONVENTIONS}#types-kinds",
                "$ref": f"#/definitions/{META}ListMeta",
            },
        },
        "x-kubernetes-group-version-kind": _gvk(rt, rt.kind + "List"),
    }


def document(reg: Registry, version: str, visible: Visible) -> dict[str, Any]:
    """The Swagger 2.0 document: the metadata definitions and every published custom resource version."""
    definitions = copy.deepcopy(META_DEFINITIONS)
    for rt in reg.all():
        if rt.is_custom and visible(rt):
            definitions[definition_name(rt)] = object_definition(rt)
            definitions[definition_name(rt, rt.kind + "List")] = list_definition(rt)
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": {},
        "definitions": definitions,
    }


# -- gnostic openapi_v2 protobuf: what client-go asks for
# (Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf)


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes(num: int, payload: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def _str(num: int, value: str) -> bytes:
    return _bytes(num, value.encode()) if value else b""


def _int(num: int, value: Any) -> bytes:
    return _varint(num << 3) + _varint(int(value)) if value else b""


def _double(num: int, value: Any) -> bytes:
    return _varint((num << 3) | 1) + struct.pack("<d", float(value)) if value else b""


def _any(value: Any) -> bytes:
    """gnostic Any: the value as YAML text (JSON is YAML)."""
    return _str(2, json.dumps(value))


def _named_any(name: str, value: Any) -> bytes:
    return _str(1, name) + _bytes(2, _any(value))


def schema_pb(s: Mapping[str, Any]) -> bytes:
    """openapi_v2.Schema."""
    out = _str(1, s.get("$ref", "")) + _str(2, s.get("format", "")) + _str(3, s.get("title", ""))
    out += _str(4, s.get("description", ""))
    if "default" in s:
        out += _bytes(5, _any(s["default"]))
    out += _double(6, s.get("multipleOf")) + _double(7, s.get("maximum"))
    out += (
        _int(8, s.get("exclusiveMaximum"))
        + _double(9, s.get("minimum"))
        + _int(10, s.get("exclusiveMinimum"))
    )
    out += _int(11, s.get("maxLength")) + _int(12, s.get("minLength")) + _str(13, s.get("pattern", ""))
    out += _int(14, s.get("maxItems")) + _int(15, s.get("minItems")) + _int(16, s.get("uniqueItems"))
    out += _int(17, s.get("maxProperties")) + _int(18, s.get("minProperties"))
    out += b"".join(_str(19, r) for r in s.get("required") or [])
    out += b"".join(_bytes(20, _any(e)) for e in s.get("enum") or [])
    addl = s.get("additionalProperties")
    if isinstance(addl, Mapping):
        out += _bytes(21, _bytes(1, schema_pb(addl)))
    elif isinstance(addl, bool):
        out += _bytes(21, _varint(2 << 3) + _varint(int(addl)))
    typ = s.get("type")
    if typ:
        out += _bytes(22, b"".join(_str(1, t) for t in ([typ] if isinstance(typ, str) else typ)))
    if isinstance(s.get("items"), Mapping):
        out += _bytes(23, _bytes(1, schema_pb(s["items"])))
    out += b"".join(_bytes(24, schema_pb(a)) for a in s.get("allOf") or [])
    props = s.get("properties")
    if props:
        out += _bytes(25, b"".join(_bytes(1, _str(1, k) + _bytes(2, schema_pb(v))) for k, v in props.items()))
    out += _int(27, s.get("readOnly"))
    if "example" in s:
        out += _bytes(30, _any(s["example"]))
    out += b"".join(_bytes(31, _named_any(k, v)) for k, v in s.items() if k.startswith("x-"))
    return out


def document_pb(doc: Mapping[str, Any]) -> bytes:
    """openapi_v2.Document: swagger, info and definitions (no paths: kubectl then takes every kind as one
    without `fieldValidation`, as it finds them on 1.24)."""
    info = doc.get("info") or {}
    out = _str(1, doc.get("swagger", "2.0")) + _bytes(
        2, _str(1, info.get("title", "")) + _str(2, info.get("version", ""))
    )
    named = b"".join(_bytes(1, _str(1, k) + _bytes(2, schema_pb(v))) for k, v in doc["definitions"].items())
    return out + _bytes(9, named)
