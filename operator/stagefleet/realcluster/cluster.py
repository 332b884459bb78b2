"""`RealCluster`: a real Kubernetes control plane and real nodes on this machine, for the test suite's
second tier and `stagefleet dev-cluster up --real`.

etcd, kube-apiserver (TLS, client certificates, Node+RBAC, ServiceAccount and PodSecurity admission),
kube-controller-manager, kube-scheduler, and per node one containerd and one kubelet, all as child
processes with their state under one work directory. It shares `DevCluster`'s interface (`kubeconfig`,
`server`, `node_names`, `start`, `stop`) so fixtures take either. `stop()` leaves nothing running or
mounted: pod processes are killed through the nodes' own cgroup roots, mounts under the work directory are
undone, and the few host paths the kubelet hard-codes are tidied.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stagefleet.devcluster.cluster import REPO_CRDS, install_crds
from stagefleet.localregistry import free_port
from stagefleet.realcluster import audit, configs, pki
from stagefleet.realcluster.serviceproxy import ServiceProxy

ENV_ASSETS = "STAGEFLEET_K8S_ASSETS"  # a directory holding kube-apiserver, kube-controller-manager, ...
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
HOST_TOOLS = ("etcd", "containerd", "runc", "openssl", "nsenter", "ip")
SHARED_UNPACK = Path(__file__).resolve().parents[4] / "shared" / "k8s" / "unpack"
CGROUP_FS = Path("/sys/fs/cgroup")
# Host paths the kubelet (1.24) hard-codes. Each node sees its own directories there, bind-mounted in a
# private mount namespace that its containerd and kubelet share: two clusters on one machine would otherwise
# garbage-collect each other's pod logs, and nothing of a node is left on the host after it stops.
NODE_PRIVATE_PATHS = (Path("/var/log/pods"), Path("/var/log/containers"), Path("/var/lib/kubelet"))


class RealClusterError(RuntimeError):
    """A component did not start; the message names it and ends with its log's last lines."""


def find_assets(env: dict[str, str] | None = None) -> tuple[Path | None, str]:
    """The directory of Kubernetes binaries (``$STAGEFLEET_K8S_ASSETS``, else ``../shared/k8s`` unpacked
    into the user's cache), or None and the one-line reason the real tier cannot run."""
    env = dict(os.environ) if env is None else env
    missing_tools = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if missing_tools:
        return None, f"host tools missing: {', '.join(missing_tools)} (scripts/setup.sh installs them)"
    given = env.get(ENV_ASSETS)
    if given:
        d = Path(given)
    elif SHARED_UNPACK.exists():
        proc = subprocess.run([str(SHARED_UNPACK)], capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"{SHARED_UNPACK} failed: {proc.stderr.strip()}"
        d = Path(proc.stdout.strip().splitlines()[-1])
    else:
        return None, f"no Kubernetes binaries: set {ENV_ASSETS} or provide {SHARED_UNPACK.parent}"
    absent = [b for b in BINARIES if not os.access(d / b, os.X_OK)]
    if absent:
        return None, f"{d} lacks {', '.join(absent)}"
    return d, ""


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if grace > 0:
                self.proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None


@dataclass
class RealNode:
    """One node: its containerd, its kubelet and their directories."""

    index: int
    name: str
    dir: Path
    cgroup_root: str
    kubelet_port: int
    containerd: _Proc | None = None
    kubelet: _Proc | None = None
    mounts: _Proc | None = None  # holds the node's private mount namespace (see _private_mounts)
    labels: tuple[str, ...] = ()

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"


@dataclass
class RealCluster:
    """The real tier in ``workdir``; ``registries`` are plain-HTTP registries the nodes pull from, and
    ``pause_image`` (in one of them) is the sandbox image."""

    workdir: Path
    pause_image: str
    registries: Sequence[str] = ()
    nodes: int = 1
    max_pods: int = 16
    assets: Path | None = None
    install_crds: bool = True
    crds_dir: Path = REPO_CRDS
    node_labels: Sequence[str] = ()
    server: str = ""
    node_names: list[str] = field(default_factory=list)
    _procs: list[_Proc] = field(default_factory=list)
    _nodes: list[RealNode] = field(default_factory=list)
    started_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.pki = self.workdir / "pki"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.logs_dir = self.workdir / "logs"
        self.audit_log = self.logs_dir / "audit.log"  # pod creations only (audit.POLICY)
        # Node state (containerd, kubelet root) lives under a short path of its own: the kubelet's unix
        # sockets must fit in 108 bytes, which a deep work directory (e.g. pytest's) would exceed.
        self.nodes_dir: Path | None = None
        self.service_net = 0
        self._proxy: ServiceProxy | None = None
        self.id = uuid.uuid4().hex[:6]

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything and return once the API is ready, the CRDs are Established, every node is
        Ready and the `default` namespace has its ServiceAccount."""
        t0 = time.monotonic()
        if self.assets is None:
            self.assets, why = find_assets()
            if self.assets is None:
                raise RealClusterError(why)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - t0

    def _start(self) -> None:
        assert self.assets is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        reap_orphans()
        self.nodes_dir = Path(tempfile.mkdtemp(prefix=NODES_PREFIX))
        (self.nodes_dir / OWNER).write_text(json.dumps({
            "pid": os.getpid(), "start": _start_ticks(os.getpid()), "workdir": str(self.workdir),
            "cgroup_roots": [f"/stagefleet-{self.id}-node{i}" for i in range(1, self.nodes + 1)]}))
        (self.workdir / "nodes").symlink_to(self.nodes_dir)
        self.pki.mkdir(exist_ok=True)
        ports = configs.Ports(free_port(), free_port(), free_port(), free_port(), free_port())
        self.server = f"https://127.0.0.1:{ports.apiserver}"
        self.service_net, self._proxy = _kubernetes_service_proxy(ports.apiserver)
        ca = self._make_pki()

        etcd = self._spawn("etcd", configs.etcd_argv("etcd", self.workdir / "etcd", ports))
        self._wait(etcd, lambda: self._http_ok(f"http://127.0.0.1:{ports.etcd_client}/health"), 30)
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(audit.POLICY))
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        api = self._spawn(
            "kube-apiserver",
            configs.apiserver_argv(str(self.assets / "kube-apiserver"), self.pki, ports, self.service_net,
                                   audit=(policy, self.audit_log)),
        )
        self._wait(api, lambda: self._api_ok("/readyz"), 90)
        if self.install_crds:
            install_crds(self.request, self.crds_dir)
        cm_kc = self._component_kubeconfig(ca, "controller-manager", "system:kube-controller-manager")
        self._spawn(
            "kube-controller-manager",
            configs.controller_manager_argv(
                str(self.assets / "kube-controller-manager"), self.pki, cm_kc, ports, self.service_net
            ),
        )
        sched_kc = self._component_kubeconfig(ca, "scheduler", "system:kube-scheduler")
        self._spawn(
            "kube-scheduler", configs.scheduler_argv(str(self.assets / "kube-scheduler"), sched_kc, ports)
        )
        for i in range(1, self.nodes + 1):
            self._nodes.append(self._start_node(ca, i))
        self.node_names = [n.name for n in self._nodes]
        for node in self._nodes:
            assert node.kubelet is not None
            self._wait(node.kubelet, lambda n=node: self.node_ready(n.name), 90)
        sa = "/api/v1/namespaces/default/serviceaccounts/default"
        self._wait(self._procs[-1], lambda: self._api_ok(sa), 60, what="the default ServiceAccount")

    def stop(self) -> None:
        """Stop every process, kill every pod, undo every mount, tidy the kubelet's host paths. Safe to call
        twice; never raises for a part that is already gone."""
        for node in self._nodes:
            self._stop_node(node)
        for p in reversed(self._procs):
            # kube-scheduler ignores SIGTERM in this version: it gets a short grace, then SIGKILL
            p.stop(0.5 if p.name == "kube-scheduler" else 5.0)
        self._procs.clear()
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        for node in self._nodes:
            _remove_cgroup_root(node.cgroup_root)
        self._nodes.clear()
        _unmount_under(self.workdir)
        if self.nodes_dir is not None:
            _unmount_under(self.nodes_dir)
            shutil.rmtree(self.nodes_dir, ignore_errors=True)
            self.nodes_dir = None

    # --- nodes ---------------------------------------------------------------------------------------

    def stop_kubelet(self, name: str) -> None:
        """Node loss as a real cluster sees it: the kubelet stops (SIGKILL, no goodbye) while its pods'
        containers run on; the control plane notices only through missed heartbeats."""
        node = self._node(name)
        if node.kubelet is not None:
            node.kubelet.stop(0)

    def start_kubelet(self, name: str) -> None:
        """Bring a stopped kubelet back (same node name, same containerd)."""
        node = self._node(name)
        assert node.kubelet is not None
        if not node.kubelet.alive():
            node.kubelet.start()

    def pod_creations(self) -> list[tuple[str, str]]:
        """(namespace, name) of every pod the API server created so far, in order (its audit log)."""
        try:
            text = self.audit_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return audit.pod_creations(text.splitlines())

    def node_ready(self, name: str) -> bool:
        try:
            obj = self.request("GET", f"/api/v1/nodes/{name}")
        except (urllib.error.URLError, OSError):
            return False
        conds = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def _node(self, name: str) -> RealNode:
        for n in self._nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} (nodes: {', '.join(self.node_names)})")

    def _start_node(self, ca: pki.KeyPair, index: int) -> RealNode:
        assert self.assets is not None
        name = configs.node_name(index)
        assert self.nodes_dir is not None
        ndir = self.nodes_dir / f"node{index}"
        node = RealNode(
            index,
            name,
            ndir,
            f"/stagefleet-{self.id}-node{index}",  # as recorded in OWNER
            free_port(),
            labels=tuple(self.node_labels),
        )
        for sub in ("cni-bin", "cni-conf", "certs.d", "kubelet"):
            (ndir / sub).mkdir(parents=True, exist_ok=True)
        plugin = ndir / "cni-bin" / configs.POD_NET_PLUGIN
        plugin.write_text(configs.pod_net_plugin())
        plugin.chmod(0o755)
        for std in ("loopback", "host-local"):
            src = Path("/usr/lib/cni") / std
            if src.exists():
                (ndir / "cni-bin" / std).symlink_to(src)
        (ndir / "cni-conf" / "10-stagefleet.conflist").write_text(configs.cni_conflist())
        for host in self.registries:
            (ndir / "certs.d" / host).mkdir(parents=True, exist_ok=True)
            (ndir / "certs.d" / host / "hosts.toml").write_text(configs.registry_hosts_toml(host))
        (ndir / "containerd.toml").write_text(
            configs.containerd_config(
                ndir / "containerd-root",
                ndir / "containerd-state",
                node.socket,
                ndir / "cni-bin",
                ndir / "cni-conf",
                ndir / "certs.d",
                self.pause_image,
            )
        )
        node.mounts = _private_mounts(ndir, self.logs_dir / f"mounts-{index}.log")
        enter = ["nsenter", "-t", str(node.mounts.proc.pid if node.mounts.proc else 0), "-m", "--"]
        node.containerd = _Proc(
            f"containerd-{index}",
            [*enter, "containerd", "--config", str(ndir / "containerd.toml")],
            self.logs_dir / f"containerd-{index}.log",
        )
        node.containerd.start()
        self._wait(node.containerd, node.socket.exists, 30, what=f"{node.socket}")

        _make_cgroup_root(node.cgroup_root)
        cert = pki.issue(
            ca,
            self.pki,
            f"kubelet-{index}",
            cn=f"system:node:{name}",
            groups=("system:nodes",),
            sans=(f"IP:{name}",),
        )
        kc = ndir / "kubelet.kubeconfig"
        kc.write_text(
            yaml.safe_dump(
                configs.kubeconfig(
                    self.server,
                    ca.cert.read_bytes(),
                    f"system:node:{name}",
                    cert.cert.read_bytes(),
                    cert.key.read_bytes(),
                )
            )
        )
        cfg = ndir / "kubelet-config.yaml"
        (ndir / "kubelet" / "pki").mkdir(exist_ok=True)
        kcfg = configs.kubelet_config(
            address=name,
            port=node.kubelet_port,
            pki=self.pki,
            cgroup_root=node.cgroup_root,
            max_pods=self.max_pods,
        )
        kcfg["tlsCertFile"], kcfg["tlsPrivateKeyFile"] = str(cert.cert), str(cert.key)
        cfg.write_text(yaml.safe_dump(kcfg))
        node.kubelet = _Proc(
            f"kubelet-{index}",
            enter + configs.kubelet_argv(
                str(self.assets / "kubelet"),
                kubeconfig_path=kc,
                config_path=cfg,
                socket=node.socket,
                root_dir=ndir / "kubelet",
                name=name,
                labels=node.labels,
            ),
            self.logs_dir / f"kubelet-{index}.log",
        )
        node.kubelet.start()
        return node

    def _stop_node(self, node: RealNode) -> None:
        if node.kubelet is not None:
            node.kubelet.stop(2.0)
        _kill_cgroup(node.cgroup_root)  # every pod's processes, wherever their shim is
        _kill_matching(str(node.socket))  # containerd-shim-runc-v2 ... -address <socket>
        if node.containerd is not None:
            node.containerd.stop(5.0)
        if node.mounts is not None:
            node.mounts.stop(0)

    # --- API access ------------------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One admin request to the API server; JSON in and out (HTTPError for a non-2xx answer)."""
        req = urllib.request.Request(
            self.server + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30, context=self._ssl()) as resp:
            return json.loads(resp.read() or b"null")

    def _api_ok(self, path: str) -> bool:
        """GET ``path`` answers 2xx (``/readyz`` answers plain text, not JSON)."""
        req = urllib.request.Request(self.server + path)
        try:
            with urllib.request.urlopen(req, timeout=5, context=self._ssl()) as resp:
                return 200 <= int(resp.status) < 300
        except (urllib.error.URLError, OSError):
            return False

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    # --- helpers ---------------------------------------------------------------------------------------

    def _make_pki(self) -> pki.KeyPair:
        ca = pki.make_ca(self.pki)
        pki.issue(
            ca,
            self.pki,
            "apiserver",
            cn="kube-apiserver",
            sans=(
                "IP:127.0.0.1",
                f"IP:{configs.kubernetes_service_ip(self.service_net)}",  # in-cluster clients dial it
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ),
        )
        admin = pki.issue(ca, self.pki, "admin", cn="stagefleet-admin", groups=("system:masters",))
        pki.make_signing_key(self.pki / "sa.key")
        self.kubeconfig.write_text(
            yaml.safe_dump(
                configs.kubeconfig(
                    self.server,
                    ca.cert.read_bytes(),
                    "admin",
                    admin.cert.read_bytes(),
                    admin.key.read_bytes(),
                )
            )
        )
        self.kubeconfig.chmod(0o600)
        return ca

    def _component_kubeconfig(self, ca: pki.KeyPair, name: str, user: str) -> Path:
        pair = pki.issue(ca, self.pki, name, cn=user)
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(
            yaml.safe_dump(
                configs.kubeconfig(
                    self.server, ca.cert.read_bytes(), user, pair.cert.read_bytes(), pair.key.read_bytes()
                )
            )
        )
        return path

    def _spawn(self, name: str, argv: list[str]) -> _Proc:
        p = _Proc(name, argv, self.logs_dir / f"{name}.log")
        p.start()
        self._procs.append(p)
        return p

    def _wait(self, proc: _Proc, ready: Any, timeout: float, what: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if not proc.alive():
                raise RealClusterError(
                    f"{proc.name} exited before {what or 'it was ready'}:\n{_tail(proc.log)}"
                )
            time.sleep(0.1)
        raise RealClusterError(f"{what or proc.name} not ready after {timeout:.0f} s:\n{_tail(proc.log)}")


NODES_PREFIX = "sf-rt-"
OWNER = "owner.json"  # in a cluster's nodes directory: who started it, so that a later start can reap it


def _start_ticks(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat): a pid plus this names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def reap_orphans(tmp: Path | None = None) -> list[Path]:
    """Stop the clusters whose starting process is gone without a stop() (a test run killed hard): their
    processes, cgroup roots, mounts and directories. Returns the nodes directories reaped."""
    reaped = []
    for nodes_dir in Path(tmp or tempfile.gettempdir()).glob(NODES_PREFIX + "*"):
        try:
            owner = json.loads((nodes_dir / OWNER).read_text())
        except (OSError, ValueError):
            continue
        if _start_ticks(int(owner["pid"])) == owner["start"]:
            continue  # its owner still runs
        for needle in (str(nodes_dir) + "/", str(owner["workdir"]) + "/"):
            _kill_matching(needle)
        for root in owner.get("cgroup_roots", []):
            _remove_cgroup_root(root)
        _unmount_under(nodes_dir)
        shutil.rmtree(nodes_dir, ignore_errors=True)
        reaped.append(nodes_dir)
    return reaped


def _kubernetes_service_proxy(apiserver_port: int) -> tuple[int, ServiceProxy]:
    """A free 127.200.N.0/24 for the cluster's Services, with its `kubernetes` Service address (N.1:443)
    already forwarding to the API server."""
    for n in random.sample(range(1, 255), 254):
        try:
            proxy = ServiceProxy((configs.kubernetes_service_ip(n), 443), ("127.0.0.1", apiserver_port))
        except OSError:
            continue
        return n, proxy.start()
    raise RealClusterError("no free 127.200.N.1:443 for the kubernetes Service")


# --- host state: cgroups, mounts, strays ------------------------------------------------------------------


def _hierarchies() -> list[Path]:
    if not CGROUP_FS.is_dir():
        return []
    return [p for p in CGROUP_FS.iterdir() if p.is_dir() and (p / "cgroup.procs").exists()]


def _make_cgroup_root(root: str) -> None:
    """The node's cgroup root in every hierarchy (the kubelet checks them all); cpuset needs its cpus and
    mems copied from the parent before anything can join it."""
    for h in _hierarchies():
        d = h / root.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        for f in ("cpuset.cpus", "cpuset.mems"):
            if (d / f).exists() and not (d / f).read_text().strip():
                (d / f).write_text((h / f).read_text())


def _cgroup_dirs(root: str) -> list[Path]:
    """Every directory under the root in every hierarchy, deepest first."""
    out: list[Path] = []
    for h in _hierarchies():
        top = h / root.lstrip("/")
        if top.is_dir():
            out += [Path(dp) for dp, _, _ in os.walk(top)]
    return sorted(out, key=lambda p: len(p.parts), reverse=True)


def _kill_cgroup(root: str) -> None:
    for _ in range(50):
        pids: set[int] = set()
        for d in _cgroup_dirs(root):
            try:
                pids |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
            except (OSError, ValueError):
                continue
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_cgroup_root(root: str) -> None:
    _kill_cgroup(root)
    for d in _cgroup_dirs(root):
        for _ in range(20):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def _kill_matching(needle: str) -> None:
    """SIGKILL every process whose command line contains ``needle`` (the node's shims)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and int(entry.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _private_mounts(node_dir: Path, log: Path) -> _Proc:
    """A process holding a new private mount namespace in which NODE_PRIVATE_PATHS are the node's own
    directories; containerd and the kubelet enter it (nsenter -m), so their mounts (rootfs, volumes,
    network namespaces) stay in it too and vanish with the node's processes."""
    holder = _Proc("mounts", ["unshare", "--mount", "--propagation", "private", "sleep", "2147483647"], log)
    holder.start()
    assert holder.proc is not None
    own = os.readlink("/proc/self/ns/mnt")
    for _ in range(100):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{holder.proc.pid}/ns/mnt") != own:
                break
        time.sleep(0.02)
    else:
        holder.stop(0)
        raise RealClusterError("unshare --mount did not give the node a mount namespace")
    for path in NODE_PRIVATE_PATHS:
        path.mkdir(parents=True, exist_ok=True)  # a mount point; stays empty on the host
        private = node_dir / "host" / path.relative_to("/")
        private.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["nsenter", "-t", str(holder.proc.pid), "-m", "--", "mount", "--bind",
                               str(private), str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            holder.stop(0)
            raise RealClusterError(f"bind-mounting {private} on {path} for the node: {proc.stderr}")
    return holder


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` in this mount namespace, deepest first."""
    prefix = str(directory.resolve())
    found: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def _unmount_under(directory: Path) -> None:
    if not directory.exists():
        return
    for _ in range(3):
        points = mounts_under(directory)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True)
