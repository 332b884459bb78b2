"""Makespan: stagefleet on the dev cluster vs `buildah build --jobs 1` / `--jobs N` vs BuildKit.

    .venv/bin/python bench/makespan.py [--reps-5 3] [--reps-10 2] [--reps-wide 2] [--reps-prep 2]
                                       [--shapes seed5,seed10,wide,prep]

Shapes (real `sleep` steps, so the work is wall time, not CPU — a 2-core machine can overlap it):
  seed5/seed10  the seed: build1 and build2 each `sleep S`, final copies from both (S = 5, 10)
  wide          a base (sleep 1), four parallel branches of unequal length (sleep 2, 3, 4, 6) FROM the
                base, a final copying from all four
  prep          the seed5 branches, and a final whose own `RUN sleep 3` comes before its COPYs from them
                (a final stage's package install or user setup): a builder can run it beside the branches

Each repetition builds the same Dockerfile four ways, each from fresh storage:
  stagefleet    ImageBuild applied to the dev cluster (API emulator + local kubelet), the real operator
                as a subprocess, one real worker pod (stagefleet-worker → buildah) per plan group, stage
                results pushed/pulled through a local docker-registry by digest; timed from the API
                create to the watch event that shows phase Succeeded. A fresh output
                repository per repetition, so the registry layer cache is cold every time.
  buildah -j1   `buildah build --jobs 1` in a fresh storage root (stages one after another)
  buildah -jN   `buildah build --jobs N` in a fresh storage root (N = stage count: one builder,
                parallel inside itself, like BuildKit on one node)
  BuildKit      `DOCKER_BUILDKIT=1 docker build` against a private dockerd that the bench starts (bench/
                buildkit.py; Debian's docker.io 20.10), its build cache and images pruned before each
                build (cold, base pulled again); skipped, with the reason, when docker.io is absent
  BuildKit + push  the same build tagged in a fresh repository of the local registry, then `docker push`:
                what a user of `docker build` does to get the image where stagefleet puts it
buildah and BuildKit only build (no push); stagefleet also pushes the final image (and the stage results
it must). "BuildKit + push" is the like-for-like peer of stagefleet's time.

The critical path is the longest chain of stage durations (status.stages[].duration, the worker's
per-stage buildah time), following the plan's group dependencies. The overhead over it is split along
the chain of pods that ends last, from timestamps of a thin wrapper around each worker (`--trace-worker`,
~30 ms of Python start-up per pod) and the operator's log:
  react        upstream pod's worker exit (or the apply) → operator logs "started pod"
  podstart     "started pod" → worker process starts (API write, kubelet notices, binds, spawns)
  prepare      worker start → "building target" (interpreter start, storage root, Dockerfile fetch)
  (a pod started early — operator default, see --operator-args — runs while its upstream builds: for it,
  react, podstart and prepare count only what is left after the upstream's worker ended: noticing the
  upstream's result tag in the registry and pulling it)
  stages       the stage durations of the group (buildah from its FROM to the stage's end); they
               include (pull) — base and upstream stage images pulled from the registry — and
               (cache-push) — layers pushed to the cache repository
  push         the rest of the worker: pushing the group's image by digest, buildah exit, cleanup
  tail         last worker exit → the watch event that shows Succeeded (operator reads the result, writes
               status)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from buildkit import buildkit_daemon  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"

SEED = """ARG BASE
FROM ${{BASE}} AS build1
RUN sleep {s} && echo one > /one.txt

FROM ${{BASE}} AS build2
RUN sleep {s} && echo two > /two.txt

FROM ${{BASE}} AS final
COPY --from=build1 /one.txt /out/one.txt
COPY --from=build2 /two.txt /out/two.txt
CMD ["cat", "/out/one.txt", "/out/two.txt"]
"""

WIDE = """ARG BASE
FROM ${BASE} AS base
RUN sleep 1 && echo base > /base.txt

FROM base AS b1
RUN sleep 2 && echo 1 > /b1.txt

FROM base AS b2
RUN sleep 3 && echo 2 > /b2.txt

FROM base AS b3
RUN sleep 4 && echo 3 > /b3.txt

FROM base AS b4
RUN sleep 6 && echo 4 > /b4.txt

FROM ${BASE} AS final
COPY --from=b1 /b1.txt /out/
COPY --from=b2 /b2.txt /out/
COPY --from=b3 /b3.txt /out/
COPY --from=b4 /b4.txt /out/
"""

PREP = """ARG BASE
FROM ${BASE} AS build1
RUN sleep 5 && echo one > /one.txt

FROM ${BASE} AS build2
RUN sleep 5 && echo two > /two.txt

FROM ${BASE} AS final
RUN sleep 3 && echo prepared > /prep.txt
COPY --from=build1 /one.txt /out/one.txt
COPY --from=build2 /two.txt /out/two.txt
"""

SHAPES = {
    "seed5": (SEED.format(s=5), 3, "two `sleep 5` stages, final copies both (ideal: 5 s)"),
    "seed10": (SEED.format(s=10), 3, "two `sleep 10` stages, final copies both (ideal: 10 s)"),
    "wide": (WIDE, 6, "base 1 s → branches 2/3/4/6 s → final (ideal: 7 s)"),
    "prep": (PREP, 3, "two `sleep 5` stages, final's own `sleep 3` before its COPYs (ideal: 5 s)"),
}
IDEAL = {"seed5": 5.0, "seed10": 10.0, "wide": 7.0, "prep": 5.0}  # the sleeps on the longest chain


# ----------------------------------------------------------------------------------- worker wrapper


def trace_worker(tracedir: str, argv: Sequence[str]) -> int:
    """Run the real worker, passing its output through, and record when each line appeared."""
    start = time.time()
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.append((time.time(), raw.decode(errors="replace").rstrip("\n")))
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
    rc = proc.wait()
    end = time.time()
    group = argv[list(argv).index("--group") + 1] if "--group" in argv else "?"
    push = argv[list(argv).index("--push") + 1] if "--push" in argv else ""
    out = Path(tracedir) / f"{uuid.uuid4().hex}.json"
    out.write_text(json.dumps({"group": group, "push": push, "start": start, "end": end, "rc": rc,
                               "lines": lines}))
    return rc


# ----------------------------------------------------------------------------------------- buildah


RACE = "changing to intended-new-root directory"  # buildah 1.28 --jobs N without --layers, now and then


def buildah_once(dockerfile: str, base: str, registry: str, jobs: int, work: Path,
                 extra: Sequence[str] = ()) -> float:
    """`buildah build` (plus ``extra`` flags) of ``dockerfile`` in a fresh storage root: seconds."""
    from stagefleet import buildenv

    ctx = work / "ctx"
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    root = work / "root"
    env = buildenv.prepare(root, insecure_registries=[registry])
    try:
        argv = ["buildah", "build", *extra, "--jobs", str(jobs), "--target", "final",
                "--build-arg", f"BASE={base}",
                "-t", f"localhost/bench:{uuid.uuid4().hex[:8]}", str(ctx)]
        for attempt in range(1, 4):
            t0 = time.monotonic()
            proc = subprocess.run(argv, env=env, capture_output=True, text=True)
            elapsed = time.monotonic() - t0
            if proc.returncode == 0:
                return elapsed
            if RACE not in proc.stderr + proc.stdout or attempt == 3:
                raise SystemExit(f"buildah --jobs {jobs} failed:\n{proc.stdout[-2000:]}\n"
                                 f"{proc.stderr[-2000:]}")
            print(f"  buildah --jobs {jobs}: a stage's container went away under a parallel COPY --from "
                  f"(buildah 1.28 race), run again ({attempt})", flush=True)
        raise AssertionError("unreachable")
    finally:
        buildenv.cleanup(root, env)


# -------------------------------------------------------------------------------------- stagefleet


@dataclass
class Run:
    seconds: float
    applied: float
    seen_done: float
    status: dict[str, Any]
    traces: list[dict[str, Any]] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)  # pod name → operator's "started pod" time


def critical_path(status: dict[str, Any]) -> tuple[float, list[str]]:
    """Longest chain of stage durations along the plan's group dependencies."""
    dur = {s["name"]: float(s.get("duration") or 0.0) for s in status["stages"]}
    groups = {g["id"]: g for g in status["plan"]["groups"]}
    best: dict[str, tuple[float, list[str]]] = {}

    def chain(gid: str) -> tuple[float, list[str]]:
        if gid not in best:
            g = groups[gid]
            before = max((chain(a) for a in g["after"]), default=(0.0, []), key=lambda c: c[0])
            best[gid] = (before[0] + sum(dur[s] for s in g["stages"]), before[1] + list(g["stages"]))
        return best[gid]

    return max((chain(g) for g in groups), key=lambda c: c[0])


def _step_index(text: str) -> tuple[str, int] | None:
    # "[stage] STEP 2/3: RUN ..." → (stage, 2)
    if not text.startswith("[") or "] STEP " not in text:
        return None
    stage, rest = text[1:].split("] STEP ", 1)
    try:
        return stage, int(rest.split("/", 1)[0])
    except ValueError:
        return None


def _spans(lines: list[tuple[float, str]], begin: str, end: str) -> float:
    """Total time from each line containing ``begin`` to the next line (pull: to the manifest write)."""
    total = 0.0
    for i, (t, text) in enumerate(lines):
        if begin in text:
            stop = next((a for a, b in lines[i + 1:] if end in b), None) if end else None
            nxt = stop if stop is not None else (lines[i + 1][0] if i + 1 < len(lines) else t)
            total += nxt - t
    return total


def breakdown(run: Run) -> dict[str, float]:
    """Where the stagefleet time goes, along the chain of pods that ended last (see the module doc)."""
    status = run.status
    groups = {g["id"]: g for g in status["plan"]["groups"]}
    by_group = {t["group"]: t for t in run.traces if t["rc"] == 0}
    pods = {s["group"]: s.get("pod") for s in status["stages"]}
    keys = ("react", "podstart", "prepare", "stages", "(pull)", "(cache-push)", "push", "tail")
    out = dict.fromkeys(keys, 0.0)
    chain: list[str] = []
    gid: str | None = status["plan"]["finalGroup"]
    while gid is not None:  # walk back from the final group along the upstream that finished last
        chain.append(gid)
        after = groups[gid]["after"]
        gid = max(after, key=lambda a: by_group[a]["end"]) if after else None
    chain.reverse()
    prev_end = run.applied
    for gid in chain:
        t = by_group[gid]
        created = run.started.get(str(pods.get(gid)), t["start"])
        # A pod started early (before its upstream ended) hides what it did meanwhile: only the part
        # after the upstream's end counts.
        out["react"] += max(created - prev_end, 0.0)
        out["podstart"] += max(t["start"] - max(created, prev_end), 0.0)
        lines: list[tuple[float, str]] = [(a, b) for a, b in t["lines"]]
        building = next((a for a, b in lines if "stagefleet-worker: building target" in b), t["start"])
        stage_secs = sum(float(s.get("duration") or 0.0) for s in status["stages"] if s["group"] == gid)
        out["prepare"] += max(building - max(t["start"], prev_end), 0.0)
        out["stages"] += stage_secs
        out["(pull)"] += _spans(lines, "Trying to pull", "Storing signatures")
        out["(cache-push)"] += _spans(lines, "--> Pushing cache", "")
        out["push"] += t["end"] - building - stage_secs
        prev_end = t["end"]
    out["tail"] = run.seen_done - prev_end
    return out


class Stagefleet:
    def __init__(self, work: Path, registry: str, operator_args: Sequence[str] = ()) -> None:
        self.work = work
        self.operator_args = list(operator_args)
        self.registry = registry
        self.tracedir = work / "traces"
        self.tracedir.mkdir(parents=True)
        self.oplog = work / "operator.log"
        self.dev: Any = None
        self.op: subprocess.Popen[bytes] | None = None
        self.api: Any = None

    def start(self) -> None:
        from kubernetes import client, config

        from stagefleet.devcluster import DevCluster

        self.dev = DevCluster(self.work / "devcluster", nodes=2, pods_per_node=8)
        self.dev.start()
        config.load_kube_config(config_file=str(self.dev.kubeconfig))  # type: ignore[no-untyped-call]
        self.api = client.ApiClient()
        core: Any = client.CoreV1Api(self.api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        wrapper = shlex.join([sys.executable, str(Path(__file__).resolve()), "--trace-worker",
                              str(self.tracedir), "--", "stagefleet-worker"])
        argv = [sys.executable, "-m", "stagefleet.cli", "operator", "--kubeconfig", str(self.dev.kubeconfig),
                "--namespace", NAMESPACE, "--metrics-port", "0", "--insecure-registry", self.registry,
                "--worker-command", wrapper, "--log-format", "json", *self.operator_args]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        with self.oplog.open("ab") as out:
            self.op = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                       start_new_session=True)

    def stop(self) -> None:
        if self.op is not None and self.op.poll() is None:
            self.op.terminate()
            try:
                self.op.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.op.kill()
                self.op.wait()
        if self.dev is not None:
            self.dev.stop()

    def _started_pods(self) -> dict[str, float]:
        """Pod name → wall time of the operator's "started pod" log line."""
        found: dict[str, float] = {}
        for line in self.oplog.read_text(errors="replace").splitlines():
            if "started pod" not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            msg = str(rec.get("message") or rec.get("msg") or "")
            when = rec.get("timestamp") or rec.get("time") or rec.get("asctime")
            if not msg.startswith("started pod ") or not when:
                continue
            try:
                ts = datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
            found[msg.split()[2]] = ts
        return found

    def build(self, dockerfile: str, base: str, timeout: float = 600, *, output: str | None = None) -> Run:
        """Apply, wait for Succeeded, delete. ``output`` (default: a fresh repository per build, so the
        registry cache is cold) names the image; builds of one output share a cache repository."""
        from kubernetes import client, watch

        assert self.op is not None and self.op.poll() is None, "operator not running"
        custom: Any = client.CustomObjectsApi(self.api)
        name = f"mk-{uuid.uuid4().hex[:8]}"
        for f in self.tracedir.iterdir():
            f.unlink()
        body = {
            "apiVersion": "stagefleet.io/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name},
            "spec": {"source": {"inline": {"dockerfile": dockerfile}}, "target": "final",
                     "buildArgs": {"BASE": base}, "maxParallelPods": 8, "timeout": "10m",
                     "output": {"image": output or f"{self.registry}/bench/{name}:latest"}},
        }
        group = ("stagefleet.io", "v1alpha1", NAMESPACE, "imagebuilds")
        # Watched from the resourceVersion listed before the create, so no event is missed: the status write
        # that ends the build is seen as it happens (what `kubectl wait` sees), where a poll would add up to
        # its interval.
        version = custom.list_namespaced_custom_object(*group)["metadata"]["resourceVersion"]
        applied = time.time()
        t0 = time.monotonic()
        custom.create_namespaced_custom_object(*group, body)
        phase = None
        obj: dict[str, Any] = {}
        while phase not in ("Succeeded", "Failed", "Cancelled"):
            left = t0 + timeout - time.monotonic()
            if left <= 0 or self.op.poll() is not None:
                raise SystemExit(f"{name}: no end after {timeout}s (phase {phase}); see {self.oplog}")
            # (at most 5 s a watch, so that an operator gone is noticed; each goes on from the last version)
            events = watch.Watch().stream(custom.list_namespaced_custom_object, *group,
                                          field_selector=f"metadata.name={name}", resource_version=version,
                                          timeout_seconds=max(1, int(min(left, 5))))
            for event in events:
                if event["type"] == "ERROR":
                    raise SystemExit(f"{name}: the watch failed: {event['object']}")
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                phase = (obj.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed", "Cancelled") or self.op.poll() is not None:
                    break
        seconds = time.monotonic() - t0
        seen = time.time()
        if phase != "Succeeded":
            raise SystemExit(f"{name} {phase}: {obj['status'].get('message')}")
        time.sleep(0.3)  # let the wrappers write their trace files
        traces = [json.loads(f.read_text()) for f in self.tracedir.iterdir()]
        custom.delete_namespaced_custom_object("stagefleet.io", "v1alpha1", NAMESPACE, "imagebuilds", name)
        return Run(seconds, applied, seen, obj["status"], traces, self._started_pods())


@contextmanager
def stagefleet(work: Path, registry: str, operator_args: Sequence[str] = ()) -> Iterator[Stagefleet]:
    sf = Stagefleet(work, registry, operator_args)
    try:
        sf.start()
        yield sf
    finally:
        sf.stop()


# ------------------------------------------------------------------------------------------- main


def fmt(xs: Sequence[float]) -> str:
    spread = f" (min {min(xs):.2f}, max {max(xs):.2f})" if len(xs) > 1 else ""
    return f"{statistics.median(xs):6.2f} s{spread}"


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--trace-worker":
        return trace_worker(sys.argv[2], sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:])
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--shapes", default="seed5,seed10,wide,prep")
    p.add_argument("--reps-5", type=int, default=3, help="repetitions of seed5 (3)")
    p.add_argument("--reps-10", type=int, default=2, help="repetitions of seed10 (2)")
    p.add_argument("--reps-wide", type=int, default=2, help="repetitions of wide (2)")
    p.add_argument("--reps-prep", type=int, default=2, help="repetitions of prep (2)")
    p.add_argument("--workdir", help="keep logs/traces here instead of a temp dir")
    p.add_argument("--operator-args", default="",
                   help='extra `stagefleet operator` flags, e.g. "--no-early-start" (default: none)')
    args = p.parse_args()
    reps = {"seed5": args.reps_5, "seed10": args.reps_10, "wide": args.reps_wide, "prep": args.reps_prep}
    shapes = [s for s in args.shapes.split(",") if s]

    from stagefleet import buildenv
    from stagefleet.localregistry import LocalRegistry, ensure_base_image

    with tempfile.TemporaryDirectory(prefix="sf-makespan-") as tmpdir:
        work = Path(args.workdir) if args.workdir else Path(tmpdir)
        work.mkdir(parents=True, exist_ok=True)
        with LocalRegistry(work / "registry") as reg, stagefleet(
                work / "sf", reg.host, shlex.split(args.operator_args)) as sf, \
                buildkit_daemon(reg.host) as bk:
            base_root = work / "base-root"
            base_env = buildenv.prepare(base_root, insecure_registries=[reg.host])
            base = ensure_base_image(reg.host, base_env)
            buildenv.cleanup(base_root, base_env)
            print(f"machine: {os.cpu_count()} CPUs; registry {reg.host}; operator log {sf.oplog}; "
                  f"operator args {args.operator_args or '(none)'}", flush=True)
            for shape in shapes:
                dockerfile, stages, what = SHAPES[shape]
                seq: list[float] = []
                par: list[float] = []
                runs: list[Run] = []
                bks: list[float] = []
                bkps: list[float] = []  # build + push
                for i in range(reps[shape]):
                    # interleaved, so drift over the run hits every method alike
                    seq.append(buildah_once(dockerfile, base, reg.host, 1, work / f"{shape}-{i}-j1"))
                    par.append(buildah_once(dockerfile, base, reg.host, stages, work / f"{shape}-{i}-jn"))
                    if bk is not None:
                        bk.prune()  # cold: no build cache, no images (the base is pulled again)
                        ref = f"{reg.host}/bench-buildkit/{shape}:{i}"  # a fresh repository: cold
                        bks.append(bk.build(dockerfile, base, tag=ref))
                        bkps.append(bks[-1] + bk.push(ref))
                    runs.append(sf.build(dockerfile, base))
                    print(f"  {shape} #{i + 1}: buildah -j1 {seq[-1]:.2f} s, -j{stages} {par[-1]:.2f} s, "
                          + (f"BuildKit {bks[-1]:.2f} s (+ push {bkps[-1]:.2f} s), " if bks else "")
                          + f"stagefleet {runs[-1].seconds:.2f} s", flush=True)
                report(shape, what, stages, seq, par, runs, bks, bkps)
    return 0


def report(shape: str, what: str, jobs: int, seq: list[float], par: list[float], runs: list[Run],
           bks: list[float], bkps: list[float]) -> None:
    sf = [r.seconds for r in runs]
    cps = [critical_path(r.status) for r in runs]
    cp = [c[0] for c in cps]
    med_seq = statistics.median(seq)
    print(f"\n== {shape}: {what}; {len(runs)} repetition(s), medians")
    print(f"  buildah --jobs 1   {fmt(seq)}   1.00 × sequential")
    print(f"  buildah --jobs {jobs}   {fmt(par)}   {statistics.median(par) / med_seq:.2f} × sequential")
    if bks:
        print(f"  BuildKit (cold)    {fmt(bks)}   {statistics.median(bks) / med_seq:.2f} × sequential")
        print(f"  BuildKit + push    {fmt(bkps)}   {statistics.median(bkps) / med_seq:.2f} × sequential")
    print(f"  stagefleet         {fmt(sf)}   {statistics.median(sf) / med_seq:.2f} × sequential"
          + (f"; {statistics.median(sf) / statistics.median(bks):.2f} × BuildKit, "
             f"{statistics.median(sf) / statistics.median(bkps):.2f} × BuildKit + push" if bks else ""))
    print(f"  critical path      {fmt(cp)}   ({' → '.join(cps[0][1])}; stage durations from status)")
    over = [s - c for s, c in zip(sf, cp, strict=True)]
    print(f"  stagefleet overhead over the critical path: {fmt(over)}")
    print(f"  stagefleet overhead over the pure sleep chain ({IDEAL[shape]:.0f} s): "
          f"{fmt([s - IDEAL[shape] for s in sf])}")
    parts = [breakdown(r) for r in runs]
    keys = list(parts[0])
    print("  where the stagefleet time goes (median over repetitions, along the pod chain that ended last):")
    print("    " + "  ".join(f"{k} {statistics.median(p[k] for p in parts):.2f}" for k in keys))
    print("    (stages = stage durations on this chain, which include the (pull) of base/upstream images and"
          " the (cache-push) of layers; push = the group image push + worker exit)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
