"""Resource kinds the emulator serves: built-ins (one line each) plus whatever applied CRDs declare."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    singular: str = ""
    # CRD-only: the version's openAPIV3Schema, printer columns and the defining CRD name.
    schema: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    printer_columns: tuple[Mapping[str, Any], ...] = field(default=(), compare=False, hash=False)
    validations_from: str | None = None
    # scale subresource paths: spec replicas, status replicas, label selector (CRDs declare them)
    scale_paths: tuple[str, str, str] = (".spec.replicas", ".status.replicas", ".status.selector")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: versions of one group/resource share their objects."""
        return (self.group, self.plural)

    @property
    def is_custom(self) -> bool:
        return self.validations_from is not None

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


def _r(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool = True,
    *,
    short: tuple[str, ...] = (),
    cats: tuple[str, ...] = (),
    sub: tuple[str, ...] = (),
) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, short, cats, sub)


BUILTINS: tuple[ResourceType, ...] = (
    _r("", "v1", "namespaces", "Namespace", False, short=("ns",), sub=("status", "finalize")),
    _r("", "v1", "pods", "Pod", short=("po",), cats=("all",), sub=("status", "log", "binding", "eviction")),
    _r("", "v1", "nodes", "Node", False, short=("no",), sub=("status",)),
    _r("", "v1", "secrets", "Secret"),
    _r("", "v1", "configmaps", "ConfigMap", short=("cm",)),
    _r("", "v1", "events", "Event", short=("ev",)),
    _r("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _r("", "v1", "services", "Service", short=("svc",), cats=("all",), sub=("status",)),
    _r("", "v1", "endpoints", "Endpoints", short=("ep",)),
    _r("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",), sub=("status",)),
    _r("", "v1", "resourcequotas", "ResourceQuota", short=("quota",), sub=("status",)),
    _r("", "v1", "limitranges", "LimitRange", short=("limits",)),
    _r("apps", "v1", "deployments", "Deployment", short=("deploy",), cats=("all",), sub=("status", "scale")),
    _r("apps", "v1", "replicasets", "ReplicaSet", short=("rs",), cats=("all",), sub=("status", "scale")),
    _r("apps", "v1", "statefulsets", "StatefulSet", short=("sts",), cats=("all",), sub=("status", "scale")),
    _r("apps", "v1", "daemonsets", "DaemonSet", short=("ds",), cats=("all",), sub=("status",)),
    _r("batch", "v1", "jobs", "Job", cats=("all",), sub=("status",)),
    _r("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",), sub=("status",)),
    _r("events.k8s.io", "v1", "events", "Event", short=("ev",)),
    _r("coordination.k8s.io", "v1", "leases", "Lease"),
    _r("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _r("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _r("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _r("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _r("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, short=("pc",)),
    _r(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short=("crd", "crds"),
        sub=("status",),
    ),
)

CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")


def types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The served versions of a CRD, as resource types."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for ver in spec.get("versions") or []:
        if not ver.get("served", True):
            continue
        subs = ver.get("subresources") or {}
        sub = tuple(s for s in ("status", "scale") if s in subs)
        out.append(
            ResourceType(
                group=spec.get("group", ""),
                version=ver["name"],
                plural=names.get("plural", ""),
                kind=names.get("kind", ""),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=sub,
                singular=names.get("singular") or names.get("kind", "").lower(),
                schema=(ver.get("schema") or {}).get("openAPIV3Schema"),
                printer_columns=tuple(ver.get("additionalPrinterColumns") or ()),
                validations_from=crd["metadata"]["name"],
                scale_paths=(
                    (subs.get("scale") or {}).get("specReplicasPath", ".spec.replicas"),
                    (subs.get("scale") or {}).get("statusReplicasPath", ".status.replicas"),
                    (subs.get("scale") or {}).get("labelSelectorPath", ".status.selector"),
                ),
            )
        )
    return out


class Registry:
    """All served resource types, looked up by group/version/plural."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._order: list[tuple[str, str]] = []  # group/version in registration order
        for rt in BUILTINS:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt
        if (rt.group, rt.version) not in self._order:
            self._order.append((rt.group, rt.version))

    def remove_crd(self, crd_name: str) -> None:
        for k, rt in list(self._types.items()):
            if rt.validations_from == crd_name:
                del self._types[k]
        live = {(g, v) for g, v, _ in self._types}
        self._order = [gv for gv in self._order if gv in live]

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def group_versions(self) -> list[tuple[str, str]]:
        return list(self._order)

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for (g, v, _), rt in self._types.items() if g == group and v == version]

    def all(self) -> Iterator[ResourceType]:
        return iter(list(self._types.values()))

    def versions_of(self, group: str, plural: str) -> list[ResourceType]:
        return [rt for (g, _, p), rt in self._types.items() if g == group and p == plural]
