"""Per-kind admission: metadata stamping and the defaults the real apiserver fills in on create."""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
import uuid
from typing import Any

from .errors import cause
from .resources import ResourceType

GENERATION_PLURALS = {
    "pods",
    "deployments",
    "replicasets",
    "statefulsets",
    "daemonsets",
    "jobs",
    "poddisruptionbudgets",
    "customresourcedefinitions",
}
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ALNUM = "bcdfghjklmnpqrstvwxz2456789"


def now(offset_seconds: float = 0) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def tracks_generation(rt: ResourceType) -> bool:
    return rt.is_custom or rt.plural in GENERATION_PLURALS


def keeps_status_on_create(rt: ResourceType) -> bool:
    return rt.plural in ("nodes",) or not rt.has_status


def random_suffix() -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(5))


def name_causes(name: str, namespaced: bool) -> list[dict[str, str]]:
    if not name:
        return [
            cause("metadata.name", "Required value: name or generateName is required", "FieldValueRequired")
        ]
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        return [
            cause(
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                "lower case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character",
            )
        ]
    return []


def stamp_new(rt: ResourceType, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now()
    for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "selfLink"):
        meta.pop(k, None)
    if tracks_generation(rt):
        meta["generation"] = 1
    else:
        meta.pop("generation", None)
    obj["apiVersion"] = rt.api_version
    obj["kind"] = rt.kind


def _image_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def _qos(spec: dict[str, Any]) -> str:
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    res = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in res):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k)
        and (r.get("requests") or {}).get(k, (r.get("limits") or {})[k]) == (r.get("limits") or {})[k]
        for r in res
        for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    # v1 conversion keeps the deprecated `serviceAccount` equal to `serviceAccountName`; the "default" a pod
    # gets comes from ServiceAccount admission (admission.py), which templates never go through
    if spec.get("serviceAccount") and not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = spec["serviceAccount"]
    if spec.get("serviceAccountName"):
        spec["serviceAccount"] = spec["serviceAccountName"]
    spec.setdefault("enableServiceLinks", True)
    # `priority` is not a default: Priority admission computes it for new pods (admission.priority)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", _image_pull_policy(str(c.get("image", ""))))
        c.setdefault("resources", {})
        for p in c.get("ports") or []:
            p.setdefault("protocol", "TCP")


def apply_defaults(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Defaults of the built-in kinds stagefleet and its tests touch."""
    if rt.group == "" and rt.plural == "pods":
        spec = obj.setdefault("spec", {})
        default_pod_spec(spec)
        obj["status"] = {"phase": "Pending", "qosClass": _qos(spec)}
    elif rt.group == "" and rt.plural == "namespaces":
        name = obj["metadata"]["name"]
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    elif rt.group == "" and rt.plural == "secrets":
        if not obj.get("type"):
            obj["type"] = "Opaque"
        string_data = obj.pop("stringData", None) or {}
        if string_data:
            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
    elif rt.group == "" and rt.plural == "services":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for p in spec.get("ports") or []:
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
    elif rt.group == "apps" and rt.plural in ("deployments", "replicasets", "statefulsets"):
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        if rt.plural == "deployments":
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault(
                "strategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            )
        tpl_spec = (spec.get("template") or {}).get("spec")
        if isinstance(tpl_spec, dict):
            default_pod_spec(tpl_spec)


def secret_string_data(obj: dict[str, Any]) -> None:
    """`stringData` is write-only: fold it into `data` on every write, as the apiserver does."""
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
