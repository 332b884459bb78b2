"""End-to-end fixtures: a cluster on each tier (tests/tiers.py: the dev cluster and the real one; or
STAGEFLEET_TEST_KUBECONFIG's cluster in place of the dev one), a namespace per test, the real kubectl, and
`stagefleet operator` as a child process that a test can kill and start again — on the real tier as the
chart's ServiceAccount with the chart's worker settings.

The registry and base image come from tests/conftest.py. Waits poll the API with generous deadlines: a
deadline only bounds a hang, no test asserts on how long anything took.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from binaries import run_tool
from stagefleet.localregistry import LocalRegistry, free_port
from tiers import BUILD_NAMESPACE_LABELS, TIERS, ChartOperator

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
CRD = ROOT / "crds" / "imagebuild.yaml"
SEED = ROOT / "examples" / "seed" / "imagebuild.yaml"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
# The operator's policy (stagefleet.controller.policy) widened for what the suite builds: git:// from a
# loopback `git daemon`, file:// for an unreachable repository, and workers under a test's ServiceAccount.
# tests/e2e/test_policy.py runs the operator with its safe defaults instead.
TEST_POLICY = ("--allowed-source-schemes", "https,ssh,git,file", "--allowed-service-accounts", "*")


@dataclass
class Cluster:
    kubeconfig: Path
    home: Path
    dev: Any = None  # the DevCluster when we started one
    real: Any = None  # the RealCluster on the real tier
    tier: str = "dev"
    operator_identity: ChartOperator | None = None  # real tier: how the chart's operator authenticates

    @property
    def node_names(self) -> list[str]:
        if self.real is not None:
            return list(self.real.node_names)
        return [n.name for n in self.dev.nodes] if self.dev is not None else []

    def lose_node(self, name: str) -> None:
        """The node's kubelet dies (its pods' containers run on): `stop_kubelet` on the real tier, the dev
        cluster's `lose_node`. Either way the control plane marks the node Ready=Unknown after its grace
        period (16 s on both tiers here)."""
        if self.real is not None:
            self.real.stop_kubelet(name)
        elif self.dev is not None:
            self.dev.lose_node(name)
        else:
            pytest.skip("losing a node needs the dev cluster or the real tier")

    def recover_node(self, name: str) -> None:
        """The node's kubelet comes back and kills what it no longer should run."""
        if self.real is not None:
            self.real.start_kubelet(name)
        elif self.dev is not None:
            self.dev.recover_node(name)


@pytest.fixture(scope="session", params=TIERS)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Per tier: "dev" is STAGEFLEET_TEST_KUBECONFIG's cluster (CRD applied), else a DevCluster started for
    the session; "real" is a RealCluster with the chart's identity installed (tests/tiers.py)."""
    if not KUBECTL.exists():
        pytest.skip("the real kubectl is missing (scripts/setup.sh installs it)")
    home = tmp_path_factory.mktemp("kube-home")
    if request.param == "real":
        yield from _real_cluster(request, tmp_path_factory, home)
        return
    external = os.environ.get("STAGEFLEET_TEST_KUBECONFIG")
    if external:
        c = Cluster(Path(external), home)
        if not os.environ.get("STAGEFLEET_TEST_SKIP_CRD"):  # e.g. installed by helm, or no CRD rights
            Kubectl(c, "default").run("apply", "-f", str(CRD))
        yield c
        return
    try:
        from stagefleet.devcluster.cluster import DevCluster
    except ImportError as e:  # pragma: no cover - only while the dev cluster is being written
        pytest.skip(f"dev cluster unavailable: {e}")
    # Node loss noticed like on the real tier (its controller-manager: --node-monitor-grace-period=16s,
    # --node-monitor-period=2s), with Leases renewed often enough for that grace period.
    dev = DevCluster(
        tmp_path_factory.mktemp("devcluster"),
        nodes=2,
        pods_per_node=8,
        lease_seconds=2.0,
        node_monitor_grace_seconds=16.0,
        node_monitor_period=2.0,
    )
    dev.start()
    try:
        yield Cluster(dev.kubeconfig, home, dev)
    finally:
        dev.stop()


def _real_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, home: Path
) -> Iterator[Cluster]:
    from tiers import chart_set_args, install_chart_identity, kube_env

    rc = request.getfixturevalue("real_cluster")
    registry: LocalRegistry = request.getfixturevalue("registry")
    images = request.getfixturevalue("tier_images")
    identity = install_chart_identity(
        [str(KUBECTL)], kube_env(rc.kubeconfig, home), home,
        chart_set_args(images.builder, registry.host), rc.server, (rc.pki / "ca.crt").read_bytes())
    yield Cluster(rc.kubeconfig, home, real=rc, tier="real", operator_identity=identity)


@dataclass
class Kubectl:
    """The real kubectl against the test cluster, in one namespace."""

    cluster: Cluster
    namespace: str

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "HOME": str(self.cluster.home),
            "KUBECACHEDIR": str(self.cluster.home / "kube-cache"),
        }

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_tool([str(KUBECTL), "-n", self.namespace, *args], self.env(), input=input, check=check,
                        timeout=timeout)

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def ib(self, name: str) -> dict[str, Any]:
        return dict(self.json("get", "imagebuild", name))

    def pods(self, name: str) -> list[dict[str, Any]]:
        items = self.json("get", "pods", "-l", f"stagefleet.io/imagebuild={name}")["items"]
        return sorted(items, key=lambda p: p["metadata"]["name"])

    def events(self) -> list[dict[str, Any]]:
        return list(self.json("get", "events")["items"])


@dataclass
class Operator:
    """`stagefleet operator` for one namespace, as a process the test controls."""

    cluster: Cluster
    namespace: str
    registry: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra: list[str] = field(default_factory=list)
    policy: tuple[str, ...] = TEST_POLICY

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        out = self.log.open("ab")
        out.write(f"--- operator start #{self.starts} ---\n".encode())
        out.flush()
        identity = self.cluster.operator_identity
        argv = [
            sys.executable,
            "-m",
            "stagefleet.cli",
            "operator",
            "--kubeconfig",
            str(identity.kubeconfig if identity else self.cluster.kubeconfig),
            "--namespace",
            self.namespace,
            "--metrics-port",
            "0",
            "--insecure-registry",
            self.registry,
            "--retry-backoff",
            "1",
            # The suite looks at worker pods (mounts, args, logs) after builds succeed: keep them (the
            # operator's default deletes them at once; test_cleanup passes its own value, later flags win).
            "--keep-succeeded-pods-seconds",
            "3600",
            *(identity.args if identity else ()),
            *self.policy,
            *self.extra,
        ]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        if identity:
            env.update(identity.env)
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        out.close()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye — what a crashed or evicted operator looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 60) -> str:
        """The log's last ``n`` lines, without the API client's retry lines (a fault test makes hundreds)."""
        if not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join([ln for ln in lines if "Request attempt #" not in ln][-n:])


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    ns = f"{base}-{uuid.uuid4().hex[:5]}"
    k = Kubectl(cluster, "default")
    meta = {"name": ns, "labels": BUILD_NAMESPACE_LABELS}
    k.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    yield ns
    k.run("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def kubectl(cluster: Cluster, namespace: str) -> Kubectl:
    return Kubectl(cluster, namespace)


@pytest.fixture
def operator(cluster: Cluster, namespace: str, registry: LocalRegistry, tmp_path: Path) -> Iterator[Operator]:
    op = Operator(cluster, namespace, registry.host, tmp_path / "operator.log")
    op.start()
    yield op
    # SIGKILL, not a graceful stop: nothing is checked after the test, and kopf's shutdown costs ~1-2 s.
    op.kill()
    print(f"--- operator log ({op.log}) ---\n{op.tail(200)}")


def seed_manifest(
    name: str, base_image: str, registry: str, *, sleep: int = 3, **spec: Any
) -> dict[str, Any]:
    """The seed example with its base image and output pointed at the test registry."""
    doc = yaml.safe_load(SEED.read_text())
    doc["metadata"] = {"name": name}
    doc["spec"]["buildArgs"] = {"BASE": base_image, "SLEEP": str(sleep)}
    doc["spec"]["output"] = {"image": f"{registry}/e2e/{name}:latest"}
    doc["spec"].update(spec)
    return dict(doc)


def inline_manifest(name: str, dockerfile: str, registry: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "stagefleet.io/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "source": {"inline": {"dockerfile": dockerfile}},
            "output": {"image": f"{registry}/e2e/{name}:latest"},
            "timeout": "10m",
            **spec,
        },
    }


RECORD_TO = "STAGEFLEET_RECORD_STATUSES_TO"  # a directory: every distinct observed status is dumped there
_recorded: set[str] = set()


def record_status(kubectl: Kubectl, obj: dict[str, Any]) -> None:
    """With $STAGEFLEET_RECORD_STATUSES_TO set, keep each distinct (phase, conditions) an ImageBuild went
    through as YAML, named by tier, namespace and object: tests/gitops/recorded holds such dumps from the
    real tier, which the Argo CD / kstatus health tests check."""
    target = os.environ.get(RECORD_TO)
    status = obj.get("status") or {}
    if not target or not status:
        return
    conds = sorted((c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or ())
    key = json.dumps([obj["metadata"]["uid"], status.get("phase"), conds])
    if key in _recorded:
        return
    _recorded.add(key)
    meta = obj["metadata"]
    keep = {k: meta[k] for k in ("name", "namespace", "generation", "creationTimestamp", "uid") if k in meta}
    dump = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": keep, "spec": obj.get("spec"),
            "status": status}
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{kubectl.cluster.tier}-{kubectl.namespace}-{meta['name']}"
    path = out / f"{stem}-{len(list(out.glob(stem + '-*.yaml'))):02d}-{status.get('phase')}.yaml"
    path.write_text(yaml.safe_dump(dump, sort_keys=False))


def wait_for(
    kubectl: Kubectl,
    operator: Operator,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 300,
) -> dict[str, Any]:
    """Poll the ImageBuild until ``predicate``; a deadline only to turn a hang into a readable failure."""
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if not operator.alive():
            raise AssertionError(f"the operator exited\n--- operator log ---\n{operator.tail()}")
        proc = kubectl.run("get", "imagebuild", name, "-o", "json", check=False)
        if proc.returncode == 0:
            obj = json.loads(proc.stdout)
            record_status(kubectl, obj)
            if predicate(obj):
                return obj
        time.sleep(0.5)
    raise AssertionError(
        f"ImageBuild {name} never reached: {what}\nstatus: "
        f"{json.dumps(obj.get('status'), indent=1)[:4000]}\n--- operator log ---\n{operator.tail()}"
    )


def wait_terminal(kubectl: Kubectl, operator: Operator, name: str, timeout: float = 300) -> dict[str, Any]:
    return wait_for(
        kubectl,
        operator,
        name,
        lambda o: (
            (o.get("status") or {}).get("phase") in TERMINAL
            and (o.get("status") or {}).get("observedGeneration") == o["metadata"].get("generation")
        ),
        "a terminal phase",
        timeout,
    )


def stage(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in obj["status"]["stages"] if s["name"] == name)


def pod_window(pod: dict[str, Any]) -> tuple[str, str]:
    """(startedAt, finishedAt) of the worker container (RFC 3339, comparable as strings)."""
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return term["startedAt"], term["finishedAt"]


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    operator: Operator,
    timeout: float = 300,
    show: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate``; on timeout fail with the operator's log and what ``show`` says (pod_states)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    shown = f"\n--- state ---\n{show()}" if show else ""
    raise AssertionError(f"never happened: {what}{shown}\n--- operator log ---\n{operator.tail()}")


def refused_at_admission(p: dict[str, Any]) -> bool:
    """Failed by its node's kubelet before a container started ("OutOfcpu", "UnexpectedAdmissionError"): a
    real kubelet's resource count lags the scheduler's when pods have just finished. The operator retries
    such a pod without using an attempt."""
    st = p.get("status") or {}
    ran = any("running" in (c.get("state") or {}) or "terminated" in (c.get("state") or {})
              for c in st.get("containerStatuses") or ())
    reason = st.get("reason") or ""
    return (st.get("phase") == "Failed" and not ran
            and (reason.startswith("OutOf") or reason == "UnexpectedAdmissionError"))


def pod_states(kubectl: Kubectl, build: str) -> str:
    """One line per pod of ``build``: phase, pod reason and message, node, and its container's state."""
    lines = []
    for p in kubectl.pods(build):
        st = p.get("status") or {}
        cs = [f"{c.get('name')}={json.dumps(c.get('state') or {})}"
              for c in st.get("containerStatuses") or ()]
        lines.append(f"{p['metadata']['name']}: {st.get('phase')} reason={st.get('reason')} "
                     f"message={st.get('message')} node={(p.get('spec') or {}).get('nodeName')} "
                     f"deleting={bool(p['metadata'].get('deletionTimestamp'))} {' '.join(cs)}")
    return "\n".join(lines) or "no pods"


def git_run(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """`git daemon` on loopback serving tmp_path/served: (that directory, its git:// URL prefix). A served
    repository is reachable from the operator and from worker pods on the node's network on both tiers (a
    file:// URL names a path only this host's processes see, never a pod's container)."""
    served = tmp_path / "served"
    served.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors", f"--base-path={served}",
         "--listen=127.0.0.1", f"--port={port}", str(served)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield served, f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
