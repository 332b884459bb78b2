"""Discovery documents: plain and aggregated lists, CRDs appearing and disappearing, OpenAPI v3."""

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


def test_crd_types_are_discoverable_plain_and_aggregated(kube: Any) -> None:
    kube.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    kube.kubectl("wait", "--for=condition=Established", "crd/doodads.disco.stagefleet.dev", "--timeout=30s")
    listing = kube.kubectl("api-resources", "--api-group=disco.stagefleet.dev").stdout
    assert "doodads" in listing and "dd" in listing and "false" in listing  # cluster-scoped
    kube.kubectl("delete", "crd", "doodads.disco.stagefleet.dev")
    listing = kube.kubectl("api-resources", "--api-group=disco.stagefleet.dev", check=False).stdout
    assert "doodads" not in listing


def test_emulator_discovery_documents(apiserver: Any, wait_until: Callable[..., Any]) -> None:
    url = apiserver.url
    req = urllib.request.Request(
        f"{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        data=json.dumps(CRD).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=30).close()
    _, groups = get(f"{url}/apis")
    assert {
        "name": "disco.stagefleet.dev",
        "versions": [{"groupVersion": "disco.stagefleet.dev/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "disco.stagefleet.dev/v1", "version": "v1"},
    } in groups["groups"]
    _, resources = get(f"{url}/apis/disco.stagefleet.dev/v1")
    names = {r["name"]: r for r in resources["resources"]}
    assert names["doodads"]["namespaced"] is False and names["doodads"]["shortNames"] == ["dd"]
    assert "doodads/status" in names

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

    # OpenAPI: published a moment after the CRD is Established (test_apiserver_openapi.py)
    def published() -> Any:
        index = get(f"{url}/openapi/v3")[1]
        return index if "apis/disco.stagefleet.dev/v1" in index["paths"] else None

    index = wait_until(published, "the CRD's OpenAPI v3 document")
    _, doc = get(url + index["paths"]["apis/disco.stagefleet.dev/v1"]["serverRelativeURL"])
    patch = doc["paths"]["/apis/disco.stagefleet.dev/v1/doodads/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"]["kind"] == "Doodad"
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
