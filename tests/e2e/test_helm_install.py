"""`helm install` of charts/stagefleet with the real helm brings up a working operator that builds the seed.

The operator is not started by the test here: helm creates the Deployment, the dev cluster's Deployment
controller its ReplicaSet and pod, and the kubelet runs the pod's command (`stagefleet operator ...`, from
the venv) as a host process. What differs from a real cluster, and why the values below:

* `operator.extraArgs: [--kubeconfig=...]`: the in-cluster config (service-account token + CA, https
  service address) does not exist for the plain-HTTP emulator, so the operator gets the dev cluster's
  kubeconfig. The copy lives outside /tmp: the chart mounts an emptyDir over /tmp in the operator pod
  (read-only root filesystem), which hides everything under the host's /tmp from that process.
* `worker.insecureRegistries`: the test registry is plain HTTP on 127.0.0.1 (`--insecure-registry`).
* `operator.metricsPort`, `operator.healthPort`: free ports — the pod's process shares the host network
  with everything else. The kubelet does not run probes, so the test calls the probes' URLs itself.
* `operator.extraArgs: [--retry-backoff=1]`: as the other e2e tests; `--log-format=text` for readable logs.
* `operator.extraEnv`: PATH with the venv's bin first, so the worker pods' `stagefleet-worker` and the
  operator resolve from this checkout even when the kubelet's PATH would not put it first.

Worker pods get the chart's worker defaults (securityContext, resources, no storage driver: the worker picks);
the dev kubelet records securityContext and resources without enforcing them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import ROOT, Cluster, Kubectl, seed_manifest
from .oci import manifest_digest

pytestmark = [pytest.mark.cluster, pytest.mark.builder]

HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "stagefleet"
OPERATOR_SELECTOR = "app.kubernetes.io/name=stagefleet,app.kubernetes.io/instance={release}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A private directory outside /tmp (see the module docstring), removed afterwards."""
    for base in ("/var/tmp", str(Path.home())):
        if os.access(base, os.W_OK):
            path = Path(tempfile.mkdtemp(prefix="stagefleet-helm-e2e-", dir=base))
            break
    else:  # pragma: no cover
        pytest.skip("no writable directory outside /tmp for the operator pod's kubeconfig")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def poll(predicate: Callable[[], Any], what: str, diagnose: Callable[[], str], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"never happened: {what}\n{diagnose()}")


def test_helm_install_runs_an_operator_that_builds_the_seed(
    cluster: Cluster,
    namespace: str,
    kubectl: Kubectl,
    registry: LocalRegistry,
    base_image: str,
    outside_tmp: Path,
) -> None:
    if not HELM.exists():
        pytest.skip("the real helm is missing (scripts/setup.sh installs it)")
    if cluster.dev is None:
        pytest.skip("runs the operator as a pod of the local dev cluster (kubeconfig path on this host)")
    release = f"stagefleet-{uuid.uuid4().hex[:5]}"  # contains the chart name: the Deployment is named so
    system_ns = f"{release}-system"
    kubeconfig = outside_tmp / "kubeconfig"
    shutil.copyfile(cluster.kubeconfig, kubeconfig)
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **kubectl.env(),
        "HELM_CACHE_HOME": str(cluster.home / "helm-cache"),
        "HELM_CONFIG_HOME": str(cluster.home / "helm-config"),
        "HELM_DATA_HOME": str(cluster.home / "helm-data"),
    }

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(HELM), *args], capture_output=True, text=True, env=env, timeout=180, check=False
        )
        assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr}"
        return proc

    system = Kubectl(cluster, system_ns)
    selector = OPERATOR_SELECTOR.format(release=release)

    def operator_pods() -> list[dict[str, Any]]:
        proc = system.run("get", "pods", "-l", selector, "-o", "json", check=False)
        return list(json.loads(proc.stdout)["items"]) if proc.returncode == 0 else []

    def operator_logs() -> str:
        pods = operator_pods()
        if not pods:
            return "(no operator pod)"
        name = pods[0]["metadata"]["name"]
        logs = system.run("logs", name, "--tail=80", check=False)
        status = json.dumps(pods[0].get("status"), indent=1)[:3000]
        return f"--- operator pod {name} status ---\n{status}\n--- logs ---\n{logs.stdout}{logs.stderr}"

    values = {
        "watchNamespaces": [namespace],
        "operator": {
            "metricsPort": free_port(),
            "healthPort": free_port(),
            "logFormat": "text",
            "keepSucceededPodsSeconds": 3600,  # the worker pods are looked at below
            "extraArgs": [f"--kubeconfig={kubeconfig}", "--retry-backoff=1"],
            "extraEnv": [{"name": "PATH", "value": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}],
        },
        "worker": {"insecureRegistries": [registry.host]},
    }
    values_file = outside_tmp / "values.json"
    values_file.write_text(json.dumps(values))
    helm("install", release, str(CHART), "-n", system_ns, "--create-namespace", "-f", str(values_file))
    try:
        # the Deployment's pod comes up: made by the dev cluster's Deployment controller, run by the kubelet
        def running() -> dict[str, Any] | None:
            pods = [p for p in operator_pods() if not p["metadata"].get("deletionTimestamp")]
            # phase Running alone is not enough: a crash-looping container keeps the pod Running
            ok = len(pods) == 1 and any(
                "running" in (c.get("state") or {}) and c.get("ready")
                for c in (pods[0].get("status") or {}).get("containerStatuses") or []
            )
            return pods[0] if ok else None

        pod = poll(running, "the operator pod Running", operator_logs, timeout=120)
        container = pod["spec"]["containers"][0]
        assert container["command"] == ["stagefleet"] and container["args"][0] == "operator"
        assert f"--namespace={namespace}" in container["args"]
        # The kubelet here records probes without running them: call what the chart's probes would.
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for kind in ("livenessProbe", "readinessProbe"):
            get = container[kind]["httpGet"]
            url = f"http://127.0.0.1:{ports[get['port']]}{get['path']}"
            poll(lambda u=url: _answers_200(u), f"the {kind} ({url}) answering", operator_logs, timeout=60)
        deploy = system.json("get", "deployment", release)
        poll(
            lambda: (system.json("get", "deployment", release).get("status") or {}).get("availableReplicas")
            == 1,
            "Deployment availableReplicas 1",
            operator_logs,
            timeout=120,
        )
        assert deploy["metadata"]["labels"]["app.kubernetes.io/instance"] == release

        # the seed example, built by that operator
        kubectl.apply(seed_manifest("seed", base_image, registry.host, sleep=1))

        def terminal() -> dict[str, Any] | None:
            assert running() is not None, f"the operator pod is gone or not running\n{operator_logs()}"
            proc = kubectl.run("get", "imagebuild", "seed", "-o", "json", check=False)
            if proc.returncode != 0:
                return None
            obj: dict[str, Any] = json.loads(proc.stdout)
            phase = (obj.get("status") or {}).get("phase")
            return obj if phase in ("Succeeded", "Failed", "Cancelled") else None

        obj = poll(terminal, "the seed ImageBuild terminal", operator_logs, timeout=300)
        status = obj["status"]
        assert status["phase"] == "Succeeded", f"{status.get('message')}\n{operator_logs()}"
        digest = status["image"]["digest"]
        assert manifest_digest(registry.host, "e2e/seed", "latest") == digest

        # the worker pods carry the chart's worker defaults
        workers = kubectl.pods("seed")
        assert len(workers) == 3
        for w in workers:
            c = w["spec"]["containers"][0]
            assert "STAGEFLEET_STORAGE_DRIVER" not in {e["name"] for e in c.get("env") or ()}
            assert c["securityContext"]["capabilities"]["add"] == ["SETUID", "SETGID"]
            assert w["spec"]["securityContext"]["runAsUser"] == 1000
            assert c["resources"]["limits"]["memory"] == "4Gi"
    finally:
        helm("uninstall", release, "--namespace", system_ns)

    poll(lambda: not operator_pods(), "no operator pod after helm uninstall", operator_logs, timeout=120)
    assert system.run("get", "deployment", release, check=False).returncode != 0
    Kubectl(cluster, "default").run("delete", "namespace", system_ns, "--wait=false", check=False)


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False
