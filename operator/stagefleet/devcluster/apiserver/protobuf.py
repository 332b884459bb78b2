"""Decoding of Kubernetes protobuf request bodies for the few kinds typed Go clients write.

kubectl's `create configmap/secret/namespace` generators and helm's release storage (Secrets) send
`application/vnd.kubernetes.protobuf`; answers stay JSON (those clients accept it). Kinds without a field map
here answer 415, so a gap is loud, never a silent misread.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from .errors import ApiError

MAGIC = b"k8s\x00"
# field number -> (json name, kind); kind is "str", "bytes", "int", "bool", "time", "strlist", "map", "bmap",
# a nested message map (dict), or ("list", message map).
Spec = dict[int, tuple[str, Any]]

TIME = "time"
OWNER_REF: Spec = {
    1: ("kind", "str"),
    3: ("name", "str"),
    4: ("uid", "str"),
    5: ("apiVersion", "str"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
MANAGED: Spec = {
    1: ("manager", "str"),
    2: ("operation", "str"),
    3: ("apiVersion", "str"),
    4: ("time", TIME),
    6: ("fieldsType", "str"),
    7: ("fieldsV1", "fieldsv1"),
    8: ("subresource", "str"),
}
OBJECT_META: Spec = {
    1: ("name", "str"),
    2: ("generateName", "str"),
    3: ("namespace", "str"),
    5: ("uid", "str"),
    6: ("resourceVersion", "str"),
    7: ("generation", "int"),
    8: ("creationTimestamp", TIME),
    9: ("deletionTimestamp", TIME),
    10: ("deletionGracePeriodSeconds", "int"),
    11: ("labels", "map"),
    12: ("annotations", "map"),
    13: ("ownerReferences", ("list", OWNER_REF)),
    14: ("finalizers", "strlist"),
    17: ("managedFields", ("list", MANAGED)),
}
KINDS: dict[str, Spec] = {
    "ConfigMap": {
        1: ("metadata", OBJECT_META),
        2: ("data", "map"),
        3: ("binaryData", "bmap"),
        4: ("immutable", "bool"),
    },
    "Secret": {
        1: ("metadata", OBJECT_META),
        2: ("data", "bmap"),
        3: ("type", "str"),
        4: ("stringData", "map"),
        5: ("immutable", "bool"),
    },
    "Namespace": {
        1: ("metadata", OBJECT_META),
        2: ("spec", {1: ("finalizers", "strlist")}),
        3: ("status", {1: ("phase", "str")}),
    },
    "ServiceAccount": {
        1: ("metadata", OBJECT_META),
        3: ("imagePullSecrets", ("list", {1: ("name", "str")})),
        4: ("automountServiceAccountToken", "bool"),
    },
    "Eviction": {1: ("metadata", OBJECT_META), 2: ("deleteOptions", "deleteoptions")},
    "Binding": {
        1: ("metadata", OBJECT_META),
        2: (
            "target",
            {
                1: ("kind", "str"),
                2: ("namespace", "str"),
                3: ("name", "str"),
                4: ("uid", "str"),
                5: ("apiVersion", "str"),
            },
        ),
    },
    "DeleteOptions": {
        1: ("gracePeriodSeconds", "int"),
        2: ("preconditions", {1: ("uid", "str"), 2: ("resourceVersion", "str")}),
        3: ("orphanDependents", "bool"),
        4: ("propagationPolicy", "str"),
        5: ("dryRun", "strlist"),
    },
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint value or length-delimited bytes) in wire order."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((num, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((num, data[pos : pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _time(raw: bytes) -> str:
    secs = next((v for n, v in fields(raw) if n == 1 and isinstance(v, int)), 0)
    return dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _map_entry(raw: bytes) -> tuple[str, bytes]:
    key, value = b"", b""
    for n, v in fields(raw):
        if n == 1 and isinstance(v, bytes):
            key = v
        elif n == 2 and isinstance(v, bytes):
            value = v
    return key.decode(), value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def decode_message(raw: bytes, spec: Spec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    converters: dict[str, Callable[[Any], Any]] = {
        "str": lambda v: v.decode(),
        "bytes": lambda v: base64.b64encode(v).decode(),
        "int": _signed,
        "bool": bool,
        TIME: _time,
    }
    for num, value in fields(raw):
        if num not in spec:
            continue
        name, kind = spec[num]
        if isinstance(kind, dict):
            out[name] = decode_message(value if isinstance(value, bytes) else b"", kind)
        elif isinstance(kind, tuple):
            out.setdefault(name, []).append(
                decode_message(value if isinstance(value, bytes) else b"", kind[1])
            )
        elif kind == "strlist":
            out.setdefault(name, []).append(value.decode() if isinstance(value, bytes) else str(value))
        elif kind in ("map", "bmap"):
            k, v = _map_entry(value if isinstance(value, bytes) else b"")
            out.setdefault(name, {})[k] = v.decode() if kind == "map" else base64.b64encode(v).decode()
        elif kind == "deleteoptions":
            out[name] = decode_message(value if isinstance(value, bytes) else b"", KINDS["DeleteOptions"])
        elif kind == "fieldsv1":
            inner = (
                [v for n, v in fields(value) if n == 1 and isinstance(v, bytes)]
                if isinstance(value, bytes)
                else []
            )
            out[name] = json.loads(inner[0] if inner else b"{}")
        else:
            out[name] = converters[kind](value)
    return out


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded `runtime.Unknown` envelope to the JSON-shaped object."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "protobuf body without the k8s magic prefix")
    type_meta: dict[str, Any] = {}
    raw = b""
    for num, value in fields(body[len(MAGIC) :]):
        if num == 1 and isinstance(value, bytes):
            type_meta = decode_message(value, {1: ("apiVersion", "str"), 2: ("kind", "str")})
        elif num == 2 and isinstance(value, bytes):
            raw = value
    kind = type_meta.get("kind", "")
    spec = KINDS.get(kind)
    if spec is None:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the emulator decodes protobuf only for "
            f"{', '.join(sorted(KINDS))}; send {kind or 'this object'} as application/json",
        )
    obj = decode_message(raw, spec)
    if isinstance(obj.get("metadata"), dict):  # Go encodes unset strings as "": drop them like JSON would
        obj["metadata"] = {k: v for k, v in obj["metadata"].items() if v != ""}
    if kind != "DeleteOptions":
        obj = {"apiVersion": type_meta.get("apiVersion", "v1"), "kind": kind, **obj}
    return obj
