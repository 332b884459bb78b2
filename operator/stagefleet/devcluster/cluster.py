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
from stagefleet.devcluster.nodelifecycle import (
    NODE_MONITOR_GRACE_SECONDS,
    NODE_MONITOR_PERIOD,
    NodeLifecycleThread,
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
    reports an unchanged node status (300 s), as a real kubelet does. `node_lifecycle` runs the control
    plane's node lifecycle controller and taint manager (`nodelifecycle.py`): a node whose heartbeats stop
    for `node_monitor_grace_seconds` (40 s) goes Ready=Unknown with the unreachable taints, checked every
    `node_monitor_period` (5 s), as kube-controller-manager's flags of the same names.
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
        node_lifecycle: bool = True,
        node_monitor_grace_seconds: float = NODE_MONITOR_GRACE_SECONDS,
        node_monitor_period: float = NODE_MONITOR_PERIOD,
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
        self.run_node_lifecycle = node_lifecycle
        self.node_monitor = (node_monitor_grace_seconds, node_monitor_period)
        self.node_lifecycle: NodeLifecycleThread | None = None

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
            if self.run_node_lifecycle:
                # Node heartbeats → Ready=Unknown, unreachable taints, evictions (kube-controller-manager).
                self.node_lifecycle = NodeLifecycleThread(
                    self.kubeconfig, grace_seconds=self.node_monitor[0], period=self.node_monitor[1]
                )
                self.node_lifecycle.start()
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
        if self.node_lifecycle is not None:
            self.node_lifecycle.stop()
            self.node_lifecycle = None
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
        """Node-loss simulation: the node's kubelet is gone, its pods' processes run on (see
        `Kubelet.lose_node`); the node goes Ready=Unknown after `node_monitor_grace_seconds`."""
        assert self.kubelet is not None, "cluster not started"
        self.kubelet.lose_node(name)

    def recover_node(self, name: str) -> None:
        """The node's kubelet returns (see `Kubelet.recover_node`): Ready again, the taints go with the
        control plane's next check; pods deleted meanwhile are killed."""
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
