"""The local kubelet as its own process (`python -m stagefleet.devcluster.kubelet`): SIGTERM stops it
cleanly, and started before its API server it waits for it instead of dying.

Dev-cluster only (an emulator in this process, the kubelet as a child process); waits are bounded polls.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_until
from hostprocs import processes_with
from stagefleet.devcluster.apiserver import APIServer, write_kubeconfig

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the dev cluster's kubelet needs root (private mount namespaces)"
)


@dataclass
class KubeletProcess:
    proc: subprocess.Popen[bytes]
    stderr: Path
    root_dir: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def start_kubelet(tmp_path: Path) -> Iterator[Any]:
    started: list[KubeletProcess] = []

    def start(kubeconfig: Path, *extra: str) -> KubeletProcess:
        n = len(started)
        root_dir, stderr = tmp_path / f"kubelet-root-{n}", tmp_path / f"kubelet-{n}.log"
        argv = [sys.executable, "-m", "stagefleet.devcluster.kubelet", "--kubeconfig", str(kubeconfig),
                "--root-dir", str(root_dir), "--logs-dir", str(tmp_path / "pod-logs"), "--nodes", "1",
                "--api-wait", "60", *extra]
        with stderr.open("wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        k = KubeletProcess(proc, stderr, root_dir)
        started.append(k)
        return k

    try:
        yield start
    finally:
        for k in started:  # only if a test failed half-way: the kubelet's own pods die with SIGTERM
            if k.proc.poll() is None:
                k.proc.send_signal(signal.SIGTERM)
                try:
                    k.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    k.proc.kill()
                    k.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(server: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def ready_nodes(server: str) -> list[str]:
    nodes = call(server, "GET", "/api/v1/nodes")["items"]
    return [
        n["metadata"]["name"]
        for n in nodes
        if {"type": "Ready", "status": "True"}.items()
        <= next((c for c in n.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {}).items()
    ]


def test_sigterm_kills_its_pods_removes_its_dirs_and_exits_0(tmp_path: Path, start_kubelet: Any) -> None:
    server = APIServer(logs_dir=tmp_path / "pod-logs")
    url = server.start_in_thread()
    try:
        kubelet = start_kubelet(write_kubeconfig(tmp_path / "kubeconfig", url))
        wait_until(lambda: ready_nodes(url) == ["devnode-1"], "the kubelet's node to be Ready")
        token = f"kubelet-sigterm-{uuid.uuid4().hex}"
        # a container with a child process, both marked with the token on their command lines
        script = (
            "import subprocess, sys, time\n"
            "child = [sys.executable, '-c', 'import time; time.sleep(3600)', sys.argv[1] + '-child']\n"
            "subprocess.Popen(child)\n"
            "time.sleep(3600)\n"
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper", "namespace": "default"},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36",
                                     "command": [sys.executable, "-c", script, token]}]},
        }
        call(url, "POST", "/api/v1/namespaces/default/pods", pod)
        wait_until(lambda: len(processes_with(token)) == 2, "the pod's process and its child")
        assert [p.name for p in (kubelet.root_dir / "pods").iterdir()] != []

        assert kubelet.terminate() == 0, kubelet.log()

        wait_until(lambda: processes_with(token) == [], "no process of the pod left", timeout=10)
        assert not kubelet.root_dir.exists(), sorted(kubelet.root_dir.rglob("*"))
        assert "Traceback" not in kubelet.log(), kubelet.log()
        assert "stopped" in kubelet.log()
    finally:
        server.stop_in_thread()


@pytest.mark.parametrize("kubeconfig_first", [True, False], ids=["kubeconfig-first", "no-kubeconfig-yet"])
def test_started_before_the_api_server_it_waits_and_joins(
    tmp_path: Path, start_kubelet: Any, kubeconfig_first: bool
) -> None:
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    if kubeconfig_first:
        write_kubeconfig(kubeconfig, f"http://127.0.0.1:{port}")
    kubelet = start_kubelet(kubeconfig)
    wait_until(lambda: "waiting up to 60 s for the API server" in kubelet.log(), "the kubelet's waiting line")
    assert kubelet.proc.poll() is None, kubelet.log()

    server = APIServer(port=port, logs_dir=tmp_path / "pod-logs")
    url = server.start_in_thread()
    try:
        write_kubeconfig(kubeconfig, url)
        wait_until(lambda: ready_nodes(url) == ["devnode-1"], "the kubelet to join", timeout=60)
        assert "answers: joining" in kubelet.log()
        assert kubelet.terminate() == 0, kubelet.log()
    finally:
        server.stop_in_thread()
    assert "Traceback" not in kubelet.log(), kubelet.log()


def test_gives_up_after_its_wait_with_one_line_and_exit_1(tmp_path: Path, start_kubelet: Any) -> None:
    kubelet = start_kubelet(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}"),
                            "--api-wait", "1")
    assert kubelet.proc.wait(timeout=60) == 1, kubelet.log()
    log = kubelet.log()
    assert "not started: no API server answered" in log and "Traceback" not in log, log
    assert not kubelet.root_dir.exists()
