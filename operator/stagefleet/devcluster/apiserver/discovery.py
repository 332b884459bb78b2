"""Discovery documents, generated from the registry so applied CRDs show up at once (OpenAPI: openapi.py)."""

from __future__ import annotations

import hashlib
from typing import Any

from .resources import Registry, ResourceType

VERSION = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-stagefleet-emulator",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_SUB_KINDS = {
    "log": ("", "v1", "Pod", ["get"]),
    "binding": ("", "v1", "Binding", ["create"]),
    "eviction": ("policy", "v1", "Eviction", ["create"]),
    "scale": ("autoscaling", "v1", "Scale", ["get", "patch", "update"]),
    "finalize": (None, None, None, ["update"]),
}


def api_versions(host: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    }


def _groups(reg: Registry) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for g, v in reg.group_versions():
        if g:
            groups.setdefault(g, []).append(v)
    return groups


def group_list(reg: Registry) -> dict[str, Any]:
    out = []
    for g, versions in _groups(reg).items():
        vs = [{"groupVersion": f"{g}/{v}", "version": v} for v in versions]
        out.append({"name": g, "versions": vs, "preferredVersion": vs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}


def group(reg: Registry, name: str) -> dict[str, Any] | None:
    return next((g for g in group_list(reg)["groups"] if g["name"] == name), None)


def _resource(rt: ResourceType) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular_name,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")),
    }
    if rt.short_names:
        main["shortNames"] = list(rt.short_names)
    if rt.categories:
        main["categories"] = list(rt.categories)
    main["storageVersionHash"] = hashlib.sha256(f"{rt.group}/{rt.plural}".encode()).hexdigest()[:12]
    out = [main]
    for sub in rt.subresources:
        g, v, kind, verbs = _SUB_KINDS.get(sub, (None, None, None, ["get", "patch", "update"]))
        entry: dict[str, Any] = {
            "name": f"{rt.plural}/{sub}",
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": kind or rt.kind,
            "verbs": verbs,
        }
        if g is not None:
            entry["group"], entry["version"] = g, v
        out.append(entry)
    return out


def resource_list(reg: Registry, group_name: str, version: str) -> dict[str, Any] | None:
    types = reg.in_group_version(group_name, version)
    if not types:
        return None
    resources = [r for rt in types for r in _resource(rt)]
    gv = f"{group_name}/{version}" if group_name else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def wants_aggregated(accept: str) -> bool:
    """kubectl/client-go ask for aggregated discovery first; plain clients (kopf) do not."""
    return any(
        "as=APIGroupDiscoveryList" in part and "v=v2" in part.replace("v=v2beta1", "")
        for part in accept.split(",")
    )


def _aggregated_resource(rt: ResourceType) -> dict[str, Any]:
    main = _resource(rt)[0]
    entry: dict[str, Any] = {
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular_name,
        "verbs": main["verbs"],
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    subs = []
    for sub in rt.subresources:
        g, v, kind, verbs = _SUB_KINDS.get(sub, (None, None, None, ["get", "patch", "update"]))
        subs.append(
            {
                "subresource": sub,
                "verbs": verbs,
                "responseKind": {
                    "group": rt.group if g is None else g,
                    "version": rt.version if v is None else v,
                    "kind": kind or rt.kind,
                },
            }
        )
    if subs:
        entry["subresources"] = subs
    return entry


def aggregated(reg: Registry, legacy: bool) -> dict[str, Any]:
    """apidiscovery.k8s.io/v2 APIGroupDiscoveryList for /api (legacy) or /apis."""
    groups: dict[str, list[str]] = {}
    for g, v in reg.group_versions():
        if (g == "") == legacy:
            groups.setdefault(g, []).append(v)
    items = []
    for g, versions in groups.items():
        items.append(
            {
                "metadata": {"name": g, "creationTimestamp": None},
                "versions": [
                    {
                        "version": v,
                        "resources": [_aggregated_resource(rt) for rt in reg.in_group_version(g, v)],
                        "freshness": "Current",
                    }
                    for v in versions
                ],
            }
        )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }
