"""Discovery documents: plain lists, CRDs appearing and disappearing, OpenAPI v2 (both tiers); the
aggregated list (emulator-only: kube-apiserver 1.24 has none, kubectl falls back to the plain lists)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "doodads.disco.stagefleet.dev"},
    "spec": {
        "group": "disco.stagefleet.dev",
        "scope": "Cluster",
        "names": {"plural": "doodads", "kind": "Doodad", "shortNames": ["dd"], "categories": ["fun"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"


def get(url: str, accept: str = "application/json") -> tuple[str, Any]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.headers["Content-Type"], json.loads(resp.read())


def test_crd_types_are_discoverable(kube: Any) -> None:
    kube.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    kube.kubectl("wait", "--for=condition=Established", "crd/doodads.disco.stagefleet.dev", "--timeout=30s")
    listing = kube.kubectl("api-resources", "--api-group=disco.stagefleet.dev").stdout
    assert "doodads" in listing and "dd" in listing and "false" in listing  # cluster-scoped
    kube.kubectl("delete", "crd", "doodads.disco.stagefleet.dev")
    listing = kube.kubectl("api-resources", "--api-group=disco.stagefleet.dev", check=False).stdout
    assert "doodads" not in listing


def raw(kube: Any, path: str) -> Any:
    return json.loads(kube.kubectl("get", "--raw", path).stdout)


def test_discovery_and_openapi_documents(kube: Any, wait_until: Callable[..., Any]) -> None:
    """What kube-apiserver 1.24 serves: the group and its resources, OpenAPI v2 with the CRD's definition a
    moment after it is Established, no OpenAPI v3 and no `fieldValidation` parameter anywhere (no
    server-side field validation: kubectl validates against the v2 definitions itself)."""
    kube.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    kube.kubectl("wait", "--for=condition=Established", "crd/doodads.disco.stagefleet.dev", "--timeout=30s")
    try:
        assert {
            "name": "disco.stagefleet.dev",
            "versions": [{"groupVersion": "disco.stagefleet.dev/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "disco.stagefleet.dev/v1", "version": "v1"},
        } in raw(kube, "/apis")["groups"]
        names = {r["name"]: r for r in raw(kube, "/apis/disco.stagefleet.dev/v1")["resources"]}
        assert names["doodads"]["namespaced"] is False and names["doodads"]["shortNames"] == ["dd"]
        assert "doodads/status" in names

        definition = "dev.stagefleet.disco.v1.Doodad"

        def published() -> Any:
            doc = raw(kube, "/openapi/v2")
            return doc if definition in doc["definitions"] else None

        doc = wait_until(published, "the CRD's OpenAPI v2 definition")
        assert doc["definitions"][definition] == {  # a root that keeps unknown fields: nothing to check
            "type": "object",
            "x-kubernetes-group-version-kind": [
                {"group": "disco.stagefleet.dev", "kind": "Doodad", "version": "v1"}
            ],
        }
        params = {
            p.get("name")
            for item in doc["paths"].values()
            for op in item.values()
            if isinstance(op, dict)
            for p in op.get("parameters") or []
        }
        assert "fieldValidation" not in params
        v3 = kube.kubectl("get", "--raw", "/openapi/v3", check=False)
        assert v3.returncode != 0 and "the server could not find the requested resource" in v3.stderr
    finally:
        kube.kubectl(
            "delete", "crd", "doodads.disco.stagefleet.dev", "--timeout=60s", check=False, timeout=90
        )


def test_emulator_aggregated_discovery(apiserver: Any) -> None:
    """Emulator-only: it also serves aggregated discovery (apidiscovery.k8s.io/v2), which a 1.24 server
    does not (it answers the plain lists, and kubectl reads those)."""
    url = apiserver.url
    req = urllib.request.Request(
        f"{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        data=json.dumps(CRD).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=30).close()
    ctype, aggregated = get(f"{url}/apis", AGGREGATED)
    params = {p.strip() for p in ctype.split(";")}
    assert {"application/json", "g=apidiscovery.k8s.io", "v=v2", "as=APIGroupDiscoveryList"} <= params
    group = next(i for i in aggregated["items"] if i["metadata"]["name"] == "disco.stagefleet.dev")
    res = group["versions"][0]["resources"][0]
    assert (res["resource"], res["scope"], res["subresources"][0]["subresource"]) == (
        "doodads",
        "Cluster",
        "status",
    )
    _, legacy = get(f"{url}/api", AGGREGATED)
    assert [i["metadata"]["name"] for i in legacy["items"]] == [""]
