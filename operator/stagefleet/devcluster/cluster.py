"""`DevCluster`: the API-server emulator plus the local kubelet, as one context manager.

Used by `stagefleet dev-cluster up`, the test fixtures and the benchmarks, so they all get the same
cluster. A development and test tool: plain HTTP without auth on 127.0.0.1, pods run as host processes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from stagefleet.devcluster.deployments import DeploymentControllerThread
from stagefleet.devcluster.kubelet import (
    LEASE_RENEW_SECONDS,
    NODE_STATUS_REPORT_SECONDS,
    KubeletThread,
    NodeConfig,
    node_configs,
)

REPO_CRDS = Path(__file__).resolve().parents[3] / "crds"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


class DevCluster:
    """API emulator (own thread and loop) + kubelet (own thread and loop) + kubeconfig in `workdir`.

    `workdir/kubeconfig` is written on start; pod logs go to `workdir/logs`, pod volumes to
    `workdir/kubelet`. `faults` is the emulator's live `Faults` object (error rate, watch drops, latency).
    `node_specs` replaces the uniform `nodes`/`pods_per_node`/`node_labels` nodes (e.g. tainted ones).
    `deployments` runs the minimal Deployment/ReplicaSet controller (`deployments.py`) next to the kubelet.
    `lease_seconds`/`status_report_seconds`: how often the kubelet renews each node's Lease (10 s) and
    reports an unchanged node status (300 s), as a real kubelet does.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = 2,
        pods_per_node: int = 8,
        node_labels: Mapping[str, str] | None = None,
        install_crds: bool = True,
        crds_dir: Path | None = None,
        node_specs: Sequence[NodeConfig] | None = None,
        verbose: bool = False,
        deployments: bool = True,
        lease_seconds: float = LEASE_RENEW_SECONDS,
        status_report_seconds: float = NODE_STATUS_REPORT_SECONDS,
    ) -> None:
        from stagefleet.devcluster.apiserver import Faults

        self.workdir = Path(workdir)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.logs_dir = self.workdir / "logs"
        self.server = ""
        self.nodes = list(node_specs) if node_specs else node_configs(nodes, pods_per_node, node_labels)
        self.install_crds = install_crds
        self.crds_dir = crds_dir or REPO_CRDS
        self.faults = Faults()
        self.verbose = verbose
        self._apiserver: Any = None
        self.kubelet: KubeletThread | None = None
        self.run_deployments = deployments
        self.deployments: DeploymentControllerThread | None = None
        self.heartbeats = (lease_seconds, status_report_seconds)  # node Lease renewal, node status report

    def start(self) -> None:
        """Start the emulator, write the kubeconfig, install the CRDs, start the kubelet (nodes Ready)."""
        from stagefleet.devcluster.apiserver import APIServer, write_kubeconfig

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._apiserver = APIServer(logs_dir=self.logs_dir, faults=self.faults)
            self.server = self._apiserver.start_in_thread()
            write_kubeconfig(self.kubeconfig, self.server)
            if self.install_crds:
                self._install_crds()
            self.kubelet = KubeletThread(
                self.kubeconfig,
                nodes=self.nodes,
                root_dir=self.workdir / "kubelet",
                logs_dir=self.logs_dir,
                verbose=self.verbose,
                lease_seconds=self.heartbeats[0],
                status_report_seconds=self.heartbeats[1],
            )
            self.kubelet.start()
            if self.run_deployments:
                # Deployments → ReplicaSets → pods (what `helm install` of an operator chart needs).
                self.deployments = DeploymentControllerThread(self.kubeconfig)
                self.deployments.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the Deployment controller, kill every pod process, stop the kubelet, then the emulator.
        Safe to call twice."""
        if self.deployments is not None:
            self.deployments.stop()
            self.deployments = None
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        if self._apiserver is not None:
            self._apiserver.stop_in_thread()
            self._apiserver = None

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def lose_node(self, name: str) -> None:
        """Node-loss simulation (see `Kubelet.lose_node`)."""
        assert self.kubelet is not None, "cluster not started"
        self.kubelet.lose_node(name)

    def recover_node(self, name: str) -> None:
        """Undo `lose_node` for new pods (the node is Ready again; its failed pods stay failed)."""
        assert self.kubelet is not None, "cluster not started"
        self.kubelet.recover_node(name)

    # ----------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            self.server + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def _install_crds(self) -> None:
        install_crds(self._request, self.crds_dir)


def install_crds(request: Callable[[str, str, Any], Any], crds_dir: Path) -> None:
    """Create every CRD in `crds_dir` through `request(method, path, body)` (an existing one is kept) and
    wait until each is Established. Shared by the dev cluster and the real tier."""
    if not crds_dir.is_dir():
        return
    names = []
    for path in sorted(crds_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            names.append(doc["metadata"]["name"])
            try:
                request("POST", CRD_PATH, doc)
            except urllib.error.HTTPError as e:
                if e.code != 409:
                    raise RuntimeError(f"installing {path.name}: {e.code} {e.read().decode()}") from e
    for name in names:
        for _ in range(600):
            crd = request("GET", f"{CRD_PATH}/{name}", None)
            conds = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"CRD {name} never became Established")
