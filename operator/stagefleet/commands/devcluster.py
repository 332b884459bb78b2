"""`stagefleet dev-cluster up|down`: a local Kubernetes for development and tests.

The API-server emulator plus the local kubelet (`stagefleet.devcluster.DevCluster`). It is a development
and test tool, not a production cluster: plain HTTP without auth on 127.0.0.1, pods run as host
processes of the invoking user. `up --detach` leaves it running in the background and records the pid
in `WORKDIR/state.json`; `down` stops exactly that process (which kills its pods' processes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

DESCRIPTION = __doc__.split("\n\n")[1] if __doc__ else ""
STATE = "state.json"
MARK = "stagefleet-dev-cluster"  # in the background process's argv, so `down` only ever kills ours


def default_workdir() -> Path:
    """Where `up` keeps its kubeconfig, pod logs, volumes and state file (env STAGEFLEET_DEV_CLUSTER_DIR)."""
    env = os.environ.get("STAGEFLEET_DEV_CLUSTER_DIR")
    if env:
        return Path(env)
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "stagefleet" / "dev-cluster"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev-cluster",
        help="local development/test cluster: API emulator + local kubelet",
        description="Local Kubernetes for development and tests (NOT for production). " + DESCRIPTION,
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = sub.add_parser(
        "up",
        help="start the dev cluster (development/test tool)",
        description="Start the API-server emulator on a free loopback port and the local "
        "kubelet, write a kubeconfig, install the project's CRDs. A development "
        "and test tool: pods run as host processes, no auth.",
    )
    up.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help=f"state/log directory (default: %(default)s → {default_workdir()})",
    )
    up.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="also write the kubeconfig here (default: WORKDIR/kubeconfig only)",
    )
    up.add_argument("--nodes", type=int, default=2, help="simulated nodes (default: %(default)s)")
    up.add_argument(
        "--pods-per-node", type=int, default=8, help="pod capacity per node (default: %(default)s)"
    )
    up.add_argument("--node-label", action="append", default=[], metavar="K=V", help="label every node")
    up.add_argument(
        "--arm64-nodes",
        type=int,
        default=0,
        metavar="N",
        help="of the nodes, the last N say they are arm64 (their pods run here: arm64 builds are emulated "
        "through binfmt_misc); spec.platforms builds are placed on them",
    )
    up.add_argument("--no-crds", action="store_true", help="do not install crds/*.yaml")
    up.add_argument(
        "--real",
        action="store_true",
        help="a real Kubernetes instead of the emulator: etcd, kube-apiserver (TLS, RBAC, admission), "
        "controller-manager, scheduler and one containerd + kubelet per node, from the binaries in "
        "$STAGEFLEET_K8S_ASSETS or ../shared/k8s (stagefleet.realcluster); pods run real images",
    )
    up.add_argument(
        "--registry",
        default=None,
        metavar="HOST:PORT",
        help="with --real: the plain-HTTP registry nodes pull from (default: a throwaway one on loopback, "
        "holding the busybox base and pause images)",
    )
    up.add_argument(
        "--detach", action="store_true", help="run in the background; stop with `dev-cluster down`"
    )
    up.add_argument("-v", "--verbose", action="store_true", help="kubelet diagnostics on stderr")
    up.add_argument("--" + MARK, dest="background", action="store_true", help=argparse.SUPPRESS)
    down = sub.add_parser("down", help="stop the dev cluster `up --detach` started")
    down.add_argument(
        "--workdir", type=Path, default=None, help=f"as given to up (default: {default_workdir()})"
    )
    down.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before SIGKILL (default: %(default)s)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    workdir: Path = (args.workdir or default_workdir()).resolve()
    if args.action == "down":
        return down(workdir, args.timeout)
    labels: dict[str, str] = {}
    for kv in args.node_label:
        if "=" not in kv:
            print(f"stagefleet dev-cluster: --node-label wants K=V, got {kv!r}", file=sys.stderr)
            return 2
        k, v = kv.split("=", 1)
        labels[k] = v
    running = read_state(workdir)
    if running is not None and not args.background:
        print(
            f"stagefleet dev-cluster: already running (pid {running['pid']}, {running['server']}); "
            f"run `stagefleet dev-cluster down{_workdir_flag(args)}` first",
            file=sys.stderr,
        )
        return 1
    if args.detach:
        return detach(args, workdir)
    return foreground(args, workdir, labels)


def _workdir_flag(args: argparse.Namespace) -> str:
    return f" --workdir {args.workdir}" if args.workdir else ""


def read_state(workdir: Path) -> dict[str, Any] | None:
    """The state file of a dev cluster whose process is still alive, else None (stale files removed)."""
    path = workdir / STATE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if _is_ours(int(state.get("pid", 0))):
        return state
    path.unlink(missing_ok=True)
    return None


def _is_ours(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"dev-cluster" in cmdline and (b"up" in cmdline)


def foreground(args: argparse.Namespace, workdir: Path, labels: dict[str, str]) -> int:
    """Run the cluster in this process until SIGINT/SIGTERM."""
    from stagefleet.devcluster.apiserver import write_kubeconfig
    from stagefleet.devcluster.cluster import DevCluster

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.real:
        return foreground_real(args, workdir, stop)
    from dataclasses import replace

    from stagefleet.devcluster.kubelet import node_configs

    specs = node_configs(args.nodes, args.pods_per_node, labels)
    arm = max(0, min(args.arm64_nodes, len(specs)))
    specs = [replace(s, arch="arm64") if i >= len(specs) - arm else s for i, s in enumerate(specs)]
    cluster = DevCluster(
        workdir,
        node_specs=specs,
        install_crds=not args.no_crds,
        verbose=args.verbose,
    )
    cluster.start()
    try:
        kubeconfig = cluster.kubeconfig
        if args.kubeconfig:
            kubeconfig = write_kubeconfig(args.kubeconfig.resolve(), cluster.server)
        state = {
            "pid": os.getpid(),
            "server": cluster.server,
            "kubeconfig": str(kubeconfig),
            "workdir": str(workdir),
            "nodes": [n.name for n in cluster.nodes],
            "logs_dir": str(cluster.logs_dir),
        }
        _write_state(workdir, state)
        if not args.background:
            print_info(state, args.pods_per_node, detached=False)
        stop.wait()
    finally:
        cluster.stop()
        (workdir / STATE).unlink(missing_ok=True)
    return 0


def _write_state(workdir: Path, state: dict[str, Any]) -> None:
    tmp = workdir / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(workdir / STATE)


def foreground_real(args: argparse.Namespace, workdir: Path, stop: threading.Event) -> int:
    """`up --real`: a registry (given or throwaway) with the pause and busybox base images, then the real
    tier, until SIGINT/SIGTERM; everything stopped and unmounted on the way out."""
    import shutil

    from stagefleet import buildenv
    from stagefleet.localregistry import LocalRegistry, ensure_base_image, ensure_pause_image
    from stagefleet.realcluster import RealCluster, RealClusterError, find_assets

    assets, why = find_assets()
    if assets is None:
        print(f"stagefleet dev-cluster: --real cannot start: {why}", file=sys.stderr)
        return 1
    workdir.mkdir(parents=True, exist_ok=True)
    registry = None if args.registry else LocalRegistry(workdir / "registry").start()
    host = args.registry or (registry.host if registry else "")
    env = buildenv.prepare(workdir / "image-storage", insecure_registries=[host])
    cluster = None
    try:
        base = ensure_base_image(host, env)
        pause = ensure_pause_image(host, env)
        cluster = RealCluster(workdir / "cluster", pause_image=pause, registries=[host], nodes=args.nodes,
                              max_pods=args.pods_per_node, assets=assets, install_crds=not args.no_crds,
                              node_labels=list(args.node_label))
        cluster.start()
        kubeconfig = cluster.kubeconfig
        if args.kubeconfig:
            shutil.copyfile(kubeconfig, args.kubeconfig)
            kubeconfig = args.kubeconfig.resolve()
        state = {"pid": os.getpid(), "server": cluster.server, "kubeconfig": str(kubeconfig),
                 "workdir": str(workdir), "nodes": list(cluster.node_names),
                 "logs_dir": str(cluster.logs_dir), "real": True, "registry": host, "base_image": base,
                 "started_seconds": round(cluster.started_seconds, 1)}
        _write_state(workdir, state)
        if not args.background:
            print_info(state, args.pods_per_node, detached=False)
        stop.wait()
    except RealClusterError as e:
        print(f"stagefleet dev-cluster: --real did not start: {e}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.stop()
        buildenv.cleanup(workdir / "image-storage", env)
        if registry is not None:
            registry.stop()
        (workdir / STATE).unlink(missing_ok=True)
    return 0


def detach(args: argparse.Namespace, workdir: Path) -> int:
    """Start `up` again as a background session and wait until it has written its state file."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "stagefleet.cli",
        "dev-cluster",
        "up",
        "--" + MARK,
        "--workdir",
        str(workdir),
        "--nodes",
        str(args.nodes),
        "--pods-per-node",
        str(args.pods_per_node),
    ]
    for kv in args.node_label:
        argv += ["--node-label", kv]
    if args.kubeconfig:
        argv += ["--kubeconfig", str(args.kubeconfig.resolve())]
    if args.no_crds:
        argv.append("--no-crds")
    if args.real:
        argv.append("--real")
    if args.registry:
        argv += ["--registry", args.registry]
    if args.verbose:
        argv.append("--verbose")
    log_path = workdir / "dev-cluster.log"
    (workdir / STATE).unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/"
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            print(
                f"stagefleet dev-cluster: the background cluster exited ({proc.returncode}):\n{tail}",
                file=sys.stderr,
            )
            return 1
        state = read_state(workdir)
        if state is not None and state.get("pid") == proc.pid:
            print_info(state, args.pods_per_node, detached=True, log=log_path)
            return 0
        time.sleep(0.1)
    proc.terminate()
    print("stagefleet dev-cluster: the background cluster did not come up in 120 s", file=sys.stderr)
    return 1


def down(workdir: Path, timeout: float) -> int:
    """Stop the background cluster of `workdir` (SIGTERM, SIGKILL after `timeout`)."""
    state = read_state(workdir)
    if state is None:
        print(f"stagefleet dev-cluster: no dev cluster running for {workdir}")
        return 0
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _is_ours(pid):
        time.sleep(0.1)
    if _is_ours(pid):
        os.kill(pid, signal.SIGKILL)
    (workdir / STATE).unlink(missing_ok=True)
    print(f"stagefleet dev-cluster: stopped (pid {pid}, {state['server']})")
    return 0


def print_info(state: dict[str, Any], pods_per_node: int, *, detached: bool, log: Path | None = None) -> None:
    kc = state["kubeconfig"]
    nodes = ", ".join(state["nodes"])
    if state.get("real"):
        lines = [
            f"real Kubernetes (1.24) is up in {state['started_seconds']} s — a test tier on this machine",
            f"  API server:  {state['server']}  (TLS; client certificates; Node+RBAC; PodSecurity admission)",
            f"  kubeconfig:  {kc}  (cluster admin)",
            f"  nodes:       {nodes}  (containerd + kubelet each; {pods_per_node} pods each)",
            f"  registry:    {state['registry']}  (plain HTTP; base image {state['base_image']})",
            f"  logs:        {state['logs_dir']}",
        ]
    else:
        lines = [
            "stagefleet dev cluster is up — a development/test tool, not a production Kubernetes",
            f"  API server:  {state['server']}  (plain HTTP, no auth)",
            f"  kubeconfig:  {kc}",
            f"  nodes:       {nodes}  ({pods_per_node} pods each; pods run as host processes)",
            f"  pod logs:    {state['logs_dir']}",
        ]
    if log is not None:
        lines.append(f"  its log:     {log}  (pid {state['pid']})")
    lines += ["", "Use it:", f"  export KUBECONFIG={kc}", "  kubectl get nodes", ""]
    wd = f" --workdir {state['workdir']}" if Path(state["workdir"]) != default_workdir().resolve() else ""
    lines.append(f"Stop it:  stagefleet dev-cluster down{wd}" if detached else "Stop it:  Ctrl-C")
    print("\n".join(lines), flush=True)
