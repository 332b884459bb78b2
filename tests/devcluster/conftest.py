"""Shared dev-cluster fixtures: a running API-server emulator (the kubelet teammate may add more)."""

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
    """A cluster to run client tests against: the emulator, or a real one from STAGEFLEET_TEST_KUBECONFIG."""

    kubeconfig: Path
    namespace: str
    home: Path
    emulator: APIServer | None = None  # None on a real cluster: emulator-only tests skip themselves

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


@pytest.fixture
def kube(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Kube]:
    """A fresh namespace on the emulator (or on STAGEFLEET_TEST_KUBECONFIG's cluster), deleted afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    real = os.environ.get("STAGEFLEET_TEST_KUBECONFIG")
    server: APIServer | None = None
    if real:
        kubeconfig = Path(real)
    else:
        server = APIServer(logs_dir=tmp_path / "pod-logs")
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.start_in_thread())
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    k = Kube(kubeconfig, namespace, home, server)
    try:
        k.kubectl(
            "apply",
            "-f",
            "-",
            input=f'{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{namespace}"}}}}',
        )
        yield k
    finally:
        if server is not None:
            server.stop_in_thread()
        else:
            k.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


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
