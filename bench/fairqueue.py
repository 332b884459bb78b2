"""Fair sharing of the farm's worker-pod cap (`--max-worker-pods`): a small namespace behind a big backlog.

    .venv/bin/python bench/fairqueue.py [--big 200] [--small 5] [--cap 8] [--sleep 2] [--small-after 5]
                                        [--nodes 2 --pods-per-node 8] [--compare]

NOTHING IS BUILT and NO REGISTRY is used: worker pods run the SIMULATED worker (`bench/fake_worker.py`,
sleeps `--sleep` s and reports a synthetic digest). The real operator runs as a subprocess
(`bench/simulated.py`) against the dev cluster (API emulator + kubelet in this process), watching two
namespaces, `big` and `small`, with `--max-worker-pods --cap`: at most that many unfinished worker pods in
all, free slots to the namespace running the fewest (controller/workerqueue.py).

`--big` ImageBuilds are applied to `big` at once (8 threads), then `--small-after` seconds after the first
of them `--small` ImageBuilds to `small`, so they arrive behind a full backlog. Every build is churn's
Dockerfile: 3 stages (two independent, a final copying from both), 3 groups in 2 waves. `--compare` runs
the same work a second time without the cap (`--max-worker-pods 0`, a fresh cluster): then the nodes' pod
slots (`--nodes` × `--pods-per-node`) are the only limit, and the scheduler places pending pods oldest
first.

Clock: this process's own, not the API's 1-s timestamps. A build's apply time is when its create call
returned; two watches (all namespaces: worker pods, ImageBuilds) stamp each event as it arrives
(milliseconds behind the API). Printed per namespace:
  * wait = apply → the build's first worker pod seen Running (the pod's process started on a node);
    also apply → that pod seen created, which without the cap is immediate (the pod then waits Pending);
  * apply → Succeeded, and the namespace's last Succeeded after its first apply;
  * the small namespace's p90 wait over the big one's;
then the peak of unfinished worker pods at once (what the cap counts: created, not Succeeded/Failed, not
deleted; must stay ≤ the cap) and of Running ones, the builds that showed `status.queue` / Reconciling reason
`Queued`, and a sample of queued builds' `status.queue` and message 1 s after the small builds' apply.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churn import DOCKERFILE
from control_plane import bench_clients
from simulated import operator, worker_command

BIG, SMALL = "big", "small"
GROUP, VERSION, PLURAL = "stagefleet.io", "v1alpha1", "imagebuilds"
LABEL_BUILD, LABEL_GROUP = "stagefleet.io/imagebuild", "stagefleet.io/group"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
ENDED = ("Succeeded", "Failed")  # pod phases
Key = tuple[str, str]  # (namespace, ImageBuild name)


@dataclass
class Record:
    """What the two watches saw, stamped with this process's clock (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    applied: dict[Key, float] = field(default_factory=dict)
    first_pod: dict[Key, float] = field(default_factory=dict)  # first worker pod seen (created)
    first_run: dict[Key, float] = field(default_factory=dict)  # first worker pod seen Running
    ended: dict[Key, tuple[float, str]] = field(default_factory=dict)  # terminal phase seen
    unfinished: dict[str, tuple[str, str]] = field(default_factory=dict)  # pod uid → (namespace, phase)
    started: set[str] = field(default_factory=set)  # pod uids seen Running (or ended)
    late: int = 0  # pods first seen already ended (their start is stamped at that event)
    peak_unfinished: int = 0
    peak_running: int = 0
    peak_ns: collections.Counter[str] = field(default_factory=collections.Counter)
    status: dict[Key, dict[str, Any]] = field(default_factory=dict)  # latest status of each build
    queued: set[Key] = field(default_factory=set)  # showed status.queue
    reason_queued: set[Key] = field(default_factory=set)  # showed Reconciling reason Queued
    max_ahead: collections.Counter[str] = field(default_factory=collections.Counter)
    max_shown: collections.Counter[str] = field(default_factory=collections.Counter)  # namespaceRunning
    # Pod-seconds of unfinished and of Running worker pods (integrated over the watch's events).
    area_unfinished: float = 0.0
    area_running: float = 0.0
    last_t: float = 0.0
    n_running: int = 0

    def pod(self, kind: str, pod: dict[str, Any], t: float) -> None:
        meta = pod["metadata"]
        uid, ns = meta["uid"], meta["namespace"]
        key = (ns, (meta.get("labels") or {}).get(LABEL_BUILD, ""))
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        with self.lock:
            if self.last_t:
                self.area_unfinished += len(self.unfinished) * (t - self.last_t)
                self.area_running += self.n_running * (t - self.last_t)
            self.last_t = t
            self.first_pod.setdefault(key, t)
            if (phase == "Running" or phase in ENDED) and uid not in self.started:
                self.started.add(uid)
                self.first_run.setdefault(key, t)
                self.late += phase != "Running"
            if kind == "DELETED" or phase in ENDED:
                self.unfinished.pop(uid, None)
            else:
                self.unfinished[uid] = (ns, phase)
            self.n_running = sum(1 for _, ph in self.unfinished.values() if ph == "Running")
            self.peak_unfinished = max(self.peak_unfinished, len(self.unfinished))
            self.peak_running = max(self.peak_running, self.n_running)
            in_ns = sum(1 for n, _ in self.unfinished.values() if n == ns)
            self.peak_ns[ns] = max(self.peak_ns[ns], in_ns)

    def build(self, kind: str, obj: dict[str, Any], t: float) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        key = (meta["namespace"], meta["name"])
        with self.lock:
            if kind == "DELETED":
                return
            self.status[key] = status
            if status.get("phase") in TERMINAL:
                self.ended.setdefault(key, (t, status["phase"]))
            queue = status.get("queue")
            if queue:
                self.queued.add(key)
                self.max_ahead[key[0]] = max(self.max_ahead[key[0]], int(queue.get("ahead", 0)))
                shown = int(queue.get("namespaceRunning", 0))
                self.max_shown[key[0]] = max(self.max_shown[key[0]], shown)
            for c in status.get("conditions") or ():
                if c.get("type") == "Reconciling" and c.get("reason") == "Queued":
                    self.reason_queued.add(key)


def watch(call: Callable[..., Any], on_event: Callable[[str, dict[str, Any], float], None],
          stop: threading.Event, **kw: Any) -> None:
    """List, then watch from that resourceVersion (again after each stream's end), until `stop`."""
    from kubernetes.watch.watch import iter_resp_lines

    rv: str | None = None
    while not stop.is_set():
        try:
            if rv is None:
                listing = json.loads(call(_preload_content=False, **kw).data)
                rv = listing["metadata"]["resourceVersion"]
                for o in listing["items"]:
                    on_event("ADDED", o, time.time())
            resp = call(watch=True, resource_version=rv, timeout_seconds=30, _preload_content=False, **kw)
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                t = time.time()
                ev = json.loads(line)
                if ev["type"] == "ERROR":
                    rv = None  # (expired: list again)
                    break
                rv = ev["object"]["metadata"].get("resourceVersion", rv)
                if ev["type"] != "BOOKMARK":
                    on_event(ev["type"], ev["object"], t)
                if stop.is_set():
                    return
        except Exception:  # noqa: BLE001 (the cluster going away at the end; else retried)
            if stop.is_set():
                return
            time.sleep(0.2)


def pct(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sequence."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def dist(xs: Sequence[float]) -> str:
    if not xs:
        return f"{'-':>6s} {'-':>6s} {'-':>6s} {'-':>6s}"
    return f"{min(xs):6.1f} {pct(xs, 0.5):6.1f} {pct(xs, 0.9):6.1f} {max(xs):6.1f}"


def one_run(args: argparse.Namespace, cap: int) -> dict[str, Any]:
    """Start a dev cluster and the operator with `--max-worker-pods cap`, apply, wait, report."""

    from stagefleet.devcluster import DevCluster

    rec = Record()
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="sf-fq-") as tmpdir:
        work = Path(args.workdir) / f"cap{cap}" if args.workdir else Path(tmpdir)
        work.mkdir(parents=True, exist_ok=True)
        dev = DevCluster(work / "devcluster", nodes=args.nodes, pods_per_node=args.pods_per_node)
        dev.start()
        oplog = work / "operator.log"
        stack = ExitStack()
        try:
            core, custom = bench_clients(dev.kubeconfig, pool=16)
            for ns in (BIG, SMALL):
                core.create_namespace({"metadata": {"name": ns}})
            watchers = [
                threading.Thread(target=watch, args=(core.list_pod_for_all_namespaces, rec.pod, stop),
                                 kwargs={"label_selector": LABEL_GROUP}, daemon=True),
                threading.Thread(target=watch, args=(custom.list_cluster_custom_object, rec.build, stop),
                                 kwargs={"group": GROUP, "version": VERSION, "plural": PLURAL}, daemon=True),
            ]
            for w in watchers:
                w.start()
            op = stack.enter_context(operator(
                dev.kubeconfig, (BIG, SMALL), oplog, worker_command(args.sleep),
                ["--metrics-port", "0", "--max-worker-pods", str(cap), *args.operator_arg]))
            load0 = os.getloadavg()[0]
            what = f"--max-worker-pods {cap}" if cap else "NO CAP (--max-worker-pods 0)"
            print(f"\n#### {what}: SIMULATED WORKER (sleeps {args.sleep:g} s, builds nothing), no registry; "
                  f"{args.big} ImageBuilds in `{BIG}` at once, {args.small} in `{SMALL}` "
                  f"{args.small_after:g} s later, 3 groups each (2 waves); {args.nodes} nodes × "
                  f"{args.pods_per_node} pods = {args.nodes * args.pods_per_node} pod slots; "
                  f"{os.cpu_count()} CPUs, load {load0:.1f}", flush=True)

            def create(key: Key) -> None:
                ns, name = key
                body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ImageBuild", "metadata": {"name": name},
                        "spec": {"source": {"inline": {"dockerfile": DOCKERFILE}}, "target": "final",
                                 "output": {"image": f"registry.invalid/{ns}/{name}:latest"},
                                 "timeout": "60m"}}
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
                t = time.time()
                with rec.lock:
                    rec.applied[key] = t

            big = [(BIG, f"big-{i:04d}") for i in range(args.big)]
            small = [(SMALL, f"small-{i:02d}") for i in range(args.small)]
            t0 = time.time()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, big))
            t_big = time.time() - t0
            time.sleep(max(0.0, t0 + args.small_after - time.time()))
            t_small0 = time.time()
            for key in small:
                create(key)
            print(f"  applied {args.big} in {t_big:.1f} s; {args.small} at t+{t_small0 - t0:.1f} s",
                  flush=True)
            backlog = snapshot_backlog(rec, big)
            time.sleep(max(0.0, t_small0 + 1.0 - time.time()))
            sample = snapshot_queue(rec, big, small, time.time() - t0)

            everything = big + small
            last_report = time.time()
            timed_out = False
            while True:
                now = time.time()
                with rec.lock:
                    n_ended = sum(1 for k in everything if k in rec.ended)
                if n_ended == len(everything):
                    break
                if now - t0 > args.timeout:
                    timed_out = True
                    break
                if op.poll() is not None:
                    print(f"OPERATOR EXITED ({op.returncode}); see {oplog}", flush=True)
                    break
                if now - last_report >= 10:
                    last_report = now
                    print("  " + progress(rec, big, small, now - t0), flush=True)
                time.sleep(0.5)
            print("  " + progress(rec, big, small, time.time() - t0), flush=True)
            if timed_out:
                print(f"TIMEOUT after {args.timeout:.0f} s", flush=True)
                stuck(rec, everything)
            result = report(args, cap, rec, big, small, t0, backlog, sample)
            result["load"] = (load0, os.getloadavg()[0])
            result["log"] = log_summary(oplog)
            print(f"  operator log: {result['log']}; load {load0:.1f} → {os.getloadavg()[0]:.1f}",
                  flush=True)
            return result
        finally:
            stop.set()
            stack.close()  # the operator
            dev.stop()


def snapshot_backlog(rec: Record, big: list[Key]) -> str:
    with rec.lock:
        waiting = [k for k in big if k not in rec.first_run]
        groups = sum(int((rec.status.get(k) or {}).get("queue", {}).get("groups", 0)) for k in big)
        running = sum(1 for _, ph in rec.unfinished.values() if ph == "Running")
        pending = sum(1 for _, ph in rec.unfinished.values() if ph != "Running")
    return (f"{len(waiting)} of the {len(big)} `{BIG}` builds had no pod running yet ({groups} of their "
            f"groups in status.queue); worker pods: {running} Running, {pending} Pending")


def snapshot_queue(rec: Record, big: list[Key], small: list[Key], t: float) -> list[str]:
    """Queued builds' status.queue and message: the oldest and newest queued big builds, the small ones."""
    with rec.lock:
        status = {k: dict(v) for k, v in rec.status.items()}
    qbig = [k for k in big if (status.get(k) or {}).get("queue")]
    picks = ([qbig[0], qbig[-1]] if len(qbig) > 1 else qbig) + small[:3]
    out = [f"sample at t+{t:.1f} s (1 s after the `{SMALL}` apply): {len(qbig)} `{BIG}` builds show "
           "status.queue"]
    for k in picks:
        st = status.get(k) or {}
        reason = next((c.get("reason") for c in st.get("conditions") or () if c.get("type") == "Reconciling"),
                      "-")
        out.append(f"  {k[0]}/{k[1]}: phase {st.get('phase', '-')}, Reconciling {reason}, "
                   f"queue {json.dumps(st['queue']) if st.get('queue') else '-'}")
        if st.get("queue"):
            out.append(f"      message: {st.get('message', '')}")
    return out


def progress(rec: Record, big: list[Key], small: list[Key], t: float) -> str:
    with rec.lock:
        parts = []
        for ns, keys in ((BIG, big), (SMALL, small)):
            ended = sum(1 for k in keys if k in rec.ended)
            started = sum(1 for k in keys if k in rec.first_run)
            queued = sum(1 for k in keys if (rec.status.get(k) or {}).get("queue") and k not in rec.ended)
            parts.append(f"{ns} {ended}/{len(keys)} ended, {started} started, {queued} queued")
        running = sum(1 for _, ph in rec.unfinished.values() if ph == "Running")
        return (f"t+{t:5.1f} s  " + " | ".join(parts)
                + f" | worker pods {len(rec.unfinished)} unfinished, {running} Running")


def stuck(rec: Record, keys: list[Key]) -> None:
    with rec.lock:
        left = [k for k in keys if k not in rec.ended]
        for k in left[:10]:
            st = rec.status.get(k) or {}
            print(f"  unfinished {k[0]}/{k[1]}: phase {st.get('phase')}, queue {st.get('queue')}, "
                  f"message {st.get('message')!r}", flush=True)
        print(f"  ({len(left)} unfinished in all)", flush=True)


def log_summary(log: Path) -> str:
    """Counts of the operator's JSON log lines by severity (above info), and lines that are not JSON. The
    failed stage-tag removals from `registry.invalid` (no registry here: one per build and retry) are
    counted apart: expected."""
    levels: collections.Counter[str] = collections.Counter()
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            levels["not JSON"] += 1
            continue
        level = str(rec.get("severity") or "?")
        if level in ("debug", "info"):
            continue
        if "stage tag(s) of this build from registry.invalid" in str(rec.get("message")):
            level += " (stage tags: no registry, expected)"
        levels[level] += 1
    return f"{len(lines)} lines" + ("".join(f", {n} {lv}" for lv, n in sorted(levels.items())) or
                                   ", none above info")


def report(args: argparse.Namespace, cap: int, rec: Record, big: list[Key], small: list[Key], t0: float,
           backlog: str, sample: list[str]) -> dict[str, Any]:
    with rec.lock:
        res: dict[str, Any] = {"cap": cap}
        everything = big + small
        failed = sum(1 for k in everything if k in rec.ended and rec.ended[k][1] != "Succeeded")
        ended = sum(1 for k in everything if k in rec.ended)
        t_end = max((rec.ended[k][0] for k in everything if k in rec.ended), default=time.time())
        what = f"--max-worker-pods {cap}" if cap else "no cap"
        print(f"\n== {what}: {ended}/{len(everything)} builds ended ({failed} not Succeeded), last at "
              f"t+{t_end - t0:.1f} s")
        print(f"  when `{SMALL}` was applied: {backlog}")
        print("  seconds from apply (this process's clock); wait = to the build's first worker pod Running")
        print(f"  {'namespace':9s} {'builds':>6s} | {'wait: min':>9s} {'p50':>6s} {'p90':>6s} {'max':>6s} | "
              f"{'to pod created: p50':>19s} {'p90':>6s} {'max':>6s} | {'to Succeeded: p50':>17s} "
              f"{'p90':>6s} {'max':>6s} | last Succeeded after first apply")
        for ns, keys in ((BIG, big), (SMALL, small)):
            wait = [rec.first_run[k] - rec.applied[k] for k in keys if k in rec.first_run]
            created = [rec.first_pod[k] - rec.applied[k] for k in keys if k in rec.first_pod]
            e2e = [rec.ended[k][0] - rec.applied[k] for k in keys if k in rec.ended]
            span = (max(rec.ended[k][0] for k in keys if k in rec.ended) - min(rec.applied[k] for k in keys)
                    if e2e else float("nan"))
            c = dist(created).split()
            e = dist(e2e).split()
            print(f"  {ns:9s} {len(keys):6d} | {dist(wait):>30s} | {c[1]:>19s} {c[2]:>6s} {c[3]:>6s} | "
                  f"{e[1]:>17s} {e[2]:>6s} {e[3]:>6s} | {span:.1f} s")
            res[ns] = {"wait": wait, "created": created, "e2e": e2e, "span": span}
        bw, sw = res[BIG]["wait"], res[SMALL]["wait"]
        if bw and sw:
            res["ratio"] = pct(sw, 0.9) / max(pct(bw, 0.9), 1e-9)
            print(f"  `{SMALL}` p90 wait / `{BIG}` p90 wait: {pct(sw, 0.9):.1f} / {pct(bw, 0.9):.1f} s = "
                  f"{res['ratio']:.3f}; `{SMALL}` max wait = {max(sw) / args.sleep:.1f} × one pod's sleep")
        verdict = ("(no cap)" if not cap else
                   f"≤ cap {cap}: {'yes' if rec.peak_unfinished <= cap else 'NO, CAP EXCEEDED'}")
        res["peak_unfinished"], res["peak_running"] = rec.peak_unfinished, rec.peak_running
        print(f"  worker pods at once (watch): unfinished {rec.peak_unfinished} {verdict}; Running "
              f"{rec.peak_running}; unfinished per namespace: "
              + ", ".join(f"{ns} {rec.peak_ns[ns]}" for ns in (BIG, SMALL))
              + (f"; {rec.late} pods first seen already ended (start stamped then)" if rec.late else ""))
        span = max(t_end - t0, 1e-9)
        mean_u, mean_r = rec.area_unfinished / span, rec.area_running / span
        res["mean_unfinished"], res["mean_running"] = mean_u, mean_r
        of_cap = f" = {100 * mean_u / cap:.0f}% of the cap" if cap else ""
        print(f"  mean from the first apply to the last end: {mean_u:.1f} unfinished worker pods{of_cap}, "
              f"{mean_r:.1f} Running (pod-seconds / {span:.1f} s)")
        for ns, keys in ((BIG, big), (SMALL, small)):
            q = sum(1 for k in keys if k in rec.queued)
            r = sum(1 for k in keys if k in rec.reason_queued)
            print(f"  `{ns}`: {q} of {len(keys)} builds showed status.queue (largest ahead "
                  f"{rec.max_ahead[ns]}, largest namespaceRunning {rec.max_shown[ns]}), {r} Reconciling "
                  "reason Queued")
    for line in sample:
        print("  " + line)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--big", type=int, default=200, help="ImageBuilds applied at once to `big` (200)")
    p.add_argument("--small", type=int, default=5, help="ImageBuilds applied to `small` (5)")
    p.add_argument("--small-after", type=float, default=5.0,
                   help="seconds after the first `big` apply that `small`'s are applied (5)")
    p.add_argument("--cap", type=int, default=8, help="operator --max-worker-pods (8; 0: no cap)")
    p.add_argument("--compare", action="store_true",
                   help="then the same work again without the cap (--max-worker-pods 0), on a fresh cluster")
    p.add_argument("--sleep", type=float, default=2.0, help="seconds each simulated worker sleeps (2)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--pods-per-node", type=int, default=8)
    p.add_argument("--timeout", type=float, default=1200.0, help="per run, from the first apply (1200 s)")
    p.add_argument("--operator-arg", action="append", default=[],
                   help="extra `stagefleet operator` argument (repeatable)")
    p.add_argument("--workdir", help="keep the clusters' files and operator logs here (one dir per run)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    runs = [one_run(args, args.cap)]
    if args.compare and args.cap:
        runs.append(one_run(args, 0))
    if len(runs) == 2:
        a, b = runs
        print(f"\n== with --max-worker-pods {args.cap} vs without (p90 wait, seconds)")
        for ns in (BIG, SMALL):
            wa, wb = a[ns]["wait"], b[ns]["wait"]
            if wa and wb:
                print(f"  `{ns}`: p90 wait {pct(wa, 0.9):.1f} vs {pct(wb, 0.9):.1f} (max {max(wa):.1f} vs "
                      f"{max(wb):.1f}); last Succeeded after its first apply {a[ns]['span']:.1f} vs "
                      f"{b[ns]['span']:.1f}")
        if "ratio" in a and "ratio" in b:
            print(f"  `{SMALL}` p90 / `{BIG}` p90: {a['ratio']:.3f} with the cap, {b['ratio']:.3f} without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
