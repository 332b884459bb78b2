"""Unit tests of the kubelet's node objects and the PATH pods get."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
