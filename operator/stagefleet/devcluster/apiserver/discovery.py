"""Discovery and OpenAPI documents, generated from the registry so applied CRDs show up at once.

OpenAPI v3 advertises the `fieldValidation` parameter on every PATCH, which makes kubectl/helm validate on
the server instead of downloading the (here empty) v2 models. v2 is a minimal protobuf `Document`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

from .resources import Registry, ResourceType

Visible = Callable[[ResourceType], bool]

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
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


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


# -- OpenAPI -----------------------------------------------------------------------------------------------


def _gv_path(group_name: str, version: str) -> str:
    return f"apis/{group_name}/{version}" if group_name else f"api/{version}"


def schema_name(rt: ResourceType) -> str:
    if not rt.group:
        return f"io.k8s.api.core.{rt.version}.{rt.kind}"
    if rt.is_custom:
        return ".".join(reversed(rt.group.split("."))) + f".{rt.version}.{rt.kind}"
    return f"io.k8s.api.{rt.group.split('.')[0]}.{rt.version}.{rt.kind}"


def _gv_doc(reg: Registry, group_name: str, version: str, visible: Visible) -> dict[str, Any] | None:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        OBJECT_META: {
            "description": "ObjectMeta is metadata that all persisted resources must have.",
            "type": "object",
            "properties": {
                k: {"type": "string", "description": k}
                for k in ("name", "namespace", "generateName", "uid", "resourceVersion")
            },
        }
    }
    types = [rt for rt in reg.in_group_version(group_name, version) if visible(rt)]
    if not types:
        return None
    for rt in types:
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        base = "/" + _gv_path(group_name, version) + ("/namespaces/{namespace}" if rt.namespaced else "")
        ref = {"$ref": f"#/components/schemas/{schema_name(rt)}"}
        content = {"application/json": {"schema": ref}}
        op_params = [
            {"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
            for n in ("dryRun", "fieldManager", "fieldValidation")
        ]
        patch_body = {
            "content": {
                t: {"schema": {"type": "object"}}
                for t in (
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                )
            }
        }
        item_ops = {
            "get": {
                "operationId": f"read{rt.kind}",
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "get",
                "responses": {"200": {"content": content}},
            },
            "put": {
                "operationId": f"replace{rt.kind}",
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "put",
                "parameters": op_params,
                "requestBody": {"content": content},
                "responses": {"200": {"content": content}},
            },
            "patch": {
                "operationId": f"patch{rt.kind}",
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "patch",
                "parameters": op_params + [{"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                "requestBody": patch_body,
                "responses": {"200": {"content": content}},
            },
            "delete": {
                "operationId": f"delete{rt.kind}",
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "delete",
                "responses": {"200": {"content": content}},
            },
        }
        paths[f"{base}/{rt.plural}/{{name}}"] = item_ops
        paths[f"{base}/{rt.plural}"] = {
            "post": {
                "operationId": f"create{rt.kind}",
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "post",
                "parameters": op_params,
                "requestBody": {"content": content},
                "responses": {"200": {"content": content}},
            }
        }
        schemas[schema_name(rt)] = _object_schema(rt)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _object_schema(rt: ResourceType) -> dict[str, Any]:
    gvk = [{"group": rt.group, "version": rt.version, "kind": rt.kind}]
    meta = {
        "allOf": [{"$ref": f"#/components/schemas/{OBJECT_META}"}],
        "default": {},
        "description": "Standard object's metadata.",
    }
    common = {
        "apiVersion": {
            "type": "string",
            "description": "APIVersion defines the versioned schema of this representation of an object.",
        },
        "kind": {
            "type": "string",
            "description": "Kind is a string value representing the REST resource this object represents.",
        },
        "metadata": meta,
    }
    if rt.schema:
        sch = copy.deepcopy(dict(rt.schema))
        sch.setdefault("type", "object")
        props = sch.setdefault("properties", {})
        for k, v in common.items():
            if k == "metadata" or k not in props:
                props[k] = v
        sch["x-kubernetes-group-version-kind"] = gvk
        return sch
    return {
        "type": "object",
        "description": f"{rt.kind} (schema not published by the emulator)",
        "properties": common,
        "x-kubernetes-group-version-kind": gvk,
        "x-kubernetes-preserve-unknown-fields": True,
    }


def _always(_rt: ResourceType) -> bool:
    return True


def openapi_v3_docs(reg: Registry, visible: Visible = _always) -> dict[str, dict[str, Any]]:
    """Per group-version documents keyed by their path ("api/v1", "apis/g/v"), of the `visible` types
    (the emulator publishes a new CRD's schemas a moment after it is Established, as a real server does)."""
    docs = {_gv_path(g, v): _gv_doc(reg, g, v, visible) for g, v in reg.group_versions()}
    return {path: doc for path, doc in docs.items() if doc is not None}


def openapi_v3_index(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    paths = {}
    for p, doc in docs.items():
        h = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()
        paths[p] = {"serverRelativeURL": f"/openapi/v3/{p}?hash={h}"}
    return {"paths": paths}


def _pb_field(num: int, payload: bytes) -> bytes:
    out = bytearray([(num << 3) | 2])
    n = len(payload)
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    return bytes(out) + payload


def openapi_v2_protobuf() -> bytes:
    """gnostic openapi_v2.Document{swagger: "2.0", info: {title, version}}: enough for client-go to parse."""
    info = _pb_field(1, b"Kubernetes") + _pb_field(2, VERSION["gitVersion"].encode())
    return _pb_field(1, b"2.0") + _pb_field(2, info)


def openapi_v2_json(reg: Registry, visible: Visible = _always) -> dict[str, Any]:
    """Swagger 2.0 with a definition per served version of every published CRD (no built-in schemas)."""
    definitions = {
        schema_name(rt): _object_schema(rt)
        for rt in reg.all()
        if rt.is_custom and visible(rt)
    }
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
        "paths": {},
        "definitions": definitions,
    }
