"""Reliability-suite fixtures, per tier (tests/tiers.py): a cluster whose API server records every pod it
creates (the emulator's wrapped handler; the real API server's audit log) and whose API the operator
reaches through injectable faults (the emulator's; a fault proxy in front of the real API server), an
operator per test (real worker, or the SIMULATED worker `bench/fake_worker.py` that records each
invocation), a fast in-process API client for polling, and a per-tier secrets canary that
`test_zz_canary.py` looks for everywhere at the end.

Everything here waits with generous deadlines that only turn a hang into a readable failure; no test
asserts on how long anything took. The e2e helpers (`Kubectl`, `Operator`, manifests) are imported from
`tests/e2e/conftest.py`, whose owner keeps them stable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from e2e.conftest import KUBECTL, Cluster, Kubectl, Operator, refused_at_admission
from stagefleet.localregistry import LocalRegistry
from tiers import BUILD_NAMESPACE_LABELS, TIERS

from .faultproxy import FaultProxy
from .sink import Sink

ROOT = Path(__file__).resolve().parents[2]
FAKE_WORKER = ROOT / "bench" / "fake_worker.py"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
GROUP, VERSION, PLURAL = "stagefleet.io", "v1alpha1", "imagebuilds"

# base → (left, right) → final: 4 plan groups in 3 waves (g1; g2, g3; g4).
DIAMOND = """FROM busybox:1.36 AS base
RUN echo base > /base
FROM base AS left
RUN echo left > /left
FROM base AS right
RUN echo right > /right
FROM busybox:1.36 AS final
COPY --from=left /left /l
COPY --from=right /right /r
"""


class Ledger(Protocol):
    def names(self, namespace: str) -> Counter[str]: ...


@dataclass
class PodLedger:
    """Every pod the emulator created (201 to a POST), in order: (namespace, name)."""

    created: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def names(self, namespace: str) -> Counter[str]:
        with self.lock:
            return Counter(n for ns, n in self.created if ns == namespace)


@dataclass
class AuditLedger:
    """Every pod the real API server created, from its audit log (stagefleet.realcluster.audit)."""

    real: Any

    def names(self, namespace: str) -> Counter[str]:
        return Counter(n for ns, n in self.real.pod_creations() if ns == namespace)


@dataclass
class RCluster:
    """One tier for the reliability suite: ``faults`` (the emulator's, or the fault proxy's in front of the
    real API server: the same settings), ``ledger`` (pods created), ``log_dirs`` (where pod and component
    logs land on disk, for the canary), ``fake_image`` (real tier: the builder image plus the SIMULATED
    worker)."""

    cluster: Cluster
    tier: str
    ledger: Ledger
    faults: Any
    log_dirs: list[Path]
    dev: Any = None
    real: Any = None
    fake_image: str | None = None


def _install_ledger(ledger: PodLedger) -> Callable[[], None]:
    """Wrap the emulator's request handler (for the next emulator started) to log pod creations."""
    from stagefleet.devcluster.apiserver import server

    srv: Any = server
    original = srv.Handlers

    class Recording(original):  # type: ignore[misc, valid-type]
        async def handle(self, request: Any) -> Any:
            resp = await super().handle(request)
            parts = [p for p in request.path.split("/") if p]
            if (
                request.method == "POST"
                and getattr(resp, "status", 0) == 201
                and len(parts) == 5
                and parts[:3] == ["api", "v1", "namespaces"]
                and parts[4] == "pods"
            ):
                try:
                    name = json.loads(resp.body)["metadata"]["name"]
                except (ValueError, KeyError, TypeError):
                    name = "?"
                with ledger.lock:
                    ledger.created.append((parts[3], name))
            return resp

    srv.Handlers = Recording

    def undo() -> None:
        srv.Handlers = original

    return undo


@pytest.fixture(scope="session", params=TIERS)
def rcluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RCluster]:
    """Per tier (tests/tiers.py). "dev": a DevCluster of the suite's own (fast node-loss detection), its
    emulator recording pod creations. "real": the session's RealCluster with the chart's identity, as
    e2e's; the operator reaches the API server through a fault proxy (faultproxy.py), pod creations come
    from the API server's audit log, and the SIMULATED worker runs in worker pods from an image of its
    own (the builder image plus bench/fake_worker.py)."""
    if not KUBECTL.exists():
        pytest.skip("the real kubectl is missing (scripts/setup.sh installs it)")
    if request.param == "real":
        yield from _real_rcluster(request, tmp_path_factory)
        return
    if os.environ.get("STAGEFLEET_TEST_KUBECONFIG"):
        pytest.skip("the reliability suite's dev tier needs the dev cluster (node loss, faults, pod ledger)")
    from stagefleet.devcluster.cluster import DevCluster

    ledger = PodLedger()
    # A lost node is noticed the way a real control plane does (heartbeats, then Ready=Unknown and taints),
    # sped up: Leases renewed every second, the node Unknown after 5 s without one (real: 10 s and 40 s).
    dev = DevCluster(
        tmp_path_factory.mktemp("rel-devcluster"),
        nodes=2,
        pods_per_node=8,
        lease_seconds=1.0,
        node_monitor_grace_seconds=5.0,
        node_monitor_period=0.5,
    )
    undo = _install_ledger(ledger)
    try:
        dev.start()
    finally:
        undo()
    try:
        yield RCluster(
            Cluster(dev.kubeconfig, tmp_path_factory.mktemp("rel-kube-home"), dev),
            "dev", ledger, dev.faults, [dev.logs_dir], dev=dev,
        )
    finally:
        dev.stop()


def _real_rcluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RCluster]:
    from e2e.conftest import _real_cluster
    from stagefleet.realcluster import pki

    home = tmp_path_factory.mktemp("rel-kube-home")
    clusters = _real_cluster(request, tmp_path_factory, home)  # the session's RealCluster, chart identity
    cluster = next(clusters)
    rc = cluster.real
    identity = cluster.operator_identity
    assert identity is not None
    certs = tmp_path_factory.mktemp("rel-faultproxy")
    cert = pki.issue(pki.KeyPair(rc.pki / "ca.crt", rc.pki / "ca.key"), certs, "faultproxy",
                     cn="stagefleet-rel-faultproxy", sans=("IP:127.0.0.1",))
    proxy = FaultProxy(rc.server, rc.pki / "ca.crt", cert.cert, cert.key)
    proxy.start()
    # the operator's kubeconfig (the chart ServiceAccount's token) pointed at the proxy
    kc = yaml.safe_load(identity.kubeconfig.read_text())
    for c in kc["clusters"]:
        c["cluster"]["server"] = proxy.url
    via_proxy = home / "operator-via-faultproxy.kubeconfig"
    via_proxy.write_text(yaml.safe_dump(kc))
    identity = dataclasses.replace(identity, kubeconfig=via_proxy)
    cluster = dataclasses.replace(cluster, operator_identity=identity)
    registry: LocalRegistry = request.getfixturevalue("registry")
    image_env: dict[str, str] = request.getfixturevalue("image_env")
    fake_image = fake_worker_image(registry.host, request.getfixturevalue("tier_images").builder, image_env)
    pod_logs = [rc.nodes_dir / f"node{i}" / "host" / "var" / "log" for i in range(1, len(rc.node_names) + 1)]
    try:
        yield RCluster(cluster, "real", AuditLedger(rc), proxy.faults, [rc.logs_dir, *pod_logs], real=rc,
                       fake_image=fake_image)
    finally:
        proxy.stop()
        clusters.close()


FAKE_WORKER_IN_IMAGE = "/opt/stagefleet-bench/fake_worker.py"


def fake_worker_image(registry_host: str, builder: str, env: dict[str, str]) -> str:
    """The builder image plus bench/fake_worker.py (at FAKE_WORKER_IN_IMAGE), pushed to the session
    registry; tagged by the content of both, so it is built once per registry."""
    from stagefleet.localregistry import _commit_and_push, _served

    key = hashlib.sha256(FAKE_WORKER.read_bytes() + builder.encode()).hexdigest()[:16]
    repo = "rel/fake-worker"
    ref = f"{registry_host}/{repo}:{key}"
    if _served(registry_host, repo, key):
        return ref
    return _commit_and_push(ref, builder, env, [
        lambda ctr: ["buildah", "copy", "--chmod", "0644", ctr, str(FAKE_WORKER), FAKE_WORKER_IN_IMAGE],
    ])


# ---------------------------------------------------------------------------------- session evidence


@dataclass
class Evidence:
    """Where the canary must never show up: collected by every test, checked by test_zz_canary."""

    canary: str
    operator_logs: list[Path] = field(default_factory=list)
    registries: list[Path] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def evidence(rcluster: RCluster) -> Evidence:
    """Per tier: test_zz_canary looks on its own tier's cluster, operator logs and registries."""
    return Evidence(canary=f"sfcanary-{uuid.uuid4().hex}")


# ------------------------------------------------------------------------------------ per-test pieces


@pytest.fixture
def ns(rcluster: RCluster, evidence: Evidence, request: pytest.FixtureRequest) -> str:
    """A fresh namespace holding Secret `canary` (key `value`). It stays until the session ends:
    test_zz_canary reads its events and statuses."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    Kubectl(rcluster.cluster, "default").apply(
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": name, "labels": BUILD_NAMESPACE_LABELS}}
    )
    Kubectl(rcluster.cluster, name).apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "canary"},
            "stringData": {"value": evidence.canary},
        }
    )
    evidence.namespaces.append(name)
    return name


@pytest.fixture
def kubectl(rcluster: RCluster, ns: str) -> Kubectl:
    return Kubectl(rcluster.cluster, ns)


class Api:
    """The official client against the test cluster: fast polling (no kubectl process per poll), tolerant
    of injected API errors."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
        self.api = client.ApiClient(cfg)
        self.api.user_agent = "stagefleet-reliability-tests"
        self.core: Any = client.CoreV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.namespace = namespace

    def _retry(self, fn: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException

        for attempt in range(30):
            try:
                return fn()
            except ApiException as e:
                if e.status not in (429, 500, 503, 504, 0) or attempt == 29:
                    raise
            except OSError:
                if attempt == 29:
                    raise
            time.sleep(0.1)
        raise AssertionError("unreachable")

    def ib(self, name: str) -> dict[str, Any]:
        return dict(
            self._retry(
                lambda: self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            )
        )

    def create(self, manifest: dict[str, Any]) -> None:
        self._retry(
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, manifest
            )
        )

    def pods(self) -> list[dict[str, Any]]:
        resp = self._retry(lambda: self.core.list_namespaced_pod(self.namespace, _preload_content=False))
        return sorted(json.loads(resp.data)["items"], key=lambda p: p["metadata"]["name"])

    def events(self) -> list[dict[str, Any]]:
        resp = self._retry(lambda: self.core.list_namespaced_event(self.namespace, _preload_content=False))
        return list(json.loads(resp.data)["items"])

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def api(rcluster: RCluster, ns: str) -> Iterator[Api]:
    a = Api(rcluster.cluster.kubeconfig, ns)
    yield a
    a.close()


@pytest.fixture
def records(tmp_path: Path) -> Path:
    d = tmp_path / "records"
    d.mkdir()
    return d


OperatorFactory = Callable[..., Operator]


@pytest.fixture
def make_operator(
    rcluster: RCluster, ns: str, evidence: Evidence, tmp_path: Path, records: Path
) -> Iterator[OperatorFactory]:
    """`make_operator(fake=True, registry=..., sleep=1, slow={"g3": 2.5}, fail={"g2": 14})`, started.

    The SIMULATED worker (fake=True) runs as the worker pods' command: on the dev tier from this checkout,
    recording into ``records``; on the real tier from the fake-worker image (`--builder-image`), reporting
    its records and simulated pushes to a Sink of this test's, which writes the records into ``records``."""
    made: list[Operator] = []
    sinks: list[Sink] = []

    def make(
        *,
        fake: bool = True,
        registry: str = "127.0.0.1:9",
        sleep: float = 1.0,
        slow: dict[str, float] | None = None,
        fail: dict[str, int] | None = None,
        more: list[str] | None = None,
    ) -> Operator:
        log = tmp_path / f"operator-{len(made)}.log"
        extra: list[str] = []
        if fake:
            if rcluster.fake_image is not None:
                if not sinks:
                    sinks.append(Sink(records))
                cmd = ["python3", FAKE_WORKER_IN_IMAGE, "--sleep", str(sleep), "--sink", sinks[0].url]
                # The simulated worker sleeps: it requests what it uses, not the builder's 500m CPU. With
                # that request, 4 pods filled a 2-CPU test node, and its kubelet rejected pods at admission
                # (OutOfcpu) just after others ended: a real retry, but not what these tests measure.
                extra = ["--builder-image", rcluster.fake_image,
                         "--worker-resources", '{"requests": {"cpu": "50m", "memory": "64Mi"}}']
            else:
                cmd = [sys.executable, str(FAKE_WORKER), "--sleep", str(sleep), "--record", str(records)]
            for g, s in (slow or {}).items():
                cmd += ["--slow", f"{g}:{s}"]
            for g, c in (fail or {}).items():
                cmd += ["--fail", f"{g}:{c}"]
            extra += ["--worker-command", shlex.join([*cmd, "--"])]
        op = Operator(rcluster.cluster, ns, registry, log, extra=[*extra, *(more or [])])
        op.start()
        made.append(op)
        evidence.operator_logs.append(log)
        return op

    yield make
    # SIGKILL, not a graceful stop: nothing is checked after the test, and kopf's shutdown costs ~1-2 s
    # per operator. (A test that needs the graceful stop, e.g. test_zz_canary, calls op.stop() itself.)
    for op in made:
        op.kill()
    for sink in sinks:
        sink.close()


# ------------------------------------------------------------------------------------------- helpers


def fake_manifest(name: str, dockerfile: str = DIAMOND, **spec: Any) -> dict[str, Any]:
    """An inline ImageBuild for the simulated worker (nothing is pulled or pushed), using the canary
    Secret when the Dockerfile mounts secret `tok`."""
    s: dict[str, Any] = {
        "source": {"inline": {"dockerfile": dockerfile}},
        "output": {"image": f"127.0.0.1:9/rel/{name}:latest"},
        "timeout": "10m",
        "retries": 2,
    }
    if "id=tok" in dockerfile:
        s["secrets"] = [{"id": "tok", "secretRef": {"name": "canary", "key": "value"}}]
    s.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ImageBuild", "metadata": {"name": name}, "spec": s}


def poll(
    predicate: Callable[[], Any],
    what: str,
    operator: Operator | None = None,
    timeout: float = 180,
    interval: float = 0.05,
) -> Any:
    """Call ``predicate`` until it returns something truthy (returned)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if (
            operator is not None
            and operator.proc is not None
            and operator.proc.poll() is not None
            and operator.proc.returncode != -9
        ):
            raise AssertionError(f"the operator exited ({operator.proc.returncode})\n{operator.tail()}")
        time.sleep(interval)
    raise AssertionError(
        f"never happened: {what}" + (f"\n--- operator log ---\n{operator.tail()}" if operator else "")
    )


def terminal(api: Api, name: str, operator: Operator, timeout: float = 240) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        o = api.ib(name)
        st = o.get("status") or {}
        ok = st.get("phase") in TERMINAL and st.get("observedGeneration") == o["metadata"].get("generation")
        return o if ok else None

    try:
        obj: dict[str, Any] = poll(done, f"{name} terminal", operator, timeout=timeout, interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{unfinished_report(api)}") from None
    return obj


def unfinished_report(api: Api) -> str:
    """What a build that never ends is waiting for: its status and its pods (phase, node, the scheduler's
    or kubelet's reason), so a failure tells a Pending pod from a worker stuck on its upstream."""
    builds = api._retry(
        lambda: api.custom.list_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL)
    )["items"]
    lines = ["--- unfinished builds (name, phase, message) ---"]
    for o in builds:
        st = o.get("status") or {}
        if st.get("phase") not in TERMINAL:
            lines.append(f"{o['metadata']['name']} {st.get('phase')} {str(st.get('message'))[:200]}")
            for e in st.get("stages") or ():
                keep = ("group", "phase", "attempts", "restarts", "rejections", "retryAt", "pod", "message")
                lines.append(f"    {e.get('name')}: " + " ".join(f"{k}={e[k]}" for k in keep if e.get(k)))
    lines.append("--- pods not Succeeded (name, phase, node, reason) ---")
    for p in api.pods():
        status = p.get("status") or {}
        if status.get("phase") == "Succeeded":
            continue
        reasons = [f"{c.get('type')}={c.get('status')}:{c.get('reason')}:{str(c.get('message'))[:120]}"
                   for c in status.get("conditions") or () if c.get("status") != "True"]
        for c in status.get("containerStatuses") or ():
            t = (c.get("state") or {}).get("terminated")
            if t:
                reasons.append(f"exit {t.get('exitCode')} {t.get('reason')}: {str(t.get('message'))[-300:]}")
        lines.append(f"{p['metadata']['name']} {status.get('phase')} {p['spec'].get('nodeName')} {reasons}")
    return "\n".join(lines)


def read_records(records: Path, build: str | None = None) -> list[dict[str, Any]]:
    """Runs of the simulated worker (optionally only those of ImageBuild ``build``, by its push refs)."""
    out = [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]
    if build is not None:
        out = [r for r in out if any(f"/rel/{build}:" in a or f"/rel/{build}/" in a for a in r["argv"])]
    return out


def pod_labels(pod: dict[str, Any]) -> tuple[str, str, str]:
    lab = pod["metadata"]["labels"]
    return lab["stagefleet.io/generation"], lab["stagefleet.io/group"], lab["stagefleet.io/attempt"]


def upstream_args(pod: dict[str, Any]) -> dict[str, str]:
    """--upstream NAME=REF@DIGEST arguments of a worker pod: stage → digest."""
    args = list(pod["spec"]["containers"][0].get("args") or [])
    out = {}
    for i, a in enumerate(args[:-1]):
        if a == "--upstream":
            stage, ref = args[i + 1].split("=", 1)
            out[stage] = ref.rsplit("@", 1)[1]
    return out


def why_extra_pods(build: str, api: Api, pods: list[dict[str, Any]], per_group: Counter[str]) -> str:
    """For a group that got more than one pod: each of its pods' phase, exit and deletion, and the build's
    events (GroupRetrying / GroupRestarted say why the operator started the next attempt)."""
    lines = []
    for p in pods:
        if per_group[pod_labels(p)[1]] < 2:
            continue
        states = ((p.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {}
        state = next(iter(states), "")
        term = states.get("terminated") or {}
        lines.append(f"pod {p['metadata']['name']}: {(p.get('status') or {}).get('phase')} {state} "
                     f"exit={term.get('exitCode')} reason={term.get('reason')} "
                     f"deleting={bool(p['metadata'].get('deletionTimestamp'))} "
                     f"args={(p['spec']['containers'][0].get('args') or [])}")
    lines += [f"event {e.get('reason')}: {e.get('message')}" for e in api.events()
              if (e.get("involvedObject") or {}).get("name") == build]
    return "\n".join(lines)


def assert_clean_success(obj: dict[str, Any], api: Api, ledger: Ledger, records: Path | None) -> None:
    """The invariants every disturbed-but-recovered build must satisfy.

    * Succeeded, every stage Succeeded with one attempt;
    * every pod the API server ever created for this namespace was created once, one pod per group;
    * (simulated worker) each group's worker ran exactly once, i.e. its result was pushed once and never
      lost: the status digests, the final image digest and the digests the downstream pods were given are
      exactly the ones the workers reported.
    """
    st = obj["status"]
    build = obj["metadata"]["name"]
    assert st["phase"] == "Succeeded", st.get("message")
    groups = {g["id"]: g for g in st["plan"]["groups"]}
    created = Counter({n: c for n, c in ledger.names(api.namespace).items() if n.startswith(f"{build}-")})
    assert created and all(n == 1 for n in created.values()), f"a pod was created twice: {created}"
    pods = [p for p in api.pods() if p["metadata"]["labels"].get("stagefleet.io/imagebuild") == build]
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(created), (sorted(created), pods)
    # A pod its node's kubelet refused at admission never ran (a real kubelet's resource count lags the
    # scheduler's when pods have just finished): the operator retries it without using an attempt, and
    # says so in the group's GroupRetrying event.
    refused = [p for p in pods if refused_at_admission(p)]
    said = " ".join(e.get("message") or "" for e in api.events()
                    if (e.get("involvedObject") or {}).get("name") == build
                    and e.get("reason") == "GroupRetrying")
    for p in refused:
        assert f"pod {p['metadata']['name']} refused by" in said and "not counted" in said, (p, said)
    refusals = Counter(pod_labels(p)[1] for p in refused)
    pods = [p for p in pods if not refused_at_admission(p)]
    per_group = Counter(pod_labels(p)[1] for p in pods)
    # (a str message: pytest prints it whole, where it cuts a tuple's repr short — and with it the events)
    assert per_group == {g: 1 for g in groups}, f"{per_group}\n{why_extra_pods(build, api, pods, per_group)}"
    for s in st["stages"]:
        assert s["phase"] == "Succeeded" and s["attempts"] == 1 + refusals[s["group"]], s
        assert (s.get("restarts") or 0) == refusals[s["group"]], s
    if records is None:
        return
    recs = read_records(records, build)
    runs = Counter(r["result"]["group"] for r in recs)
    assert runs == {g: 1 for g in groups}, f"worker runs per group (a rerun pushes twice): {runs}"
    digest = {r["result"]["group"]: r["result"]["digest"] for r in recs}
    by_stage = {s["name"]: s for s in st["stages"]}
    for gid, g in groups.items():
        assert by_stage[g["stages"][-1]].get("digest") == digest[gid], (gid, by_stage[g["stages"][-1]])
    assert st["image"]["digest"] == digest[st["plan"]["finalGroup"]]
    used = {r["result"]["group"]: r["result"].get("upstreams") or {} for r in recs}
    for p in pods:
        gid = pod_labels(p)[1]
        expected = {c["stage"]: digest[c["group"]] for c in groups[gid].get("consumes") or ()}
        # By digest in the pod's args, or (a pod started early) waited for by tag: then the digest the
        # worker found is in its result.
        given = upstream_args(p)
        assert given.items() <= expected.items(), (p["metadata"]["name"], given, expected)
        assert used[gid] == expected, (p["metadata"]["name"], used[gid], expected)


def operator_crashes(log: Path) -> list[str]:
    """Lines of an operator log that show a handler or reconcile pass dying on an exception."""
    bad = ("Traceback", "failed with an exception", "reconcile of ")
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if any(b in line for b in bad):
            out.append(line[:300])
    return out


def pod_log(api: Api, pod: str) -> str:
    """The worker container's log (the API serves it on both tiers); "" while there is none yet."""
    from kubernetes.client.exceptions import ApiException

    try:
        return str(api._retry(lambda: api.core.read_namespaced_pod_log(pod, api.namespace)))
    except ApiException as e:
        if e.status in (400, 404):  # not started yet / gone
            return ""
        raise


def has_registry(reg: LocalRegistry) -> bool:
    return reg.proc is not None and reg.proc.poll() is None
