"""The real test tier (stagefleet.realcluster): component versions, start and stop times, memory.

    .venv/bin/python bench/real_tier.py [--starts 3] [--nodes 2]

Starts a throwaway registry (pause image), then the real tier `--starts` times in a row, each time to all
nodes Ready and the default ServiceAccount present, runs one pod from the registry to Succeeded, and stops
it. Prints each component's version, then min / median / max of start, first-pod and stop seconds and the
tier's resident memory (every process of the cluster, summed) while idle. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from stagefleet import buildenv  # noqa: E402
from stagefleet.localregistry import LocalRegistry, ensure_base_image, ensure_pause_image  # noqa: E402
from stagefleet.realcluster import RealCluster, find_assets  # noqa: E402

KUBECTL = REPO / ".tools" / "bin" / "kubectl"


def version(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0] if out else "?"


def tier_rss_mb(rc: RealCluster) -> float:
    """Resident memory of the cluster's processes: every process whose command line names its directories
    (etcd, control plane, containerd, kubelets, shims, the mount-namespace holders)."""
    needles = [str(rc.workdir).encode()] + ([str(rc.nodes_dir).encode()] if rc.nodes_dir else [])
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if any(n in cmdline for n in needles):
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def stats(xs: list[float]) -> str:
    return f"{min(xs):.1f} / {statistics.median(xs):.1f} / {max(xs):.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=2)
    args = ap.parse_args()
    assets, why = find_assets()
    if assets is None:
        print(f"real tier unavailable: {why}")
        return 1
    print("versions:")
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"):
        print(f"  {name}: {version([str(assets / name), '--version'])}")
    print(f"  etcd: {version(['etcd', '--version'])}")
    print(f"  containerd: {version(['containerd', '--version'])}")
    print(f"  runc: {version(['runc', '--version'])}")
    print(f"  kubectl (client): {version([str(KUBECTL), 'version', '--client'])}")
    work = Path(tempfile.mkdtemp(prefix="sf-bench-real-"))
    reg = LocalRegistry(work / "registry").start()
    env = buildenv.prepare(work / "images", insecure_registries=[reg.host])
    starts: list[float] = []
    first_pod: list[float] = []
    stops: list[float] = []
    rss: list[float] = []
    try:
        base = ensure_base_image(reg.host, env)
        pause = ensure_pause_image(reg.host, env)
        for i in range(args.starts):
            rc = RealCluster(work / f"c{i}", pause_image=pause, registries=[reg.host], nodes=args.nodes)
            rc.start()
            starts.append(rc.started_seconds)
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": base,
                                                                      "command": ["true"]}]}}
            t0 = time.monotonic()
            kc = ["--kubeconfig", str(rc.kubeconfig)]
            subprocess.run([str(KUBECTL), *kc, "create", "-f", "-"], input=json.dumps(pod), text=True,
                           capture_output=True, check=True)
            while subprocess.run([str(KUBECTL), *kc, "get", "pod", "p", "-o", "jsonpath={.status.phase}"],
                                 capture_output=True, text=True).stdout != "Succeeded":
                time.sleep(0.05)
            first_pod.append(time.monotonic() - t0)
            rss.append(tier_rss_mb(rc))
            t0 = time.monotonic()
            rc.stop()
            stops.append(time.monotonic() - t0)
            print(f"run {i + 1}: up {starts[-1]:.1f} s, pod {first_pod[-1]:.1f} s, "
                  f"RSS {rss[-1]:.0f} MB, stop {stops[-1]:.1f} s", flush=True)
    finally:
        buildenv.cleanup(work / "images", env)
        reg.stop()
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"\n{args.nodes} nodes, {args.starts} starts (min / median / max), load {load} at the end:")
    print(f"  up to Ready:              {stats(starts)} s")
    print(f"  first pod to Succeeded:   {stats(first_pod)} s")
    print(f"  stop (nothing left):      {stats(stops)} s")
    print(f"  resident memory, idle:    {stats(rss)} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
