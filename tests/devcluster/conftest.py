"""Shared dev-cluster fixtures: a running API-server emulator (`apiserver`), a namespace on each tier for
client tests (`kube`, with `test_image` for their pods), and whole dev clusters (`make_cluster`)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from binaries import run_tool
from stagefleet.devcluster.apiserver import APIServer, write_kubeconfig
from tiers import BUILD_NAMESPACE_LABELS, TIERS


@dataclass
class RunningAPIServer:
    server: APIServer
    url: str
    kubeconfig: Path
    logs_dir: Path


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[RunningAPIServer]:
    """A fresh emulator on a free loopback port, with a kubeconfig pointing at it; stopped afterwards."""
    logs_dir = tmp_path / "pod-logs"
    logs_dir.mkdir()
    server = APIServer(logs_dir=logs_dir)
    url = server.start_in_thread()
    try:
        yield RunningAPIServer(server, url, write_kubeconfig(tmp_path / "kubeconfig", url), logs_dir)
    finally:
        server.stop_in_thread()


KUBECTL = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "kubectl"
HELM = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "helm"


@dataclass
class Kube:
    """A cluster to run client tests against, with a fresh namespace: the emulator (tier "dev", or
    STAGEFLEET_TEST_KUBECONFIG's cluster in its place) or the session's real cluster (tier "real")."""

    kubeconfig: Path
    namespace: str
    home: Path
    emulator: APIServer | None = None  # None on a real cluster: emulator-only tests skip themselves
    tier: str = "dev"

    def env(self) -> dict[str, str]:
        """Private caches for kubectl and helm; HOME stays (a real cluster's credential plugins use it)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(self.home / "kube-cache"),
            "HELM_CACHE_HOME": str(self.home / "helm-cache"),
            "HELM_CONFIG_HOME": str(self.home / "helm-config"),
            "HELM_DATA_HOME": str(self.home / "helm-data"),
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run_tool([str(KUBECTL), "-n", self.namespace, *args], self.env(), input=input, check=check,
                        timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_tool([str(HELM), "--namespace", self.namespace, *args], self.env(), check=check,
                        timeout=timeout)

    def require_emulator(self, why: str) -> APIServer:
        """The emulator, or skip: `why` says what the test needs that only the emulator has."""
        if self.emulator is None:
            pytest.skip(f"emulator-only: {why}")
        return self.emulator


def namespace_manifest(name: str) -> str:
    """A test namespace labelled for Pod Security as the project's build namespaces are (tests/tiers.py): a
    real API server enforces the label, the emulator stores it."""
    return json.dumps({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": name, "labels": BUILD_NAMESPACE_LABELS}})


@pytest.fixture(params=TIERS)
def kube(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Kube]:
    """A fresh namespace per test on each tier (tests/tiers.py). "dev": a fresh emulator per test, stopped
    afterwards — or, when STAGEFLEET_TEST_KUBECONFIG is set, that cluster in its place (a namespace on it,
    deleted afterwards; `emulator` is None, so emulator-only tests skip). "real": a namespace on the
    session's real Kubernetes 1.24 (`real_cluster`, tests/conftest.py), deleted afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    server: APIServer | None = None
    if request.param == "real":
        kubeconfig = Path(request.getfixturevalue("real_cluster").kubeconfig)
    elif os.environ.get("STAGEFLEET_TEST_KUBECONFIG"):
        kubeconfig = Path(os.environ["STAGEFLEET_TEST_KUBECONFIG"])
    else:
        server = APIServer(logs_dir=tmp_path / "pod-logs")
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.start_in_thread())
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    k = Kube(kubeconfig, namespace, home, server, request.param)
    try:
        k.kubectl("apply", "-f", "-", input=namespace_manifest(namespace))
        # ready for pods: a real cluster's ServiceAccount controller adds `default` a moment later, and
        # until then a pod is refused (the emulator creates it with the namespace)
        wait_until(lambda: k.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
                   "the namespace's default ServiceAccount")
        yield k
    finally:
        if server is not None:
            server.stop_in_thread()
        else:
            k.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def test_image(base_image: str) -> str:
    """The image test pods name, on both tiers: the session's busybox in the loopback registry, the one a
    real node can pull (the emulator stores the name; the dev kubelet runs no images at all)."""
    return base_image


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy; fail with `what` if it never is (the timeout is a safety net)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    return wait_until


# ---------------------------------------------------------------------------------------------------------
# Kubelet / DevCluster fixtures (the kubelet side of the dev cluster).


@dataclass
class ClusterKube(Kube):
    """`Kube` on a whole DevCluster (emulator + kubelet), or on STAGEFLEET_TEST_KUBECONFIG's real cluster.

    `cluster` is the DevCluster, None on a real cluster (tests of dev-cluster-only behaviour skip then).
    """

    cluster: Any = None

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-o", "json").stdout))

    def pod(self, name: str) -> dict[str, Any]:
        return self.get("pod", name)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def require_devcluster(self) -> Any:
        if self.cluster is None:
            pytest.skip("needs the local dev cluster (kubelet internals)")
        return self.cluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., ClusterKube]]:
    """Factory: `make_cluster(nodes=2, pods_per_node=8, node_labels=None)` → a started DevCluster and a
    fresh namespace on it (or a namespace on STAGEFLEET_TEST_KUBECONFIG's cluster); all stopped afterwards.
    """
    from stagefleet.devcluster.cluster import DevCluster

    made: list[ClusterKube] = []

    def make(**kwargs: Any) -> ClusterKube:
        home = tmp_path / f"home{len(made)}"
        home.mkdir()
        real = os.environ.get("STAGEFLEET_TEST_KUBECONFIG")
        cluster = None
        if real:
            kubeconfig = Path(real)
        else:
            if os.geteuid() != 0:
                pytest.skip("the dev cluster's kubelet needs root (private mount namespaces)")
            cluster = DevCluster(tmp_path / f"cluster{len(made)}", **kwargs)
            cluster.start()
            kubeconfig = cluster.kubeconfig
        k = ClusterKube(kubeconfig, f"t-{uuid.uuid4().hex[:8]}", home, cluster=cluster)
        made.append(k)
        k.kubectl(
            "apply",
            "-f",
            "-",
            input=f'{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{k.namespace}"}}}}',
        )
        return k

    try:
        yield make
    finally:
        for k in made:
            if k.cluster is not None:
                k.cluster.stop()
            else:
                k.kubectl("delete", "namespace", k.namespace, "--wait=false", check=False)


@pytest.fixture
def cluster(make_cluster: Callable[..., ClusterKube]) -> ClusterKube:
    """A default DevCluster (2 nodes × 8 pods) with a fresh namespace."""
    return make_cluster()
