"""Control-plane scale: N ImageBuilds of 5 stages each, applied at once, with a SIMULATED worker.

    .venv/bin/python bench/control_plane.py [--builds 300] [--nodes 5 --pods-per-node 8] [--sleep 0.5]

NOTHING IS BUILT: worker pods run `bench/fake_worker.py` (the operator's `--worker-command`), which sleeps
`--sleep` seconds and reports a synthetic digest. What is measured is the control plane only: the real
operator (a subprocess, default flags unless `--operator-arg`), the dev cluster's API emulator and local
kubelet (in this process; pods are host processes).

Each ImageBuild's Dockerfile has 5 stages: s1..s4 independent, `final` copies from all four, so the plan
has 5 groups (4 parallel pods, then 1). Builds are created through the API from 16 threads; the clock
starts at the first create. Prints, against the targets:
  * apply → Succeeded: time of the last build's Succeeded after the last apply (target: ≤ 60 s at
    40 pods in parallel, i.e. --nodes 5 --pods-per-node 8), plus per-build median/p95
  * pods created per second (mean over the run, best 1-second window) and peak pods running
  * API requests and writes per build and per group, by client (operator vs kubelet), counted in the
    emulator by wrapping its request handler in this process (target: ≤ 4 operator writes per group)
  * the operator's peak RSS (VmHWM from /proc; target ≤ 250 MB)
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from simulated import operator, worker_command

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "cp"
BENCH_UA = "stagefleet-bench"
DOCKERFILE = """FROM busybox:1.36 AS s1
RUN echo 1 > /1
FROM busybox:1.36 AS s2
RUN echo 2 > /2
FROM busybox:1.36 AS s3
RUN echo 3 > /3
FROM busybox:1.36 AS s4
RUN echo 4 > /4
FROM busybox:1.36 AS final
COPY --from=s1 /1 /1
COPY --from=s2 /2 /2
COPY --from=s3 /3 /3
COPY --from=s4 /4 /4
"""
GROUPS_PER_BUILD = 5
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class Counter:
    """API requests seen by the emulator: (client, method, resource) counts and pod-create times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.pod_creates: list[float] = []

    @staticmethod
    def client(ua: str) -> str:
        if ua.startswith("stagefleet-devkubelet"):
            return "kubelet"
        if ua.startswith("stagefleet-dev"):
            return "devcluster"  # the dev cluster's other controllers (Deployments)
        if ua.startswith(BENCH_UA):
            return "bench"
        if ua.startswith("kubectl"):
            return "kubectl"
        return "operator"  # kopf (aiohttp) and the official client's default user agent

    @staticmethod
    def resource(path: str, query: Any) -> str:
        parts = [p for p in path.split("/") if p]
        if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
            i = parts.index("namespaces") + 2
            kind = parts[i]
            sub = parts[i + 2] if len(parts) > i + 2 else ""
        else:
            kind = parts[-1] if parts else "/"
            sub = ""
        if query.get("watch") in ("true", "1"):
            sub = "watch"
        return f"{kind}/{sub}" if sub else kind

    def install(self) -> Callable[[], None]:
        """Make the emulator started next count its requests; returns the undo."""
        from stagefleet.devcluster.apiserver import server

        srv: Any = server
        original = srv.Handlers
        counter = self

        class Counting(original):  # type: ignore[misc, valid-type]
            async def handle(self, request: Any) -> Any:
                who = counter.client(request.headers.get("User-Agent", ""))
                what = counter.resource(request.path, request.query)
                with counter.lock:
                    counter.counts[(who, request.method, what)] += 1
                    if who == "operator" and request.method == "POST" and what == "pods":
                        counter.pod_creates.append(time.time())
                return await super().handle(request)

        srv.Handlers = Counting

        def undo() -> None:
            srv.Handlers = original

        return undo


def bench_clients(kubeconfig: Path, pool: int = 10) -> tuple[Any, Any]:
    """(CoreV1Api, CustomObjectsApi) for the bench's own requests: its user agent (so the API server's
    counts tell them from the operator's) and ``pool`` connections (the kubernetes client's default is 10)."""
    from kubernetes import client, config

    config.load_kube_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = pool
    api = client.ApiClient(cfg)
    api.user_agent = BENCH_UA
    return client.CoreV1Api(api), client.CustomObjectsApi(api)


def profile_loops(dev: Any) -> list[tuple[str, Any, cProfile.Profile]]:
    """cProfile the emulator's and the kubelet's event-loop threads (deterministic: the sampler's
    stacks are biased towards the points where threads release the GIL)."""
    out = []
    for name, loop in (("apiserver", dev._apiserver._loop), ("kubelet", dev.kubelet.loop)):
        prof = cProfile.Profile()
        loop.call_soon_threadsafe(prof.enable)
        out.append((name, loop, prof))
    return out


def write_loop_profile(loop: Any, prof: cProfile.Profile, path: Path) -> None:
    done = threading.Event()

    def stop() -> None:
        prof.disable()
        done.set()

    if loop.is_running():
        loop.call_soon_threadsafe(stop)
        done.wait(10)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    path.write_text(out.getvalue())


def read_cpu(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU seconds of a process so far (`reaped`: with its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15 if reaped else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def zygote_cpu() -> float:
    """CPU of the dev kubelet's container zygote and the pods it forked and reaped (none: 0).

    Those pods are the zygote's children, not ours, so our own reaped-children time misses them.
    """
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"--zygote" in cmdline:
            total += read_cpu(int(entry.name), reaped=True)
    return total


def cpu_clock() -> dict[str, float]:
    """The machine's idle and steal seconds so far (all CPUs), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    tick = os.sysconf("SC_CLK_TCK")
    return {"idle": (int(fields[3]) + int(fields[4])) / tick, "steal": int(fields[7]) / tick}


def describe_stuck(core: Any, unfinished: set[str]) -> None:
    """What the API says about the pods of builds that did not end: (group, phase, container state) counts."""
    pods = json.loads(core.list_namespaced_pod(NAMESPACE, _preload_content=False).data)["items"]
    seen: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for p in pods:
        build = (p["metadata"].get("labels") or {}).get("stagefleet.io/imagebuild") or ""
        if build not in unfinished:
            continue
        statuses = (p.get("status") or {}).get("containerStatuses") or []
        states = [next(iter(c.get("state") or {"?": 0})) for c in statuses]
        group = p["metadata"]["name"].rsplit("-", 2)[-2]
        seen[(group, (p.get("status") or {}).get("phase", "?"), ",".join(states) or "-")] += 1
    print(f"  pods of the {len(unfinished)} unfinished builds (group, phase, container state): "
          f"{dict(sorted(seen.items()))}", flush=True)


def read_hwm(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc."""
    vals = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in vals:
                vals[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return vals["VmRSS"], vals["VmHWM"]


def parse_time(s: str | None) -> float | None:
    if not s:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--builds", type=int, default=300)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--pods-per-node", type=int, default=8)
    p.add_argument("--sleep", type=float, default=0.5, help="seconds each simulated worker sleeps (0.5)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--operator-arg", action="append", default=[],
                   help="extra `stagefleet operator` argument (repeatable), "
                        "e.g. --operator-arg=--concurrency=16")
    p.add_argument("--workdir")
    p.add_argument("--profile", action="store_true",
                   help="cProfile the emulator's and the kubelet's threads, sample the operator's stacks "
                        "(bench/sampler.py): WORKDIR/profile-{apiserver,kubelet,operator}.txt")
    args = p.parse_args()
    # A bench started in the background ignores SIGINT: let SIGTERM stop it cleanly (operator, pods).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


    from stagefleet.devcluster import DevCluster

    counter = Counter()
    with tempfile.TemporaryDirectory(prefix="sf-cp-") as tmpdir:
        work = Path(args.workdir) if args.workdir else Path(tmpdir)
        work.mkdir(parents=True, exist_ok=True)
        undo = counter.install()
        dev = DevCluster(work / "devcluster", nodes=args.nodes, pods_per_node=args.pods_per_node)
        try:
            dev.start()
        finally:
            undo()
        loop_profiles = profile_loops(dev) if args.profile else []
        oplog = work / "operator.log"
        stack = ExitStack()
        try:
            core, custom = bench_clients(dev.kubeconfig, pool=32)
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            worker = worker_command(args.sleep)
            profiler = ([str(ROOT / "bench" / "sampler.py"), "--out", str(work / "profile-operator.txt")]
                        if args.profile else [])
            op = stack.enter_context(operator(dev.kubeconfig, NAMESPACE, oplog, worker,
                                              ["--metrics-port", "0", *args.operator_arg], prefix=profiler))
            baseline = dict(counter.counts)
            print(f"SIMULATED WORKER (bench/fake_worker.py, sleeps {args.sleep} s, builds nothing); "
                  f"{args.builds} ImageBuilds × {GROUPS_PER_BUILD} groups; {args.nodes} nodes × "
                  f"{args.pods_per_node} pods = {args.nodes * args.pods_per_node} pods in parallel; "
                  f"{os.cpu_count()} CPUs", flush=True)

            rss_peak = [0.0]
            stop_sampling = threading.Event()

            def sample() -> None:
                while not stop_sampling.wait(0.5):
                    assert op is not None
                    rss_peak[0] = max(rss_peak[0], read_hwm(op.pid)[1])

            threading.Thread(target=sample, daemon=True).start()

            names = [f"cp-{i:04d}" for i in range(args.builds)]

            def create(name: str) -> float:
                body = {"apiVersion": "stagefleet.io/v1alpha1", "kind": "ImageBuild",
                        "metadata": {"name": name},
                        "spec": {"source": {"inline": {"dockerfile": DOCKERFILE}}, "target": "final",
                                 "output": {"image": f"registry.invalid/cp/{name}:latest"},
                                 "maxParallelPods": 4, "timeout": "30m"}}
                custom.create_namespaced_custom_object("stagefleet.io", "v1alpha1", NAMESPACE, "imagebuilds",
                                                       body)
                return time.time()

            cpu: dict[str, float] = {}
            start = os.times()
            cpu_start = start.user + start.system
            pods_start = start.children_user + start.children_system - zygote_cpu()
            op_start = read_cpu(op.pid)
            clock_start = cpu_clock()
            t_first = time.time()
            with ThreadPoolExecutor(16) as pool:
                applied = dict(zip(names, pool.map(create, names), strict=True))
            t_last = max(applied.values())
            print(f"applied {args.builds} in {t_last - t_first:.1f} s", flush=True)

            done: dict[str, float] = {}
            phases: collections.Counter[str] = collections.Counter()
            last_report = 0.0
            while len(done) < args.builds:
                now = time.time()
                if now - t_first > args.timeout:
                    print(f"TIMEOUT after {args.timeout:.0f} s: {len(done)}/{args.builds} done; phases "
                          f"{dict(phases)}", flush=True)
                    describe_stuck(core, set(names) - set(done))
                    os.kill(op.pid, signal.SIGUSR2)  # the operator's thread stacks, into its log
                    time.sleep(1)
                    break
                if op.poll() is not None:
                    print(f"OPERATOR EXITED ({op.returncode}); see {oplog}", flush=True)
                    break
                items = custom.list_namespaced_custom_object("stagefleet.io", "v1alpha1", NAMESPACE,
                                                             "imagebuilds")["items"]
                phases = collections.Counter((o.get("status") or {}).get("phase", "-") for o in items)
                for o in items:
                    n = o["metadata"]["name"]
                    if n not in done and (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                        done[n] = now
                if now - last_report >= 10:
                    print(f"  t+{now - t_first:5.1f} s  {dict(sorted(phases.items()))}", flush=True)
                    last_report = now
                time.sleep(1.0)
            t_end = max(done.values()) if done else time.time()
            stop_sampling.set()
            cpu["operator"] = read_cpu(op.pid) - op_start
            _, hwm = read_hwm(op.pid)
            rss_peak[0] = max(rss_peak[0], hwm)
            failed = sum(1 for o in items if (o.get("status") or {}).get("phase") == "Failed")
            pods = core.list_namespaced_pod(NAMESPACE, _preload_content=False)
            pod_items = json.loads(pods.data)["items"]
            mine = os.times()
            cpu["bench"] = mine.user + mine.system - cpu_start
            cpu["pods"] = mine.children_user + mine.children_system - pods_start + zygote_cpu()
            clock = {k: v - clock_start[k] for k, v in cpu_clock().items()}
            report(args, counter, baseline, applied, done, t_first, t_last, t_end, rss_peak[0], failed,
                   pod_items)
            print(f"  CPU seconds during the run: this process (emulator, kubelet, bench) "
                  f"{cpu['bench']:.0f}, operator {cpu['operator']:.0f}, pod processes (reaped) "
                  f"{cpu['pods']:.0f}; load average at the end {os.getloadavg()[0]:.1f}", flush=True)
            print(f"  machine during the run: {clock['idle']:.0f} CPU-s idle, "
                  f"{clock['steal']:.0f} CPU-s stolen by the hypervisor "
                  f"(of {os.cpu_count()} CPUs × {time.time() - t_first:.0f} s)", flush=True)
        finally:
            for name, loop, prof in loop_profiles:
                write_loop_profile(loop, prof, work / f"profile-{name}.txt")
            stack.close()  # the operator
            dev.stop()
    return 0


def report(args: argparse.Namespace, counter: Counter, baseline: dict[tuple[str, str, str], int],
           applied: dict[str, float], done: dict[str, float], t_first: float, t_last: float, t_end: float,
           rss: float, failed: int, pods: list[dict[str, Any]]) -> None:
    n = args.builds
    groups = n * GROUPS_PER_BUILD
    parallel = args.nodes * args.pods_per_node
    counts = collections.Counter({k: v - baseline.get(k, 0) for k, v in counter.counts.items()})
    print(f"\n== control plane: {len(done)}/{n} builds ended ({failed} Failed), "
          f"{len(pods)} pods, SIMULATED worker ({args.sleep} s)")
    after_last = t_end - t_last
    ok = len(done) == n and failed == 0 and after_last <= 60 and parallel >= 40
    by = "" if ok or after_last <= 60 else f" by {after_last - 60:.1f} s"
    print(f"  last Succeeded after the last apply: {after_last:6.1f} s   target ≤ 60 s at 40 parallel "
          f"→ {'MET' if ok else 'MISSED'}{by}")
    per = [done[k] - applied[k] for k in done]
    if per:
        per.sort()
        print(f"  per build apply → Succeeded: median {statistics.median(per):.1f} s, "
              f"p95 {per[int(0.95 * (len(per) - 1))]:.1f} s, max {per[-1]:.1f} s")
    ideal = groups * args.sleep / parallel
    print(f"  (floor: {groups} pods × {args.sleep} s / {parallel} slots = {ideal:.1f} s of pod time, "
          f"plus one process start per pod)")
    creates = sorted(counter.pod_creates)
    if creates:
        span = max(creates[-1] - creates[0], 1e-9)
        best = max(sum(1 for c in creates if t <= c < t + 1) for t in creates)
        print(f"  pods created: {len(creates)}, {len(creates) / span:.1f}/s mean over {span:.1f} s, "
              f"best 1-s window {best}/s")
    windows: list[tuple[float, float]] = []
    for p in pods:
        for cs in (p.get("status") or {}).get("containerStatuses") or ():
            term = (cs.get("state") or {}).get("terminated") or {}
            a, b = parse_time(term.get("startedAt")), parse_time(term.get("finishedAt"))
            if a is not None and b is not None:
                windows.append((a, b))
    if windows:
        edges = sorted([(a, 1) for a, _ in windows] + [(b + 1, -1) for _, b in windows])  # 1-s resolution
        cur = peak = 0
        for _, d in edges:
            cur += d
            peak = max(peak, cur)
        print(f"  peak pods running (from containers' 1-s start/finish stamps, upper bound): {peak}")
    by_client: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for (who, method, _), c in counts.items():
        by_client[who][0] += c
        if method in WRITES:
            by_client[who][1] += c
    for who in ("operator", "kubelet", "bench"):
        req, wr = by_client.get(who, [0, 0])
        print(f"  API {who:9s} {req:7d} requests ({req / n:5.1f}/build), {wr:6d} writes "
              f"({wr / n:5.1f}/build, {wr / groups:4.2f}/group)")
    op_w = by_client.get("operator", [0, 0])[1] / groups
    print(f"  operator writes per group: {op_w:.2f}   target ≤ 4 → {'MET' if op_w <= 4 else 'MISSED'}")
    top = sorted(((c, k) for k, c in counts.items() if k[0] == "operator" and k[1] in WRITES and c > 0),
                 reverse=True)
    print("    operator writes by kind: " + ", ".join(f"{m} {r} {c / groups:.2f}" for c, (_, m, r) in top))
    topk = sorted(((c, k) for k, c in counts.items() if k[0] == "kubelet" and k[1] in WRITES and c > 0),
                  reverse=True)
    print("    kubelet writes by kind: " + ", ".join(f"{m} {r} {c / groups:.2f}" for c, (_, m, r) in topk))
    topr = sorted(((c, k) for k, c in counts.items() if k[0] == "operator" and k[1] not in WRITES and c > 0),
                  reverse=True)[:6]
    print("    operator reads by kind (per group): " + ", ".join(f"{m} {r} {c / groups:.2f}"
                                                              for c, (_, m, r) in topr))
    for who in ("kubelet", "devcluster", "bench"):
        topc = sorted(((c, k) for k, c in counts.items() if k[0] == who and k[1] not in WRITES and c > 0),
                      reverse=True)[:6]
        if topc:
            print(f"    {who} reads by kind (per group): "
                  + ", ".join(f"{m} {r} {c / groups:.2f}" for c, (_, m, r) in topc))
    verdict = "MET" if rss <= 250 else "MISSED"
    print(f"  operator peak RSS (VmHWM): {rss:.0f} MB   target ≤ 250 MB → {verdict}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
