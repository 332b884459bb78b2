"""The builder image (stagefleet.images) on the real tier: a worker pod with the chart's default worker
securityContext builds a 2-stage Dockerfile rootless and pushes it; with each securityContext change that
breaks rootless buildah, the worker's error names the field to set back.

Pods use the node's network (hostNetwork) only because the test registry listens on the node's loopback.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from binaries import REPO, find_tool
from stagefleet import buildenv
from stagefleet.controller.podspec import STORAGE_MOUNT, TERMINATION_LOG
from stagefleet.images import Images, ensure_images
from stagefleet.localregistry import LocalRegistry, ensure_base_image, ensure_pause_image
from stagefleet.realcluster import RealCluster
from tiers import real_tier_unavailable

pytestmark = [pytest.mark.xdist_group("realtier"), pytest.mark.timeout(1800)]
KUBECTL = find_tool("kubectl")
WORKER_VALUES = yaml.safe_load((REPO / "charts" / "stagefleet" / "values.yaml").read_text())["worker"]
NS = "default"
STORAGE_ROOT = f"{STORAGE_MOUNT}/storage"
# Runs in the worker container: who we are and what we may, the worker, then where its storage went. The
# facts and the worker's result JSON (last line) go to the termination message: pod logs on this machine
# may be collected early by another real cluster's kubelet (they share /var/log/pods).
SCRIPT = f"""
facts=/tmp/facts
echo "UID=$(id -u)" > $facts
grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status >> $facts
stagefleet-worker "$@" --result-file /tmp/result.json 2> /tmp/worker.err
rc=$?
cat /tmp/worker.err >&2
echo "RC=$rc" >> $facts
grep -m1 '^stagefleet-worker: storage: ' /tmp/worker.err | sed 's/^stagefleet-worker: /STORAGE=/' >> $facts
echo "GRAPH=$(ls {STORAGE_ROOT}/storage 2>/dev/null | tr '\\n' ' ')" >> $facts
echo "HOME_CONTAINERS=$(ls -A "$HOME/.local/share/containers" 2>/dev/null | wc -l)" >> $facts
cat $facts >&2
cat $facts /tmp/result.json > {TERMINATION_LOG}
exit $rc
"""


@dataclass(frozen=True)
class Tier:
    cluster: RealCluster
    registry: LocalRegistry
    images: Images
    busybox: str


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    why = real_tier_unavailable()
    if why:
        pytest.skip(f"real tier: {why}")
    work = tmp_path_factory.mktemp("rt-builder")
    reg = LocalRegistry(work / "registry").start()
    env = buildenv.prepare(work / "bstore", insecure_registries=[reg.host])
    rc: RealCluster | None = None
    try:
        busybox = ensure_base_image(reg.host, env)
        pause = ensure_pause_image(reg.host, env)
        images = ensure_images(reg.host)
        rc = RealCluster(work / "cluster", pause_image=pause, registries=[reg.host], nodes=1,
                         install_crds=False)
        rc.start()
        yield Tier(rc, reg, images, busybox)
    finally:
        if rc is not None:
            rc.stop()
        buildenv.cleanup(work / "bstore", env)
        reg.stop()


def kubectl_logs(rc: RealCluster, name: str) -> str:
    assert KUBECTL is not None
    proc = subprocess.run([KUBECTL, "--kubeconfig", str(rc.kubeconfig), "logs", "-n", NS, name],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.stdout + proc.stderr


def chart_security() -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's default worker pod and container securityContext (values.yaml)."""
    return copy.deepcopy(WORKER_VALUES["podSecurityContext"]), copy.deepcopy(WORKER_VALUES["securityContext"])


def dockerfile(busybox: str) -> str:
    return (f"FROM {busybox} AS deps\n"
            "RUN echo dep > /dep && id -u > /build-uid\n"
            f"FROM {busybox} AS app\n"
            "COPY --from=deps /dep /dep\n"
            "RUN cat /dep > /app && ls -ln /dep > /owner\n")


@dataclass(frozen=True)
class Outcome:
    phase: str
    facts: str  # KEY=VALUE lines from SCRIPT
    result: dict[str, Any]  # the worker's result JSON
    log: str  # the pod's log, for failure messages (may be gone, see SCRIPT)


def run_worker_pod(t: Tier, name: str, container_sc: dict[str, Any], pod_sc: dict[str, Any],
                   env: dict[str, str] | None = None, timeout: float = 300) -> Outcome:
    """Create the Dockerfile ConfigMap and a worker pod building it; wait until the pod ends."""
    rc, host = t.cluster, t.registry.host
    rc.request("POST", f"/api/v1/namespaces/{NS}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
        "data": {"Dockerfile": dockerfile(t.busybox)}})
    args = ["--inline-dockerfile", "/run/stagefleet/dockerfile/Dockerfile", "--group", "g1",
            "--target", "app", "--stage", "deps", "--stage", "app", "--no-cache",
            "--push", f"{host}/rt/{name}:1", "--insecure-registry", host,
            "--storage-root", STORAGE_ROOT]
    container: dict[str, Any] = {
        "name": "worker", "image": t.images.builder, "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", SCRIPT, "worker"], "args": args,
        "volumeMounts": [{"name": "storage", "mountPath": STORAGE_MOUNT},
                         {"name": "dockerfile", "mountPath": "/run/stagefleet/dockerfile", "readOnly": True}],
        "terminationMessagePath": TERMINATION_LOG, "securityContext": container_sc,
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False, "enableServiceLinks": False,
            "hostNetwork": True,  # the test registry listens on the node's loopback
            "securityContext": pod_sc, "containers": [container],
            "volumes": [{"name": "storage", "emptyDir": {}},
                        {"name": "dockerfile", "configMap": {"name": name}}],
        },
    }
    rc.request("POST", f"/api/v1/namespaces/{NS}/pods", pod)
    deadline = time.monotonic() + timeout
    while True:
        obj = rc.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
        phase = obj["status"].get("phase")
        if phase in ("Succeeded", "Failed"):
            message = obj["status"]["containerStatuses"][0]["state"]["terminated"].get("message", "")
            facts, _, last = message.strip().rpartition("\n")
            log = kubectl_logs(rc, name)
            try:
                result = json.loads(last)
            except ValueError:
                raise AssertionError(f"no result JSON in the termination message:\n{message}\n{log}") \
                    from None
            return Outcome(phase, facts, result, log)
        assert time.monotonic() < deadline, f"pod {name} still {obj['status'].get('phase')}: {obj['status']}"
        time.sleep(0.5)


def manifest_status(host: str, repo: str, digest: str) -> int:
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{digest}", method="HEAD", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def field(out: Outcome, name: str) -> str:
    m = re.search(rf"^{name}[=:][ \t]*(.*)$", out.facts, re.M)
    assert m, f"{name} not in the facts:\n{out.facts}\n{out.log}"
    return m.group(1).strip()


@pytest.mark.parametrize("driver", ["auto", "vfs"])
def test_worker_pod_builds_rootless_with_the_chart_security_context(tier: Tier, driver: str) -> None:
    """`auto`: the worker picks the storage driver (kernel overlay on the emptyDir here); `vfs`: what the
    chart's default worker.storageDriver sets."""
    pod_sc, container_sc = chart_security()
    name = f"build-{driver}"
    env = {"STAGEFLEET_STORAGE_DRIVER": "vfs"} if driver == "vfs" else None
    out = run_worker_pod(tier, name, container_sc, pod_sc, env)
    assert out.phase == "Succeeded", f"{out.facts}\n{out.result}\n{out.log}"
    assert field(out, "UID") == "1000"
    assert int(field(out, "CapEff"), 16) == 0  # SETUID/SETGID only in the bounding set
    assert field(out, "NoNewPrivs") == "0" and field(out, "Seccomp") == "0"
    assert out.result["ok"] and out.result["digest"].startswith("sha256:"), out.result
    assert manifest_status(tier.registry.host, f"rt/{name}", out.result["digest"]) == 200
    # buildah's storage is on the emptyDir below --storage-root, nothing in $HOME on the root filesystem
    mode = re.fullmatch(r"storage: (\S+) \((.*)\) in (\S+)", field(out, "STORAGE"))
    assert mode and mode.group(3) == f"{STORAGE_ROOT}/storage", out.facts
    graph = field(out, "GRAPH").split()
    assert f"{mode.group(1)}-images" in graph and f"{mode.group(1)}-layers" in graph, out.facts
    assert field(out, "HOME_CONTAINERS") == "0", out.facts
    if driver == "vfs":
        assert (mode.group(1), mode.group(2)) == ("vfs", "requested"), out.facts
    else:  # an emptyDir on a local filesystem takes kernel overlay in a user namespace
        assert (mode.group(1), mode.group(2)) == ("overlay", "kernel, rootless"), out.facts


@pytest.mark.parametrize(("case", "change", "hint"), [
    ("seccomp", {"seccompProfile": {"type": "RuntimeDefault"}},
     "securityContext.seccompProfile.type: Unconfined"),
    ("nosetuid", {"capabilities": {"drop": ["ALL"], "add": ["SETGID"]}},
     "add SETUID to securityContext.capabilities.add"),
    ("nnp", {"allowPrivilegeEscalation": False}, "securityContext.allowPrivilegeEscalation: true"),
])
def test_a_broken_security_context_is_named_in_the_error(tier: Tier, case: str, change: dict[str, Any],
                                                         hint: str) -> None:
    pod_sc, container_sc = chart_security()
    container_sc.update(change)
    out = run_worker_pod(tier, f"broken-{case}", container_sc, pod_sc)
    assert out.phase == "Failed", f"{out.facts}\n{out.result}\n{out.log}"
    assert not out.result["ok"] and field(out, "RC") == "16"  # not retried: the same spec fails the same way
    assert out.result["error"]["kind"] == "security-context"
    message = out.result["error"]["message"]
    assert "rootless buildah could not create a user namespace" in message and hint in message, message


def test_operator_image_runs_as_the_chart_runs_it(tier: Tier) -> None:
    """The operator image under the chart's operator securityContext (uid 65532, read-only root
    filesystem, RuntimeDefault seccomp) with /tmp an emptyDir: the package and kopf import, the CLI runs."""
    values = yaml.safe_load((REPO / "charts" / "stagefleet" / "values.yaml").read_text())["operator"]
    script = ("id -u; /opt/stagefleet/bin/python -c "
              "'import kopf, kubernetes, stagefleet.controller.handlers' && echo IMPORTS_OK; "
              "stagefleet operator --help > /dev/null && echo CLI_OK; "
              "touch /probe 2>/dev/null || echo ROOT_READ_ONLY; touch /tmp/probe && echo TMP_WRITABLE")
    name = "operator-image"
    tier.cluster.request("POST", f"/api/v1/namespaces/{NS}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "securityContext": values["podSecurityContext"],
            "containers": [{"name": "operator", "image": tier.images.operator, "command": ["sh", "-c"],
                            "args": [f"({script}) > {TERMINATION_LOG} 2>&1"],
                            "securityContext": values["securityContext"],
                            "env": [{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}],
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        },
    })
    deadline = time.monotonic() + 180
    while True:
        obj = tier.cluster.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
        if obj["status"].get("phase") in ("Succeeded", "Failed"):
            break
        assert time.monotonic() < deadline, obj["status"]
        time.sleep(0.5)
    message = obj["status"]["containerStatuses"][0]["state"]["terminated"].get("message", "")
    assert message.split() == ["65532", "IMPORTS_OK", "CLI_OK", "ROOT_READ_ONLY", "TMP_WRITABLE"], message
