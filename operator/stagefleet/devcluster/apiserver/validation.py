"""Validation of built-in kinds where a real apiserver would reject what a buggy client sends: label syntax,
data keys, pod spec cross-references, and pod spec immutability. Keeps emulator-only bugs from hiding."""

from __future__ import annotations

import base64
import binascii
import copy
import re
from typing import Any

from .errors import ApiError, cause
from .objects import default_pod_spec
from .resources import ResourceType

Causes = list[dict[str, str]]

_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_LABEL_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
    "for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_POD_UPDATE_MSG = (
    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to "
    "existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
    "previously negative)"
)


def _qualified_name(key: str) -> str | None:
    """Why a label/annotation key is invalid, or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character"
        )
    return None


def metadata(obj: dict[str, Any]) -> Causes:
    meta = obj.get("metadata") or {}
    causes: Causes = []
    for key, value in (meta.get("labels") or {}).items():
        why = _qualified_name(str(key))
        if why:
            causes.append(cause("metadata.labels", f'Invalid value: "{key}": {why}'))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(cause("metadata.labels", f'Invalid value: "{value}": {_LABEL_MSG}'))
    refs = meta.get("ownerReferences") or []
    for i, ref in enumerate(refs):
        for field in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(field):
                causes.append(
                    cause(
                        f"metadata.ownerReferences[{i}].{field}",
                        "Required value" if field != "uid" else 'Invalid value: "": uid must not be empty',
                        "FieldValueRequired",
                    )
                )
    if sum(1 for r in refs if r.get("controller")) > 1:
        causes.append(
            cause(
                "metadata.ownerReferences",
                "Invalid value: only one reference can have Controller set to true",
            )
        )
    for key in meta.get("annotations") or {}:
        why = _qualified_name(str(key))
        if why:
            causes.append(cause("metadata.annotations", f'Invalid value: "{key}": {why}'))
    return causes


def _dns_label(value: Any, field: str, what: str = "name") -> Causes:
    if not value:
        return [cause(field, "Required value", "FieldValueRequired")]
    if len(str(value)) > 63 or not _DNS_LABEL.match(str(value)):
        return [
            cause(
                field,
                f'Invalid value: "{value}": a lowercase RFC 1123 label must consist of lower case '
                "alphanumeric characters or '-', and must start and end with an alphanumeric character",
            )
        ]
    return []


def pod_spec(spec: dict[str, Any], path: str = "spec") -> Causes:
    causes: Causes = []
    if not spec.get("containers"):
        causes.append(cause(f"{path}.containers", "Required value", "FieldValueRequired"))
    volumes = set()
    for i, vol in enumerate(spec.get("volumes") or []):
        causes += _dns_label(vol.get("name"), f"{path}.volumes[{i}].name")
        if vol.get("name") in volumes:
            causes.append(
                cause(
                    f"{path}.volumes[{i}].name",
                    f'Duplicate value: "{vol.get("name")}"',
                    "FieldValueDuplicate",
                )
            )
        volumes.add(vol.get("name"))
    seen: set[str] = set()
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(kind) or []):
            p = f"{path}.{kind}[{i}]"
            causes += _dns_label(c.get("name"), f"{p}.name")
            if c.get("name") in seen:
                causes.append(
                    cause(f"{p}.name", f'Duplicate value: "{c.get("name")}"', "FieldValueDuplicate")
                )
            seen.add(c.get("name", ""))
            if not c.get("image"):
                causes.append(cause(f"{p}.image", "Required value", "FieldValueRequired"))
            for j, env in enumerate(c.get("env") or []):
                name = env.get("name", "")
                if not name or "=" in name or not name.isprintable():
                    causes.append(
                        cause(
                            f"{p}.env[{j}].name",
                            f'Invalid value: "{name}": a valid environment '
                            "variable name must consist only of printable ASCII characters other "
                            "than '='",
                        )
                    )
            mounts = set()
            for j, m in enumerate(c.get("volumeMounts") or []):
                if m.get("name") not in volumes:
                    causes.append(
                        cause(
                            f"{p}.volumeMounts[{j}].name",
                            f'Not found: "{m.get("name")}"',
                            "FieldValueNotFound",
                        )
                    )
                if not m.get("mountPath"):
                    causes.append(
                        cause(f"{p}.volumeMounts[{j}].mountPath", "Required value", "FieldValueRequired")
                    )
                elif m["mountPath"] in mounts:
                    causes.append(
                        cause(
                            f"{p}.volumeMounts[{j}].mountPath",
                            f'Invalid value: "{m["mountPath"]}": must be unique',
                        )
                    )
                mounts.add(m.get("mountPath"))
    policy = spec.get("restartPolicy")
    if policy not in (None, "Always", "OnFailure", "Never"):
        causes.append(
            cause(
                f"{path}.restartPolicy",
                f'Unsupported value: "{policy}": supported values: "Always", "OnFailure", "Never"',
                "FieldValueNotSupported",
            )
        )
    return causes


def pod_update(old: dict[str, Any], new: dict[str, Any]) -> Causes:
    """Only images, activeDeadlineSeconds, tolerations (additions), grace period and a first nodeName."""
    before = copy.deepcopy(old.get("spec") or {})
    after = copy.deepcopy(new.get("spec") or {})
    default_pod_spec(after)
    for kind in ("containers", "initContainers"):
        for b, a in zip(before.get(kind) or [], after.get(kind) or [], strict=False):
            b["image"] = a.get("image")
    for key in ("activeDeadlineSeconds", "terminationGracePeriodSeconds"):
        if key in after:
            before[key] = after[key]
    if not before.get("nodeName") and after.get("nodeName"):
        before["nodeName"] = after["nodeName"]
    old_tol = before.get("tolerations") or []
    new_tol = after.get("tolerations") or []
    if all(t in new_tol for t in old_tol):
        before["tolerations"] = new_tol
        if not new_tol:
            before.pop("tolerations", None)
            after.pop("tolerations", None)
    if before != after:
        return [cause("spec", _POD_UPDATE_MSG, "FieldValueForbidden")]
    return []


def decode_errors(rt: ResourceType, obj: dict[str, Any]) -> None:
    """What the apiserver fails to decode (400, not 422): non-string data values, bad base64."""
    fields = {
        "configmaps": (("data", False), ("binaryData", True)),
        "secrets": (("data", True), ("stringData", False)),
    }
    for field, is_b64 in fields.get(rt.plural, ()) if not rt.group else ():
        for key, value in (obj.get(field) or {}).items():
            where = f'{rt.kind} in version "v1" cannot be handled as a {rt.kind}'
            if not isinstance(value, str):
                raise ApiError(
                    400,
                    "BadRequest",
                    f"{where}: json: cannot unmarshal {type(value).__name__} into "
                    f"Go struct field {rt.kind}.{field} of type string",
                )
            if is_b64:
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(
                        400, "BadRequest", f"{where}: illegal base64 data in {field}[{key}]"
                    ) from None


def validate(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> Causes:
    decode_errors(rt, obj)
    causes = metadata(obj)
    if rt.group:
        if rt.key in (
            ("apps", "deployments"),
            ("apps", "replicasets"),
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
            ("batch", "jobs"),
        ):
            tpl = ((obj.get("spec") or {}).get("template") or {}).get("spec")
            if isinstance(tpl, dict):
                causes += pod_spec(tpl, "spec.template.spec")
        return causes
    if rt.plural == "pods":
        causes += pod_spec(obj.get("spec") or {})
        if old is not None:
            causes += pod_update(old, obj)
    elif rt.plural == "namespaces":
        causes += [c for c in _dns_label(obj["metadata"].get("name"), "metadata.name")]
    elif rt.plural in ("configmaps", "secrets"):
        for field in ("data", "binaryData"):
            for key in obj.get(field) or {}:
                if not _DATA_KEY.match(str(key)) or len(str(key)) > 253:
                    causes.append(
                        cause(
                            f"{field}[{key}]",
                            f'Invalid value: "{key}": a valid config key must '
                            "consist of alphanumeric characters, '-', '_' or '.'",
                        )
                    )
    return causes
