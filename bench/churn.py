"""Churn: ImageBuilds created, finished and TTL-deleted for a long while; what the farm keeps must stay flat.

    .venv/bin/python bench/churn.py [--builds 500] [--rate 1] [--ttl 5] [--every 30]

NOTHING IS BUILT and NO REGISTRY is used: worker pods run the SIMULATED worker (`bench/fake_worker.py`,
sleeps `--sleep` s and reports a synthetic digest), so there are no stage tags to count; the registry side
of churn (stage-tag deletion) is not measured here. The real operator runs as a subprocess against the dev
cluster (emulator + kubelet in this process), with its metrics endpoint on, which this bench scrapes.

Builds (3 stages: two independent, a final copying from both; 3 groups, 2 waves) are created at `--rate`
per second, at most `--max-live` unfinished at once, each with `spec.ttlSecondsAfterFinished: --ttl`, so
the operator deletes each one (and through owner references its pods) shortly after it ends. Every
`--every` seconds a row: builds created / ended / deleted so far, live ImageBuilds, worker pods and
Events in the API, the operator's RSS (VmRSS) and the entries of its per-build and per-pod maps (metric
`stagefleet_operator_tracked_entries{map}`); `+child`: the RSS of the operator's child processes (its
planning process, `controller.planner`). After the last build ends the bench keeps sampling for
`--settle` seconds: the drain.

Events: the API server deletes Events `--event-ttl` after their last occurrence (kube-apiserver's
`--event-ttl`, 1 h by default); this bench sets the emulator's to `--event-ttl` (120 s) so that the Events'
plateau is reached within the run. The operator itself writes one Event object per distinct message per
build (repeats raise a count).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from control_plane import bench_clients, read_hwm
from simulated import operator, worker_command

NAMESPACE = "churn"
DOCKERFILE = """FROM busybox:1.36 AS s1
RUN echo 1 > /1
FROM busybox:1.36 AS s2
RUN echo 2 > /2
FROM busybox:1.36 AS final
COPY --from=s1 /1 /1
COPY --from=s2 /2 /2
"""
TERMINAL = ("Succeeded", "Failed", "Cancelled")
SHOWN_MAPS = ("due", "locks", "pod_states", "pod_nodes", "metrics", "events")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tracked(port: int) -> dict[str, int]:
    """The operator's map sizes from its metrics endpoint (empty when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, int] = {}
    prefix = 'stagefleet_operator_tracked_entries{map="'
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, value = line[len(prefix):].partition('"} ')
            out[name] = int(float(value))
    return out


def descendants_rss(pid: int) -> float:
    """VmRSS in MB of every process below ``pid`` (the operator's planning process, `controller.planner`,
    and multiprocessing's helper)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        total += read_hwm(p)[0]
        todo += children.get(p, [])
    return total


def count(core: Any, what: str) -> int:
    call = {"pods": core.list_namespaced_pod, "events": core.list_namespaced_event}[what]
    return len(json.loads(call(NAMESPACE, _preload_content=False).data)["items"])


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--builds", type=int, default=500)
    p.add_argument("--rate", type=float, default=1.0, help="builds created per second (1)")
    p.add_argument("--max-live", type=int, default=40, help="no new build while this many are unfinished")
    p.add_argument("--ttl", type=int, default=5, help="spec.ttlSecondsAfterFinished of every build (5)")
    p.add_argument("--sleep", type=float, default=0.5, help="seconds each simulated worker sleeps (0.5)")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--pods-per-node", type=int, default=8)
    p.add_argument("--every", type=float, default=30.0, help="seconds between table rows (30)")
    p.add_argument("--settle", type=float, default=150.0, help="keep sampling this long after the last end")
    p.add_argument("--event-ttl", type=float, default=120.0, help="the emulator's Event TTL (120 s)")
    p.add_argument("--sweep", type=float, default=60.0, help="operator --memory-sweep-seconds (60)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--operator-arg", action="append", default=[])
    p.add_argument("--workdir")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


    from stagefleet.devcluster import DevCluster
    from stagefleet.devcluster.apiserver.gc import GarbageCollector

    GarbageCollector.expire_events.__defaults__ = (args.event_ttl,)  # the emulated --event-ttl
    with tempfile.TemporaryDirectory(prefix="sf-churn-") as tmpdir:
        work = Path(args.workdir) if args.workdir else Path(tmpdir)
        work.mkdir(parents=True, exist_ok=True)
        dev = DevCluster(work / "devcluster", nodes=args.nodes, pods_per_node=args.pods_per_node)
        dev.start()
        oplog = work / "operator.log"
        stack = ExitStack()
        try:
            core, custom = bench_clients(dev.kubeconfig)
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            port = free_port()
            op = stack.enter_context(operator(
                dev.kubeconfig, NAMESPACE, oplog, worker_command(args.sleep),
                ["--metrics-port", str(port), "--metrics-address", "127.0.0.1",
                 "--memory-sweep-seconds", str(args.sweep), *args.operator_arg]))
            print(f"SIMULATED WORKER (sleeps {args.sleep} s, builds nothing), NO REGISTRY (no stage tags to "
                  f"count); {args.builds} ImageBuilds × 3 groups at {args.rate:g}/s, at most "
                  f"{args.max_live} unfinished, ttlSecondsAfterFinished {args.ttl}; {args.nodes} nodes × "
                  f"{args.pods_per_node} pods; emulated event TTL {args.event_ttl:g} s; operator "
                  f"--memory-sweep-seconds {args.sweep:g}; {os.cpu_count()} CPUs", flush=True)
            maps_hdr = " ".join(f"{m:>10s}" for m in SHOWN_MAPS)
            header = (f"{'t s':>6s} {'created':>7s} {'ended':>6s} {'deleted':>7s} {'live IB':>7s} "
                      f"{'pods':>5s} {'Events':>6s} {'RSS MB':>6s} {'+child':>6s} {'entries':>7s} {maps_hdr}")
            print(header, flush=True)
            rows: list[dict[str, float]] = []
            t0 = time.time()
            created = 0
            ended: set[str] = set()
            live_names: set[str] = set()
            phases: collections.Counter[str] = collections.Counter()
            last_row = -1e9
            all_ended_at: float | None = None
            while True:
                now = time.time()
                if now - t0 > args.timeout:
                    print(f"TIMEOUT after {args.timeout:.0f} s; phases {dict(phases)}", flush=True)
                    break
                if op.poll() is not None:
                    print(f"OPERATOR EXITED ({op.returncode}); see {oplog}", flush=True)
                    break
                items = custom.list_namespaced_custom_object("stagefleet.io", "v1alpha1", NAMESPACE,
                                                             "imagebuilds")["items"]
                live_names = {o["metadata"]["name"] for o in items}
                listed_after = created  # every build created so far is in this list unless deleted
                phases = collections.Counter((o.get("status") or {}).get("phase", "-") for o in items)
                for o in items:
                    if (o.get("status") or {}).get("phase") in TERMINAL:
                        ended.add(o["metadata"]["name"])
                # A build deleted before this poll saw it end did end (only finished builds expire).
                ended |= {f"churn-{i:04d}" for i in range(created)} - live_names
                unfinished = created - len(ended)
                due = min(args.builds, int((now - t0) * args.rate) + 1)
                while created < due and unfinished < args.max_live:
                    name = f"churn-{created:04d}"
                    body = {"apiVersion": "stagefleet.io/v1alpha1", "kind": "ImageBuild",
                            "metadata": {"name": name},
                            "spec": {"source": {"inline": {"dockerfile": DOCKERFILE}}, "target": "final",
                                     "output": {"image": f"registry.invalid/churn/{name}:latest"},
                                     "ttlSecondsAfterFinished": args.ttl, "timeout": "30m"}}
                    custom.create_namespaced_custom_object("stagefleet.io", "v1alpha1", NAMESPACE,
                                                           "imagebuilds", body)
                    created += 1
                    unfinished += 1
                if created == args.builds and len(ended) == args.builds and all_ended_at is None:
                    all_ended_at = now
                    print(f"  all {args.builds} builds ended at t+{now - t0:.0f} s; settling "
                          f"{args.settle:g} s", flush=True)
                settled = all_ended_at is not None and now - all_ended_at >= args.settle
                if now - last_row >= args.every or settled:
                    last_row = now
                    sizes = tracked(port)
                    rss, _ = read_hwm(op.pid)
                    child = descendants_rss(op.pid)
                    row = {"t": now - t0, "created": created, "ended": len(ended),
                           "deleted": listed_after - len(live_names), "live": len(live_names),
                           "pods": count(core, "pods"), "events": count(core, "events"), "rss": rss,
                           "child": child,
                           "entries": sum(v for k, v in sizes.items() if k != "tasks"),
                           **{f"m_{m}": sizes.get(m, -1) for m in SHOWN_MAPS}}
                    rows.append(row)
                    maps = " ".join(f"{int(row[f'm_{m}']):>10d}" for m in SHOWN_MAPS)
                    print(f"{row['t']:6.0f} {created:7d} {len(ended):6d} {int(row['deleted']):7d} "
                          f"{len(live_names):7d} {int(row['pods']):5d} {int(row['events']):6d} "
                          f"{rss:6.1f} {child:6.1f} {int(row['entries']):7d} {maps}", flush=True)
                if settled:
                    break
                time.sleep(1.0)
            summary(rows, args)
        finally:
            stack.close()  # the operator
            dev.stop()
    return 0


def summary(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    """Flatness: the second half of the churn against the first (steady state), and the end."""
    churning = [r for r in rows if r["created"] < args.builds or r["live"] > 0]
    if len(churning) < 4:
        return
    half = len(churning) // 2
    first, second = churning[1:half], churning[half:]  # (row 0: the start-up)

    def peak(rs: list[dict[str, float]], k: str) -> float:
        return max((r[k] for r in rs), default=0.0)

    print("\n== churn: peaks in the first and second half of the churn, and the last row")
    for k, label in (("live", "live ImageBuilds"), ("pods", "worker pods"), ("events", "Events"),
                     ("rss", "operator RSS MB"), ("child", "its children's RSS MB"),
                     ("entries", "operator map entries")):
        print(f"  {label:22s} {peak(first, k):8.1f} {peak(second, k):8.1f}   last {rows[-1][k]:8.1f}")


if __name__ == "__main__":
    sys.exit(main())
