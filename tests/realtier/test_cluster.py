"""The real tier itself: it starts, runs a pod from the test registry with logs and exec on loopback, loses
and regains a kubelet, and stops leaving nothing running, mounted or in its cgroups."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from binaries import find_tool
from stagefleet.localregistry import LocalRegistry
from stagefleet.realcluster import RealCluster
from stagefleet.realcluster.cluster import _cgroup_dirs, mounts_under
from tiers import real_tier_unavailable

pytestmark = pytest.mark.xdist_group("realtier")  # beside the session's real cluster (tests/conftest.py)
KUBECTL = find_tool("kubectl")


@pytest.fixture(scope="module")
def real(
    tmp_path_factory: pytest.TempPathFactory, registry: LocalRegistry, pause_image: str
) -> Iterator[RealCluster]:
    why = real_tier_unavailable()
    if why:
        pytest.skip(f"real tier: {why}")
    rc = RealCluster(
        tmp_path_factory.mktemp("rt-lifecycle"),
        pause_image=pause_image,
        registries=[registry.host],
        nodes=1,
        install_crds=False,
    )
    rc.start()
    yield rc
    rc.stop()


def kubectl(rc: RealCluster, *args: str, input: str | None = None, check: bool = True) -> str:
    assert KUBECTL is not None
    proc = subprocess.run(
        [KUBECTL, "--kubeconfig", str(rc.kubeconfig), *args],
        input=input,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wait(predicate: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"never happened: {what}")


def pod(name: str, image: str, command: list[str], **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": image, "command": command}],
                **spec,
            },
        }
    )


def test_a_pod_runs_from_the_test_registry_with_logs_and_exec(real: RealCluster, base_image: str) -> None:
    nodes = json.loads(kubectl(real, "get", "nodes", "-o", "json"))["items"]
    assert [n["metadata"]["name"] for n in nodes] == real.node_names
    info = nodes[0]["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert info["kubeletVersion"].startswith("v1.24")
    kubectl(real, "apply", "-f", "-", input=pod("hello", base_image, ["sh", "-c", "echo hello-$((6*7))"]))
    wait(
        lambda: kubectl(real, "get", "pod", "hello", "-o", "jsonpath={.status.phase}") == "Succeeded",
        "pod hello Succeeded",
    )
    assert kubectl(real, "logs", "hello").strip() == "hello-42"  # apiserver -> kubelet on loopback
    obj = json.loads(kubectl(real, "get", "pod", "hello", "-o", "json"))
    # admission did what a real one does: the token volume and the NoExecute tolerations
    assert any(v["name"].startswith("kube-api-access-") for v in obj["spec"]["volumes"])
    assert {t["key"] for t in obj["spec"]["tolerations"]} >= {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    }
    kubectl(real, "apply", "-f", "-", input=pod("sleeper", base_image, ["sleep", "300"]))
    wait(
        lambda: kubectl(real, "get", "pod", "sleeper", "-o", "jsonpath={.status.phase}") == "Running",
        "pod sleeper Running",
    )
    assert kubectl(real, "exec", "sleeper", "--", "cat", "/proc/1/cmdline").startswith("sleep")
    # the audit log (the reliability suite's pod ledger) saw each creation once, and nothing else
    created = [c for c in real.pod_creations() if c[0] == "default"]
    assert created == [("default", "hello"), ("default", "sleeper")], created


def test_a_missing_service_account_is_refused_with_403(real: RealCluster, base_image: str) -> None:
    assert KUBECTL is not None
    proc = subprocess.run(
        [KUBECTL, "--kubeconfig", str(real.kubeconfig), "create", "-f", "-"],
        input=pod("nosa", base_image, ["true"], serviceAccountName="nope"),
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert 'error looking up service account default/nope: serviceaccount "nope" not found' in proc.stderr


def test_a_stopped_kubelet_leaves_its_pod_running(real: RealCluster, base_image: str) -> None:
    """Real node loss: the control plane marks the node NotReady/Unknown; the pod object stays Running
    (the emulator used to fail such pods at once)."""
    node = real.node_names[0]
    kubectl(real, "apply", "-f", "-", input=pod("survivor", base_image, ["sleep", "300"]))
    wait(
        lambda: kubectl(real, "get", "pod", "survivor", "-o", "jsonpath={.status.phase}") == "Running",
        "pod survivor Running",
    )
    real.stop_kubelet(node)
    try:

        def unknown() -> bool:
            conds = json.loads(kubectl(real, "get", "node", node, "-o", "json"))["status"]["conditions"]
            return any(c["type"] == "Ready" and c["status"] == "Unknown" for c in conds)

        wait(unknown, f"node {node} Ready=Unknown", timeout=120)
        assert kubectl(real, "get", "pod", "survivor", "-o", "jsonpath={.status.phase}") == "Running"
    finally:
        real.start_kubelet(node)
    wait(lambda: real.node_ready(node), f"node {node} Ready again")


def test_stop_leaves_nothing_behind(
    tmp_path: Path, registry: LocalRegistry, base_image: str, pause_image: str
) -> None:
    why = real_tier_unavailable()
    if why:
        pytest.skip(f"real tier: {why}")
    rc = RealCluster(
        tmp_path / "rt", pause_image=pause_image, registries=[registry.host], nodes=1, install_crds=False
    )
    rc.start()
    try:
        kubectl(rc, "apply", "-f", "-", input=pod("busy", base_image, ["sleep", "600"]))
        wait(
            lambda: kubectl(rc, "get", "pod", "busy", "-o", "jsonpath={.status.phase}") == "Running",
            "pod busy Running",
        )
        uid = kubectl(rc, "get", "pod", "busy", "-o", "jsonpath={.metadata.uid}")
        roots = [n.cgroup_root for n in rc._nodes]
        nodes_dir = rc.nodes_dir
        assert nodes_dir is not None and nodes_dir.is_dir()
        assert any((d / "cgroup.procs").read_text().strip() for r in roots for d in _cgroup_dirs(r))
    finally:
        rc.stop()
    assert mounts_under(tmp_path / "rt") == [] and mounts_under(nodes_dir) == []
    assert not nodes_dir.exists()
    assert all(_cgroup_dirs(r) == [] for r in roots)
    mine = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if str(tmp_path / "rt").encode() in cmdline or str(nodes_dir).encode() in cmdline:
                    mine.append(entry.name)
            except OSError:
                continue
    assert mine == [], f"processes left running: {mine}"
    logs = Path("/var/log/pods")
    assert not any(e.name.endswith("_" + uid) for e in (logs.iterdir() if logs.is_dir() else ()))
    assert os.path.isdir(tmp_path / "rt")  # the work directory is the caller's to remove


def test_the_kubernetes_service_is_reachable_from_the_nodes_network(
    real: RealCluster, base_image: str
) -> None:
    """No kube-proxy here: the tier's Service range is loopback and the `kubernetes` Service address is
    forwarded to the API server, so in-cluster clients in host-network pods (the chart's operator) work."""
    import ssl
    import urllib.request

    svc = json.loads(kubectl(real, "get", "service", "kubernetes", "-n", "default", "-o", "json"))
    ip = svc["spec"]["clusterIP"]
    assert ip.startswith("127.200.")
    kubectl(
        real,
        "apply",
        "-f",
        "-",
        input=pod(
            "envcheck",
            base_image,
            ["sh", "-c", "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"],
            hostNetwork=True,
        ),
    )
    wait(
        lambda: kubectl(real, "get", "pod", "envcheck", "-o", "jsonpath={.status.phase}") == "Succeeded",
        "pod envcheck Succeeded",
    )
    assert kubectl(real, "logs", "envcheck").strip() == f"{ip}:443"
    ctx = ssl.create_default_context(cafile=str(real.pki / "ca.crt"))  # the serving cert names the address
    with urllib.request.urlopen(f"https://{ip}:443/readyz", context=ctx, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"ok"


def test_a_cluster_whose_owner_was_killed_is_reaped(tmp_path: Path, registry: LocalRegistry,
                                                     pause_image: str) -> None:
    """A test run killed hard never calls stop(): the next start (reap_orphans) stops what it left."""
    import signal
    import sys

    from stagefleet.realcluster.cluster import reap_orphans

    why = real_tier_unavailable()
    if why:
        pytest.skip(f"real tier: {why}")
    script = (
        "import sys, time; from pathlib import Path; from stagefleet.realcluster import RealCluster\n"
        "rc = RealCluster(Path(sys.argv[1]), pause_image=sys.argv[2], registries=[sys.argv[3]], nodes=1,"
        " install_crds=False)\n"
        "rc.start(); print(rc.nodes_dir, flush=True); time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "rt"), pause_image, registry.host],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    nodes_dir = Path(owner.stdout.readline().strip())
    assert nodes_dir.is_dir()
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    assert _processes_naming(nodes_dir)  # containerd, kubelet, ... run on without their owner
    assert nodes_dir in reap_orphans()
    assert _processes_naming(nodes_dir) == [] and _processes_naming(tmp_path / "rt") == []
    assert not nodes_dir.exists() and mounts_under(tmp_path / "rt") == []


def _processes_naming(path: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (str(path) + "/").encode() in (entry / "cmdline").read_bytes():
                    found.append(entry.name)
            except OSError:
                continue
    return found
