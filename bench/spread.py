"""Spread: one build's 16-stage fan-out on 1, 2, 4, 8 nodes, against one builder's makespan (issue #16).

    .venv/bin/python bench/spread.py [--nodes 1,2,4,8] [--slots 2] [--stages 16] [--seconds 2] [--reps 1]

NOTHING IS BUILT: worker pods run the SIMULATED worker (`bench/fake_worker.py`, a stand-in for a
CPU-bound stage that sleeps `--seconds`), on the dev cluster with the real operator. Each node has
`--slots` pod slots, standing for its CPUs: a CPU-bound stage holds one CPU for its whole duration, so a
node runs at most that many stages at once. The Dockerfile has `--stages` independent stages and a final
stage copying from all of them (stages + 1 groups), `maxParallelPods` above the cluster's slots, so the
nodes are the only limit.

One builder (BuildKit, buildah --jobs N) runs every stage on the one machine it lives on, with that
machine's `--slots` CPUs: its makespan is ceil(stages / slots) × seconds + seconds (the final), before any
overhead of its own. stagefleet places each stage's pod on any node with a free slot, so its makespan
falls with the node count until there are as many slots as stages.

Prints, per node count: apply → Succeeded (median of `--reps`), the ideal for that many slots, the one
builder's makespan and the ratio, and how many nodes the build's pods ran on.
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulated import operator, worker_command  # noqa: E402

NAMESPACE = "spread"


def dockerfile(stages: int) -> str:
    """`stages` independent stages and a final that copies one file from each."""
    parts = [f"FROM busybox:1.36 AS s{i}\nRUN echo {i} > /{i}\n" for i in range(1, stages + 1)]
    parts.append("FROM busybox:1.36 AS final\n" + "".join(f"COPY --from=s{i} /{i} /{i}\n"
                                                          for i in range(1, stages + 1)))
    return "\n".join(parts)


def ideal(stages: int, slots: int, seconds: float) -> float:
    """Makespan with `slots` stages at a time and no overhead: the fan-out in waves, then the final."""
    return math.ceil(stages / slots) * seconds + seconds


def one_run(nodes: int, args: argparse.Namespace, work: Path, rep: int) -> tuple[float, int]:
    """One build on a fresh dev cluster of `nodes` nodes: (apply → Succeeded seconds, nodes used)."""
    from kubernetes import client, config

    from stagefleet.devcluster import DevCluster

    run = work / f"n{nodes}-{rep}"
    run.mkdir(parents=True)
    dev = DevCluster(run / "devcluster", nodes=nodes, pods_per_node=args.slots)
    dev.start()
    try:
        config.load_kube_config(config_file=str(dev.kubeconfig))  # type: ignore[no-untyped-call]
        api = client.ApiClient(client.Configuration.get_default_copy())
        core: Any = client.CoreV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        with operator(dev.kubeconfig, NAMESPACE, run / "operator.log", worker_command(args.seconds),
                      ["--metrics-port", "0"]):
            body = {"apiVersion": "stagefleet.io/v1alpha1", "kind": "ImageBuild",
                    "metadata": {"name": "fan"},
                    "spec": {"source": {"inline": {"dockerfile": dockerfile(args.stages)}}, "target": "final",
                             "output": {"image": "registry.invalid/spread/fan:latest"},
                             "maxParallelPods": min(256, args.stages + 1), "timeout": "30m"}}
            t0 = time.monotonic()
            crd = ("stagefleet.io", "v1alpha1", NAMESPACE, "imagebuilds")
            custom.create_namespaced_custom_object(*crd, body)
            while True:
                obj = custom.get_namespaced_custom_object(*crd, "fan")
                phase = (obj.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed", "Cancelled"):
                    seconds = time.monotonic() - t0
                    break
                if time.monotonic() - t0 > args.timeout:
                    raise SystemExit(f"{nodes} node(s): not finished after {args.timeout:.0f} s "
                                     f"(phase {phase}); see {run / 'operator.log'}")
                time.sleep(0.1)
            if phase != "Succeeded":
                message = (obj.get("status") or {}).get("message")
                raise SystemExit(f"{nodes} node(s): build {phase}: {message}")
            pods = core.list_namespaced_pod(NAMESPACE).items
            used = len({p.spec.node_name for p in pods if p.spec.node_name})
    finally:
        dev.stop()
    return seconds, used


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--nodes", default="1,2,4,8", help="node counts to run, comma-separated (1,2,4,8)")
    p.add_argument("--slots", type=int, default=2,
                   help="pod slots (CPUs) per node, and the one builder's (2)")
    p.add_argument("--stages", type=int, default=16, help="independent stages of the fan-out (16)")
    p.add_argument("--seconds", type=float, default=2.0, help="each simulated stage's duration (2)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--workdir", help="keep clusters' and operators' logs here")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    counts = [int(n) for n in args.nodes.split(",")]
    builder = ideal(args.stages, args.slots, args.seconds)
    print(f"SIMULATED WORKER (sleeps {args.seconds:g} s per stage, builds nothing); "
          f"{args.stages}-stage fan-out + final; {args.slots} slots per node; one builder on one such "
          f"machine: {builder:.1f} s (before its own overhead)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sf-spread-") as tmpdir:
        work = Path(args.workdir) if args.workdir else Path(tmpdir)
        work.mkdir(parents=True, exist_ok=True)
        for nodes in counts:
            runs = [one_run(nodes, args, work, rep) for rep in range(args.reps)]
            seconds = statistics.median(s for s, _ in runs)
            used = max(u for _, u in runs)
            rows.append((nodes, seconds, ideal(args.stages, nodes * args.slots, args.seconds), used))
            print(f"  {nodes} node(s): {seconds:.2f} s (runs: {', '.join(f'{s:.2f}' for s, _ in runs)}); "
                  f"pods on {used} node(s)", flush=True)
    print(f"\n== {args.stages}-stage fan-out, {args.seconds:g} s per stage, {args.slots} slots per node; "
          f"median of {args.reps}")
    print(f"  {'nodes':>5s}  {'stagefleet':>10s}  {'ideal':>6s}  {'overhead':>8s}  {'one builder':>11s}  "
          f"{'stagefleet / one builder':>24s}  {'nodes used':>10s}")
    for nodes, seconds, best, used in rows:
        print(f"  {nodes:5d}  {seconds:9.2f}s  {best:5.1f}s  {seconds - best:7.2f}s  {builder:10.1f}s  "
              f"{seconds / builder:24.2f}  {used:10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
