"""A tiny kopf operator reconciles a custom resource: create, update, status patch, pod ownership, deletion.

Written against the public API only: it runs on both tiers (the `kube` fixture), fault injection aside.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from stagefleet.controller.login import login as operator_login

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gizmos.kopftest.stagefleet.dev"},
    "spec": {
        "group": "kopftest.stagefleet.dev",
        "scope": "Namespaced",
        "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def fixture_login(kubeconfig: Path, namespace: str) -> kopf.ConnectionInfo:
    """Everything the kubeconfig says (server, CA, client certificate and key, bearer token and its scheme,
    insecure), as the operator itself logs in (kopf's login_via_client mapping, tests/controller/
    test_login.py compares the two), in the test's namespace."""
    return dataclasses.replace(operator_login(str(kubeconfig)), default_namespace=namespace)


def make_registry(namespace: str, kubeconfig: Path, image: str) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return fixture_login(kubeconfig, namespace)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = True
        settings.watching.server_timeout = 10
        settings.persistence.finalizer = "kopftest.stagefleet.dev/finalizer"

    @kopf.on.create("kopftest.stagefleet.dev", "v1", "gizmos", id="created", backoff=0.5, registry=registry)
    def created(body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, logger: Any, **_: Any) -> dict[str, Any]:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{body['metadata']['name']}-worker"},
            "spec": {"containers": [{"name": "main", "image": image, "command": ["true"]}]},
        }
        kopf.adopt(pod, owner=body)
        import kubernetes

        kubernetes.client.CoreV1Api().create_namespaced_pod(namespace, pod)
        patch.status["phase"] = "Running"
        patch.status["observedSize"] = spec.get("size")
        return {"pod": pod["metadata"]["name"]}

    @kopf.on.update(
        "kopftest.stagefleet.dev", "v1", "gizmos", field="spec.size", backoff=0.5, registry=registry
    )
    def resized(new: Any, patch: kopf.Patch, **_: Any) -> None:
        patch.status["observedSize"] = new

    @kopf.on.delete("kopftest.stagefleet.dev", "v1", "gizmos", backoff=0.5, registry=registry)
    def deleted(**_: Any) -> None:
        pass

    return registry


@pytest.fixture
def operator(kube: Any, test_image: str) -> Iterator[None]:
    """Run the test operator in a thread with its own loop, in the test namespace; stopped afterwards."""
    import kubernetes

    kube.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    kube.kubectl("wait", "--for=condition=Established", "crd/gizmos.kopftest.stagefleet.dev", "--timeout=30s")
    kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig))  # the handlers' own client
    registry = make_registry(kube.namespace, kube.kubeconfig, test_image)
    loop = asyncio.new_event_loop()
    stop: asyncio.Future[Any] = loop.create_future()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(
            kopf.operator(
                registry=registry,
                standalone=True,
                namespaces=[kube.namespace],
                stop_flag=stop,
                ready_flag=ready,
            )
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(60)
    try:
        yield
    finally:
        # gizmos carry kopf's finalizer: deleted while the operator still runs, which releases them
        kube.kubectl("delete", "gizmos", "--all", "--timeout=60s", check=False, timeout=90)
        loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))
        thread.join(60)
        # waited for: on a real cluster the CRD outlives the namespace, and the next test applies it again
        crd = "crd/gizmos.kopftest.stagefleet.dev"
        kube.kubectl("delete", crd, "--timeout=60s", check=False, timeout=90)


def get_json(kube: Any, *args: str) -> Any:
    proc = kube.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_kopf_reconciles_create_update_status_ownership_and_delete(
    kube: Any, operator: None, wait_until: Callable[..., Any]
) -> None:
    kube.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "kopftest.stagefleet.dev/v1",
                "kind": "Gizmo",
                "metadata": {"name": "g1"},
                "spec": {"size": 1},
            }
        ),
    )
    gizmo = wait_until(
        lambda: (
            (g := get_json(kube, "gizmo", "g1")) and (g.get("status") or {}).get("phase") == "Running" and g
        ),
        "status.phase=Running written by the create handler",
    )
    assert gizmo["status"]["observedSize"] == 1
    assert gizmo["status"]["created"] == {"pod": "g1-worker"}
    assert "kopftest.stagefleet.dev/finalizer" in gizmo["metadata"]["finalizers"]

    pod = get_json(kube, "pod", "g1-worker")
    assert pod is not None
    refs = pod["metadata"]["ownerReferences"]
    assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
        ("Gizmo", "g1", gizmo["metadata"]["uid"], True)
    ]

    kube.kubectl("patch", "gizmo", "g1", "--type=merge", "-p", '{"spec":{"size":5}}')
    gizmo = wait_until(
        lambda: (g := get_json(kube, "gizmo", "g1")) and g["status"].get("observedSize") == 5 and g,
        "status.observedSize=5 written by the update handler",
    )
    assert gizmo["metadata"]["generation"] == 2

    kube.kubectl("delete", "gizmo", "g1", "--wait=false")
    wait_until(
        lambda: get_json(kube, "gizmo", "g1") is None, "the gizmo to go once kopf removed its finalizer"
    )
    wait_until(lambda: get_json(kube, "pod", "g1-worker") is None, "the owned pod to be garbage-collected")


def test_kopf_converges_through_injected_faults(
    kube: Any, operator: None, wait_until: Callable[..., Any]
) -> None:
    """20% of requests fail with 429/500/503 and watches drop every second."""
    emulator = kube.require_emulator("fault injection (failing requests and dropping watches on purpose)")
    emulator.faults.update({"error_rate": 0.2, "watch_drop_seconds": 1.0, "seed": 3})
    try:
        for name in ("f1", "f2", "f3"):
            body = {
                "apiVersion": "kopftest.stagefleet.dev/v1",
                "kind": "Gizmo",
                "metadata": {"name": name},
                "spec": {"size": 2},
            }
            wait_until(
                lambda b=body: (
                    kube.kubectl("apply", "-f", "-", input=json.dumps(b), check=False).returncode == 0
                ),
                f"{name} to be applied despite faults",
            )
        for name in ("f1", "f2", "f3"):
            wait_until(
                lambda n=name: (
                    (g := get_json(kube, "gizmo", n)) and (g.get("status") or {}).get("phase") == "Running"
                ),
                f"{name} reconciled",
                timeout=120,
            )
    finally:
        emulator.faults.update({"error_rate": 0.0, "watch_drop_seconds": None})
    for name in ("f1", "f2", "f3"):
        assert get_json(kube, "pod", f"{name}-worker") is not None
    assert emulator.faults.injected > 0 and emulator.faults.watches_dropped > 0


# -- the fixture's login, unit-level ------------------------------------------------------------------------


def test_fixture_login_from_the_tier_kubeconfig(kube: Any) -> None:
    """The emulator's kubeconfig (plain HTTP, maybe a token) and the real tier's (TLS, client certificate)."""
    info = fixture_login(kube.kubeconfig, "ns-a")
    kc = yaml.safe_load(kube.kubeconfig.read_text())
    assert info.server == kc["clusters"][0]["cluster"]["server"].rstrip("/")
    assert info.default_namespace == "ns-a"
    user = kc["users"][0]["user"]
    if user.get("token"):
        assert (info.scheme, info.token) == ("Bearer", user["token"])
    else:
        assert info.token is None
    if user.get("client-certificate-data"):
        assert info.certificate_path and info.private_key_path


def test_fixture_login_from_a_client_certificate_kubeconfig(tmp_path: Path) -> None:
    """No token at all: the CA, certificate and key reach kopf (the old login passed the server only)."""
    pem = {
        "ca": "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n",
        "cert": "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n",
        "key": "-----BEGIN EC PRIVATE KEY-----\na2V5\n-----END EC PRIVATE KEY-----\n",
    }
    data = {k: base64.b64encode(v.encode()).decode() for k, v in pem.items()}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "admin",
                "clusters": [
                    {"name": "real", "cluster": {"server": "https://127.0.0.1:6443",
                                                  "certificate-authority-data": data["ca"]}}
                ],
                "users": [
                    {"name": "admin", "user": {"client-certificate-data": data["cert"],
                                               "client-key-data": data["key"]}}
                ],
                "contexts": [{"name": "admin", "context": {"cluster": "real", "user": "admin"}}],
            }
        )
    )
    info = fixture_login(kubeconfig, "ns-b")
    assert info.server == "https://127.0.0.1:6443" and info.default_namespace == "ns-b"
    assert info.ca_path and Path(info.ca_path).read_text() == pem["ca"]
    assert info.certificate_path and Path(info.certificate_path).read_text() == pem["cert"]
    assert info.private_key_path and Path(info.private_key_path).read_text() == pem["key"]
    assert info.token is None and info.insecure is False
