"""Local mode (`stagefleet build`) with and without early start, interleaved.

    .venv/bin/python bench/local_mode.py [--reps 4] [--shapes wide,seed5]

Each repetition builds the shape twice, in turn: `stagefleet build --parallel N` (early start, the
default: with a worker to spare, the next wave starts while its upstreams build and waits for their
result tags) and the same with `--no-early-start`. Every build is a whole `stagefleet build` process with
its own throwaway registry (started and stopped inside the timing, the same for both), real workers
(buildah) in fresh storage roots, the base image pushed offline. Shapes as in bench/makespan.py. Prints
the median wall time (min, max) of each and the ratio early / not early, pair by pair.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from makespan import SHAPES, fmt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGEFLEET = str(ROOT / ".venv" / "bin" / "stagefleet")


def build_once(context: Path, jobs: int, early: bool) -> float:
    argv = [STAGEFLEET, "build", str(context), "--build-arg", "BASE={registry}/base/busybox:1",
            "--parallel", str(jobs), "--progress", "plain"]
    if not early:
        argv.append("--no-early-start")
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"stagefleet build failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr}")
    return took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--shapes", default="wide,seed5")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="stagefleet-bench-local-") as tmp:
        for shape in args.shapes.split(","):
            dockerfile, jobs, what = SHAPES[shape]
            context = Path(tmp) / shape
            context.mkdir()
            (context / "Dockerfile").write_text(dockerfile)
            build_once(context, jobs, True)  # warm-up: page cache, Python, the base image's layers
            early: list[float] = []
            plain: list[float] = []
            for _ in range(args.reps):
                early.append(build_once(context, jobs, True))
                plain.append(build_once(context, jobs, False))
            ratios = [a / b for a, b in zip(early, plain, strict=True)]
            print(f"{shape}: {what}, --parallel {jobs}, {args.reps} pairs")
            print(f"  early start (default)  {fmt(early)}")
            print(f"  --no-early-start       {fmt(plain)}")
            print(f"  early / not early      {statistics.median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
