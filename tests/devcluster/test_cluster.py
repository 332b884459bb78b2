"""`DevCluster` and `stagefleet dev-cluster up/down`: nodes, CRDs, kubeconfig, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import KUBECTL, wait_until
from hostprocs import processes_with
from stagefleet.devcluster.cluster import DevCluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0, reason="pods run in private mount namespaces (root)"),
]


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    proc = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(kubeconfig), *args],
        input=input,
        text=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, "HOME": str(kubeconfig.parent)},
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def alive(pid: int) -> bool:
    """Running (a zombie awaiting an absent reaper does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_sleeper(kubeconfig: Path, token: str) -> None:
    """A pod whose process carries `token` in its argv, running until killed."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "echo up; while true; do sleep 0.1; done", token],
                }
            ],
        },
    }
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps(pod))

    def running() -> bool:
        out = json.loads(kubectl(kubeconfig, "get", "pod", "sleeper", "-n", "default", "-o", "json"))
        return out["status"].get("phase") == "Running"

    wait_until(running, "the sleeper pod to run")


def server_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/version", timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def test_devcluster_nodes_crds_and_clean_stop(tmp_path: Path) -> None:
    token = f"marker-{uuid.uuid4().hex}"
    with DevCluster(tmp_path / "c", nodes=3, pods_per_node=4, node_labels={"pool": "builders"}) as c:
        assert c.server.startswith("http://127.0.0.1:")
        nodes = json.loads(kubectl(c.kubeconfig, "get", "nodes", "-o", "json"))["items"]
        assert [n["metadata"]["name"] for n in nodes] == ["devnode-1", "devnode-2", "devnode-3"]
        for n in nodes:
            assert n["metadata"]["labels"]["kubernetes.io/hostname"] == n["metadata"]["name"]
            assert n["metadata"]["labels"]["pool"] == "builders"
            assert n["status"]["capacity"]["pods"] == "4"
            ready = next(cond for cond in n["status"]["conditions"] if cond["type"] == "Ready")
            assert ready["status"] == "True"
        if any(Path(__file__).resolve().parents[2].joinpath("crds").glob("*.yaml")):
            crds = json.loads(kubectl(c.kubeconfig, "get", "crd", "-o", "json"))["items"]
            assert "imagebuilds.stagefleet.io" in [crd["metadata"]["name"] for crd in crds]
        start_sleeper(c.kubeconfig, token)
        assert processes_with(token)
        server = c.server
    assert not processes_with(token)
    assert not server_answers(server)
    assert not (tmp_path / "c" / "kubelet" / "pods").exists()  # volumes (secret data) are removed


def test_lose_node_via_devcluster_marks_the_node_not_ready(tmp_path: Path) -> None:
    """The node goes NotReady once the control plane misses its heartbeats for the grace period."""
    fast = {"lease_seconds": 0.5, "node_monitor_grace_seconds": 2.0, "node_monitor_period": 0.5}
    with DevCluster(tmp_path / "c", nodes=2, install_crds=False, **fast) as c:

        def status() -> dict[str, str]:
            out = kubectl(c.kubeconfig, "get", "nodes", "--no-headers")
            return {line.split()[0]: line.split()[1] for line in out.splitlines()}

        c.lose_node("devnode-2")
        assert status() == {"devnode-1": "Ready", "devnode-2": "Ready"}  # not yet: no heartbeat missed
        wait_until(lambda: status() == {"devnode-1": "Ready", "devnode-2": "NotReady"}, "devnode-2 NotReady")
        c.recover_node("devnode-2")
        wait_until(lambda: status() == {"devnode-1": "Ready", "devnode-2": "Ready"}, "devnode-2 Ready again")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stagefleet.cli", "dev-cluster", *args],
        text=True,
        capture_output=True,
        timeout=180,
        env=env,
    )


def test_cli_up_detach_then_down(tmp_path: Path) -> None:
    workdir, kc = tmp_path / "wd", tmp_path / "my-kubeconfig"
    env: dict[str, Any] = {**os.environ, "STAGEFLEET_DEV_CLUSTER_DIR": str(tmp_path / "unused-default")}
    up = run_cli(
        "up",
        "--detach",
        "--workdir",
        str(workdir),
        "--kubeconfig",
        str(kc),
        "--nodes",
        "2",
        "--pods-per-node",
        "3",
        "--node-label",
        "pool=ci",
        env=env,
    )
    state: dict[str, Any] = {}
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads((workdir / "state.json").read_text())
        assert state["server"] in up.stdout and str(kc) in up.stdout
        assert "development/test tool" in up.stdout and "dev-cluster down" in up.stdout
        assert kubectl(kc, "get", "nodes", "-l", "pool=ci", "-o", "name").split() == [
            "node/devnode-1",
            "node/devnode-2",
        ]
        again = run_cli("up", "--detach", "--workdir", str(workdir), env=env)
        assert again.returncode == 1 and "already running" in again.stderr
        token = f"marker-{uuid.uuid4().hex}"
        start_sleeper(kc, token)
        assert processes_with(token)
    finally:
        down = run_cli("down", "--workdir", str(workdir), env=env)
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    assert not (workdir / "state.json").exists()
    assert not alive(state["pid"])
    assert not processes_with(token)
    assert not server_answers(state["server"])
    assert "no dev cluster running" in run_cli("down", "--workdir", str(workdir), env=env).stdout


def test_help_says_it_is_a_development_tool() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "stagefleet.cli", "dev-cluster", "--help"],
        text=True,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    assert "development" in out and "not for production" in out.lower()


def test_cli_up_in_the_foreground_stops_on_ctrl_c(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stagefleet.cli",
            "dev-cluster",
            "up",
            "--workdir",
            str(workdir),
            "--nodes",
            "1",
            "--no-crds",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        state = wait_until(
            lambda: (
                json.loads((workdir / "state.json").read_text())
                if (workdir / "state.json").exists()
                else None
            ),
            "the cluster to come up",
            timeout=60,
        )
        assert kubectl(Path(state["kubeconfig"]), "get", "nodes", "-o", "name").split() == ["node/devnode-1"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "kubectl get nodes" in out and "Ctrl-C" in out
    assert not (workdir / "state.json").exists()
    assert not server_answers(state["server"])


def test_cli_rejects_a_bad_node_label(tmp_path: Path) -> None:
    res = run_cli("up", "--workdir", str(tmp_path), "--node-label", "novalue", env=dict(os.environ))
    assert res.returncode == 2 and "K=V" in res.stderr
