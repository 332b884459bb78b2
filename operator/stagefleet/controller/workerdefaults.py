"""Pure: the operator's worker-pod defaults from flags and environment variables.

The Helm chart hands the operator its ``worker.*`` values as ``STAGEFLEET_BUILDER_IMAGE*`` /
``STAGEFLEET_WORKER_*`` environment variables (JSON for the structured ones); ``stagefleet operator`` has a
flag for each as well. Precedence: flag > environment variable > built-in default. An ImageBuild's
``spec.builderImage`` and ``spec.resources`` still override the image and resources per build (podspec.py).

An empty variable counts as unset (the chart renders ``""`` for an unset value); a malformed one is an
error naming the variable, raised at startup rather than as a broken pod later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stagefleet.controller.podspec import WorkerConfig
from stagefleet.controller.spec import DEFAULT_BUILDER_IMAGE, OBJECT_NAME_RE, Resources

ENV_BUILDER_IMAGE = "STAGEFLEET_BUILDER_IMAGE"
ENV_PULL_POLICY = "STAGEFLEET_BUILDER_IMAGE_PULL_POLICY"
ENV_RESOURCES = "STAGEFLEET_WORKER_RESOURCES"
ENV_POD_SECURITY_CONTEXT = "STAGEFLEET_WORKER_POD_SECURITY_CONTEXT"
ENV_SECURITY_CONTEXT = "STAGEFLEET_WORKER_SECURITY_CONTEXT"
ENV_STORAGE_DRIVER = "STAGEFLEET_WORKER_STORAGE_DRIVER"
ENV_FUSE_RESOURCE = "STAGEFLEET_WORKER_FUSE_RESOURCE"
ENV_ACTIVE_DEADLINE = "STAGEFLEET_WORKER_ACTIVE_DEADLINE_SECONDS"
ENV_HOST_NETWORK = "STAGEFLEET_WORKER_HOST_NETWORK"
ENV_PRIORITY_CLASS = "STAGEFLEET_WORKER_PRIORITY_CLASS"

# field of WorkerDefaults -> the environment variable it is read from
ENV_VARS: dict[str, str] = {
    "builder_image": ENV_BUILDER_IMAGE,
    "image_pull_policy": ENV_PULL_POLICY,
    "resources": ENV_RESOURCES,
    "pod_security_context": ENV_POD_SECURITY_CONTEXT,
    "security_context": ENV_SECURITY_CONTEXT,
    "storage_driver": ENV_STORAGE_DRIVER,
    "fuse_resource": ENV_FUSE_RESOURCE,
    "active_deadline_seconds": ENV_ACTIVE_DEADLINE,
    "host_network": ENV_HOST_NETWORK,
    "priority_class_name": ENV_PRIORITY_CLASS,
}

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
STORAGE_DRIVERS = ("vfs", "overlay")
DEFAULT_PULL_POLICY = "IfNotPresent"


class WorkerDefaultsError(ValueError):
    """A worker default (flag or environment variable, named in the message) is malformed."""


@dataclass(frozen=True)
class WorkerDefaults:
    """Operator-wide defaults applied to every worker pod.

    ``resources`` apply when the ImageBuild sets none for the group; ``storage_driver`` reaches the worker
    container as ``STAGEFLEET_STORAGE_DRIVER`` (None: the worker's own default); ``fuse_resource`` is an
    extended resource requested and limited at 1 (None: no fuse); ``active_deadline_seconds`` caps each
    pod's ``activeDeadlineSeconds`` (0: the ImageBuild's remaining timeout only); ``host_network`` puts
    workers in the node's network namespace (registries only the node reaches, e.g. one on loopback);
    ``priority_class_name`` is every worker pod's PriorityClass (None: the cluster's default priority).
    """

    builder_image: str = DEFAULT_BUILDER_IMAGE
    image_pull_policy: str = DEFAULT_PULL_POLICY
    resources: Resources = field(default_factory=Resources)
    pod_security_context: Mapping[str, Any] | None = None
    security_context: Mapping[str, Any] | None = None
    storage_driver: str | None = None
    fuse_resource: str | None = None
    active_deadline_seconds: int = 0
    host_network: bool = False
    priority_class_name: str | None = None

    def worker_config(
        self,
        *,
        command: tuple[str, ...] = ("stagefleet-worker",),
        insecure_registries: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
    ) -> WorkerConfig:
        """The podspec WorkerConfig carrying these defaults."""
        return WorkerConfig(
            command=command,
            builder_image=self.builder_image,
            insecure_registries=insecure_registries,
            extra_args=extra_args,
            image_pull_policy=self.image_pull_policy,
            resources=self.resources,
            pod_security_context=self.pod_security_context,
            security_context=self.security_context,
            storage_driver=self.storage_driver,
            fuse_resource=self.fuse_resource,
            active_deadline_seconds=self.active_deadline_seconds,
            host_network=self.host_network,
            priority_class_name=self.priority_class_name,
        )


def _json_object(text: str, where: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkerDefaultsError(f"{where}: not valid JSON ({e.msg} at char {e.pos}): {text!r}") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise WorkerDefaultsError(f"{where}: expected a JSON object, got {type(value).__name__}: {text!r}")
    return value


def _quantities(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WorkerDefaultsError(f"{where}: expected an object of resource quantities, got {value!r}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or str(v).strip() == "":
            raise WorkerDefaultsError(f"{where}.{k}: expected a quantity, got {v!r}")
        out[str(k)] = str(v)
    return out


def _resources(text: str, where: str) -> Resources:
    obj = _json_object(text, where) or {}
    unknown = sorted(set(obj) - {"requests", "limits", "claims"})
    if unknown:
        raise WorkerDefaultsError(f"{where}: unknown ResourceRequirements field(s) {', '.join(unknown)}")
    return Resources(
        requests=_quantities(obj.get("requests"), f"{where}: requests"),
        limits=_quantities(obj.get("limits"), f"{where}: limits"),
    )


def _choice(text: str, where: str, allowed: tuple[str, ...]) -> str:
    if text not in allowed:
        raise WorkerDefaultsError(f"{where}: {text!r} is not one of {', '.join(allowed)}")
    return text


def _seconds(text: str, where: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise WorkerDefaultsError(f"{where}: expected a whole number of seconds, got {text!r}") from None
    if n < 0:
        raise WorkerDefaultsError(f"{where}: must be >= 0 (0 = the ImageBuild's timeout only), got {n}")
    return n


FLAG_NAMES: dict[str, str] = {
    "builder_image": "--builder-image",
    "image_pull_policy": "--builder-image-pull-policy",
    "resources": "--worker-resources",
    "pod_security_context": "--worker-pod-security-context",
    "security_context": "--worker-security-context",
    "storage_driver": "--worker-storage-driver",
    "fuse_resource": "--worker-fuse-resource",
    "active_deadline_seconds": "--worker-active-deadline-seconds",
    "host_network": "--worker-host-network",
    "priority_class_name": "--worker-priority-class",
}


def _object_name(text: str, where: str) -> str:
    """A Kubernetes object name (DNS-1123 subdomain), e.g. a PriorityClass's."""
    if len(text) > 253 or not OBJECT_NAME_RE.match(text):
        raise WorkerDefaultsError(f"{where}: {text!r} is not a valid object name (lower-case DNS subdomain)")
    return text


def _boolean(text: str, where: str) -> bool:
    value = text.lower()
    if value not in ("true", "false"):
        raise WorkerDefaultsError(f"{where}: expected true or false, got {text!r}")
    return value == "true"


def worker_defaults(
    env: Mapping[str, str], flags: Mapping[str, str | None] | None = None
) -> WorkerDefaults:
    """The worker defaults from ``flags`` (field name → raw flag value or None) over ``env`` over built-ins.

    Raises WorkerDefaultsError naming the flag or variable when a value is malformed.
    """
    flags = flags or {}
    unknown = sorted(set(flags) - set(ENV_VARS))
    if unknown:
        raise ValueError(f"unknown worker default(s): {', '.join(unknown)}")
    raw: dict[str, tuple[str, str]] = {}  # field -> (text, where it came from)
    for name, var in ENV_VARS.items():
        flag_value = flags.get(name)
        if flag_value is not None and flag_value.strip() != "":
            raw[name] = (flag_value.strip(), f"{FLAG_NAMES[name]} (flag)")
            continue
        env_value = env.get(var, "")
        if env_value.strip() != "":
            raw[name] = (env_value.strip(), var)

    base = WorkerDefaults()
    out: dict[str, Any] = {}
    if "builder_image" in raw:
        out["builder_image"] = raw["builder_image"][0]
    if "image_pull_policy" in raw:
        out["image_pull_policy"] = _choice(*raw["image_pull_policy"], PULL_POLICIES)
    if "resources" in raw:
        out["resources"] = _resources(*raw["resources"])
    for name in ("pod_security_context", "security_context"):
        if name in raw:
            out[name] = _json_object(*raw[name])
    if "storage_driver" in raw:
        out["storage_driver"] = _choice(*raw["storage_driver"], STORAGE_DRIVERS)
    if "fuse_resource" in raw:
        out["fuse_resource"] = raw["fuse_resource"][0]
    if "active_deadline_seconds" in raw:
        out["active_deadline_seconds"] = _seconds(*raw["active_deadline_seconds"])
    if "host_network" in raw:
        out["host_network"] = _boolean(*raw["host_network"])
    if "priority_class_name" in raw:
        out["priority_class_name"] = _object_name(*raw["priority_class_name"])
    return WorkerDefaults(**{**base.__dict__, **out})
