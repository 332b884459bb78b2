"""The kubelet's node objects, leases and heartbeats, and the PATH pods get."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stagefleet.devcluster import kubelet
from stagefleet.devcluster.podruntime import NodeView


def test_node_manifest_labels_and_capacity() -> None:
    cfg = kubelet.node_configs(2, 5, {"pool": "ci"})[1]
    manifest = kubelet.node_manifest(cfg)
    labels = manifest["metadata"]["labels"]
    assert manifest["metadata"]["name"] == "devnode-2"
    assert labels["kubernetes.io/hostname"] == "devnode-2" and labels["pool"] == "ci"
    assert labels["kubernetes.io/os"] == "linux"
    status = kubelet.node_status(cfg, ready=True, when="T1")
    assert status["capacity"]["pods"] == "5" and status["allocatable"]["pods"] == "5"
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    view = NodeView.from_manifest({**manifest, "status": status})
    assert view.max_pods == 5 and view.labels["pool"] == "ci"


def test_lost_node_status_keeps_transition_times_only_when_unchanged() -> None:
    cfg = kubelet.NodeConfig("devnode-1")
    healthy = kubelet.node_status(cfg, ready=True, when="T1")["conditions"]
    lost = kubelet.node_status(cfg, ready=False, when="T2", previous=healthy)
    ready = {c["type"]: c for c in lost["conditions"]}["Ready"]
    assert ready == {
        "type": "Ready",
        "status": "Unknown",
        "reason": "NodeStatusUnknown",
        "message": "Kubelet stopped posting node status.",
        "lastHeartbeatTime": "T2",
        "lastTransitionTime": "T2",
    }
    again = kubelet.node_status(cfg, ready=False, when="T3", previous=lost["conditions"])
    assert {c["type"]: c for c in again["conditions"]}["Ready"]["lastTransitionTime"] == "T2"


def test_pod_path_puts_the_venv_first(monkeypatch: pytest.MonkeyPatch) -> None:
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"/usr/bin:{venv_bin}:/bin")
    assert kubelet.default_path() == f"{venv_bin}:/usr/bin:/bin"
    assert os.path.exists(os.path.join(venv_bin, "stagefleet-worker"))


MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_lease_manifest_is_what_a_kubelet_creates() -> None:
    node = {"metadata": {"name": "devnode-1", "uid": "u-1"}}
    lease = kubelet.lease_manifest(node, "2026-01-01T00:00:00.000001Z")
    assert lease["metadata"] == {
        "name": "devnode-1",
        "namespace": "kube-node-lease",
        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "devnode-1", "uid": "u-1"}],
    }
    assert lease["spec"] == {
        "holderIdentity": "devnode-1",
        "leaseDurationSeconds": 40,
        "renewTime": "2026-01-01T00:00:00.000001Z",
    }
    assert MICRO_TIME.match(kubelet.micro_now())


@pytest.mark.cluster
@pytest.mark.skipif(os.geteuid() != 0, reason="the dev cluster's kubelet needs root")
def test_nodes_renew_their_leases_and_report_status_heartbeats(
    make_cluster: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    # a real kubelet reports an unchanged status every 5 min (nodeStatusReportFrequency); 1 s here
    k = make_cluster(nodes=2, status_report_seconds=1.0)

    def get(*args: str) -> Any:
        proc = k.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def heartbeat(name: str) -> str:
        conds = get("node", name)["status"]["conditions"]
        return str(next(c for c in conds if c["type"] == "Ready")["lastHeartbeatTime"])

    nodes = get("nodes")["items"]
    assert nodes
    for node in nodes:
        name = node["metadata"]["name"]
        lease = wait_until(lambda n=name: get("lease", n, "-n", "kube-node-lease"), f"{name}'s Lease")
        assert lease["spec"]["holderIdentity"] == name
        assert lease["spec"]["leaseDurationSeconds"] == 40
        assert MICRO_TIME.match(lease["spec"]["renewTime"]), lease["spec"]["renewTime"]
        assert lease["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
        ]
    name = nodes[0]["metadata"]["name"]
    renewed = get("lease", name, "-n", "kube-node-lease")["spec"]["renewTime"]
    wait_until(
        lambda: get("lease", name, "-n", "kube-node-lease")["spec"]["renewTime"] > renewed,
        "the Lease renewed",
        timeout=60,
        interval=1.0,
    )
    beat = heartbeat(name)
    wait_until(lambda: heartbeat(name) > beat, "a newer lastHeartbeatTime", timeout=400, interval=1.0)
    ready = next(c for c in get("node", name)["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["lastTransitionTime"] <= beat  # a heartbeat, not a change
