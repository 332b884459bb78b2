"""A CRD's OpenAPI schema appears a moment after it is Established, as on a real API server.

kube-apiserver's OpenAPI controller publishes a new CRD asynchronously (about a second after Established),
so `kubectl explain` right after `kubectl wait --for=condition=Established` fails there, and kubectl's
client-side validation (against the same document) does not happen yet; the emulator waits
`openapi_delay` seconds too, so tests and docs that skip the wait fail here as well.

Emulator-only: it takes a delay long enough to look before it deterministically; a real server's second
cannot be stretched. Both tiers wait for the schema before relying on it (test_apiserver_kubectl.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stagefleet.devcluster.apiserver import APIServer

GROUP = "later.stagefleet.dev"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"gizmos.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "gizmos", "kind": "Gizmo"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": {"type": "object", "description": "The gizmo's wishes."}},
                    }
                },
            }
        ],
    },
}
DELAY = 3.0  # long enough that the first look surely comes before it on a loaded machine


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def slow_openapi(tmp_path: Path) -> Iterator[str]:
    server = APIServer(logs_dir=tmp_path, openapi_delay=DELAY)
    try:
        yield server.start_in_thread()
    finally:
        server.stop_in_thread()


def test_crd_schema_is_published_after_established(slow_openapi: str, wait_until: Callable[..., Any]) -> None:
    url = slow_openapi
    crds = f"{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    code, _ = call(crds, "POST", CRD)
    assert code == 201
    crd = call(f"{crds}/gizmos.{GROUP}")[1]
    assert {"type": "Established", "status": "True"}.items() <= crd["status"]["conditions"][1].items()
    # served at once (discovery, CRUD) ...
    assert "gizmos" in [r["name"] for r in call(f"{url}/apis/{GROUP}/v1")[1]["resources"]]
    assert call(f"{url}/apis/{GROUP}/v1/namespaces/default/gizmos")[0] == 200
    # ... but not in OpenAPI yet
    name = "dev.stagefleet.later.v1.Gizmo"
    assert name not in call(f"{url}/openapi/v2")[1]["definitions"]
    wait_until(lambda: name in call(f"{url}/openapi/v2")[1]["definitions"], "the v2 definition")
    v2 = call(f"{url}/openapi/v2")[1]["definitions"][name]
    assert v2["properties"]["spec"]["description"] == "The gizmo's wishes."
    assert v2["x-kubernetes-group-version-kind"] == [{"group": GROUP, "version": "v1", "kind": "Gizmo"}]
    assert call(f"{url}/openapi/v3")[0] == 404  # 1.24 serves no OpenAPI v3

    # deleted: gone from OpenAPI; created again: published after the delay again
    assert call(f"{crds}/gizmos.{GROUP}", "DELETE")[0] == 200
    wait_until(lambda: name not in call(f"{url}/openapi/v2")[1]["definitions"], "the definition removed")
    wait_until(
        lambda: call(crds, "POST", CRD)[0] == 201,
        "the CRD created again",
    )
    assert name not in call(f"{url}/openapi/v2")[1]["definitions"]
    wait_until(lambda: name in call(f"{url}/openapi/v2")[1]["definitions"], "published again")
