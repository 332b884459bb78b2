"""`RUN --mount=type=cache` on fresh storage roots: a second build with and without `--mount-cache-repo`.

    .venv/bin/python bench/cache_mounts.py [--reps 3] [--sleep 3] [--mb 40]

The issue measures the examples/cache-mounts example on its second build; that example starts from
python:3.12-slim (Docker Hub), which cannot be pulled here. This bench uses an OFFLINE stand-in of the
same shape: the offline busybox base (stagefleet.localregistry.ensure_base_image) and one RUN with
`--mount=type=cache,id=downloads,target=/cache` that "downloads" (sleeps --sleep seconds, then writes
--mb MiB of random data into the mount) only when the mount lacks the file, then uses it (md5sum). A
`--build-arg ROUND=n` used in that RUN changes every build, so the layer cache never answers the step and
the RUN really executes on the second build, as a changed requirements file would make it.

Like bench/worker_cache.py it runs the real worker (`python -m stagefleet.worker.main`) against a
docker-registry it starts, each build in a fresh storage root and TMPDIR (a new pod), all with
`--cache-repo`. Per repetition, with a new mount-cache repository:

* cold: the first build, with `--mount-cache-repo` (downloads, then saves the mount);
* (a) second build with `--mount-cache-repo`: should restore the mount and skip the download;
* (b) second build without it: the mount starts empty and the download runs again.

(a) and (b) alternate in order between repetitions. Prints per-run seconds, whether the RUN found the
mount filled, the worker's "cache mount" stderr lines (restored / saved N bytes) with how long each took
(from the arrival time of the worker's previous output line; the worker stamps no times), the start →
"building target" time of (a) vs (b) (the restore sits in between), medians and the ratio (b)/(a).
No asserts on time: it is a bench.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from stagefleet import buildenv
from stagefleet.localregistry import LocalRegistry, ensure_base_image

# The marker is split in the command text ("SFB""ENCH") so that buildah's echo of the RUN line does not
# match it; only the shell's output does.
DOCKERFILE = """FROM {base} AS app
ARG ROUND=0
RUN --mount=type=cache,id=downloads,target=/cache echo "round $ROUND" > /round && \\
    if [ -f /cache/pkgs.bin ]; then echo "SFB""ENCH mount-hit"; else echo "SFB""ENCH mount-miss" && \\
    sleep {sleep} && dd if=/dev/urandom of=/cache/pkgs.bin bs=1M count={mb} 2>/dev/null; fi && \\
    md5sum /cache/pkgs.bin > /pkgs.md5
"""

_MOUNT_NOTE = re.compile(r"cache mount (\S+): (restored|saved) (\d+) bytes")


@dataclass
class Run:
    seconds: float
    result: dict[str, object]
    hit: bool | None  # the RUN found /cache/pkgs.bin (None: marker not seen)
    notes: list[tuple[str, int, float]] = field(default_factory=list)  # (restored|saved, bytes, seconds)
    to_build: float = 0.0  # worker start → its "building target" line
    stderr: str = ""

    def note(self, kind: str) -> tuple[int, float] | None:
        found = [(n, s) for k, n, s in self.notes if k == kind]
        return found[0] if found else None


def _read(stream, name: str, lines: list[tuple[float, str, str]]) -> None:
    for raw in stream:
        lines.append((time.monotonic(), name, raw.rstrip("\n")))


def run_worker(ctx: Path, registry: str, tag: str, tmp: Path, cache_repo: str, mount_repo: str | None,
               round_no: int) -> Run:
    tmp.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(tmp), "STAGEFLEET_INSECURE_REGISTRIES": registry}
    argv = [sys.executable, "-m", "stagefleet.worker.main", "--context", str(ctx), "--target", "app",
            "--build-arg", f"ROUND={round_no}", "--cache-repo", cache_repo,
            "--push", f"{registry}/bench/mounts-app:{tag}"]
    if mount_repo:
        argv += ["--mount-cache-repo", mount_repo]
    lines: list[tuple[float, str, str]] = []
    start = time.monotonic()
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        readers = [threading.Thread(target=_read, args=(s, n, lines), daemon=True)
                   for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        rc = proc.wait()
    elapsed = time.monotonic() - start
    lines.sort(key=lambda x: x[0])
    stderr = "\n".join(t for _, n, t in lines if n == "err")
    stdout = [t for _, n, t in lines if n == "out"]
    if rc != 0:
        raise SystemExit(f"worker failed ({rc}):\n{stderr}\n" + "\n".join(stdout[-40:]))
    result: dict[str, object] = json.loads(stdout[-1])
    hit = None
    for t in stdout:
        if "SFBENCH mount-hit" in t:
            hit = True
        elif "SFBENCH mount-miss" in t:
            hit = False
    run = Run(elapsed, result, hit, stderr=stderr)
    previous = start
    for at, name, text in lines:
        m = _MOUNT_NOTE.search(text) if name == "err" else None
        if m:
            run.notes.append((m.group(2), int(m.group(3)), at - previous))
        if name == "err" and "building target" in text and not run.to_build:
            run.to_build = at - start
        previous = at
    return run


def _describe(label: str, run: Run) -> str:
    hit = {True: "mount filled", False: "mount EMPTY (downloaded)", None: "marker not seen"}[run.hit]
    parts = [f"{label} {run.seconds:6.2f}s  {hit}; start->build {run.to_build:.2f}s; "
             f"{run.result['cachedSteps']}/{run.result['steps']} steps cached"]
    for kind, size, secs in run.notes:
        parts.append(f"{kind} {size / 1e6:.1f} MB in {secs:.2f}s")
    return "; ".join(parts)


def _mid(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f}s ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=3.0, help="seconds the simulated download sleeps")
    parser.add_argument("--mb", type=int, default=40,
                        help="MiB of random data the download writes (incompressible)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load at start (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmpdir, LocalRegistry() as reg:
        tmp = Path(tmpdir)
        base_root = tmp / "base-root"
        base_env = buildenv.prepare(base_root, insecure_registries=[reg.host])
        base = ensure_base_image(reg.host, base_env)
        buildenv.cleanup(base_root, base_env)
        ctx = tmp / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base, sleep=args.sleep, mb=args.mb))
        cold: list[Run] = []
        with_repo: list[Run] = []
        without: list[Run] = []
        odd: list[str] = []
        for n in range(args.reps):
            salt = secrets.token_hex(4)
            cache_repo = f"{reg.host}/bench/mounts-layers-{salt}"
            mount_repo = f"{reg.host}/bench/mounts-{salt}"
            c = run_worker(ctx, reg.host, f"{salt}-1", tmp / f"r{n}-cold", cache_repo, mount_repo, 1)
            print(_describe(f"rep {n + 1} cold      ", c), flush=True)
            order = [("a", True), ("b", False)] if n % 2 == 0 else [("b", False), ("a", True)]
            for label, use in order:
                r = run_worker(ctx, reg.host, f"{salt}-{label}", tmp / f"r{n}-{label}", cache_repo,
                               mount_repo if use else None, 2 if use else 3)
                name = "(a) --mount-cache-repo" if use else "(b) without         "
                print(_describe(f"rep {n + 1} {name}", r), flush=True)
                (with_repo if use else without).append(r)
                if use and (r.hit is not True or r.note("restored") is None):
                    odd.append(f"rep {n + 1} (a) did not restore / find the mount; worker stderr:\n"
                               f"{r.stderr}")
            if c.note("saved") is None:
                odd.append(f"rep {n + 1} cold build saved no cache mount; worker stderr:\n{c.stderr}")
            cold.append(c)
        a = [r.seconds for r in with_repo]
        b = [r.seconds for r in without]
        print()
        print(f"cold (first build, saves the mount)   median {_mid([r.seconds for r in cold])}")
        print(f"(a) second build, --mount-cache-repo  median {_mid(a)}")
        print(f"(b) second build, without             median {_mid(b)}")
        ratio = statistics.median(b) / statistics.median(a)
        print(f"(b)/(a) = {ratio:.2f}   (b)-(a) = {statistics.median(b) - statistics.median(a):.2f}s")
        saves = [c.note("saved") for c in cold]
        restores = [r.note("restored") for r in with_repo]
        saved = [s for s in saves if s]
        restored = [s for s in restores if s]
        if saved:
            print(f"save (cold build): {_mid([s for _, s in saved])}, pushed "
                  f"{statistics.median([n for n, _ in saved]) / 1e6:.1f} MB (gzip layer) per save")
        if restored:
            print(f"restore ((a)): {_mid([s for _, s in restored])}, "
                  f"{statistics.median([n for n, _ in restored]) / 1e6:.1f} MB downloaded")
        print(f"start -> 'building target': (a) {_mid([r.to_build for r in with_repo])}, "
              f"(b) {_mid([r.to_build for r in without])}")
        resaved = sum(1 for r in with_repo if r.note("saved"))
        print(f"(a) runs that saved the mount again: {resaved}/{len(with_repo)} "
              "(unchanged content: expected 0)")
        end = os.getloadavg()
        print(f"load at end (1/5/15 min): {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
        for o in odd:
            print("ODD: " + o)
    return 0


if __name__ == "__main__":
    sys.exit(main())
