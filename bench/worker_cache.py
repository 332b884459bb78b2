"""Cold build vs warm rebuild from the registry cache, each in a fresh storage root (a fresh pod).

    .venv/bin/python bench/worker_cache.py [--rounds 3]

Starts its own docker-registry, pushes the offline busybox base, then per round: a cold worker run
with a new cache repository, and a warm run of the same Dockerfile in another fresh root that should
take every step from that repository. Prints both medians and warm/cold (target: ≤ 25%).

The warm build has a floor of roughly 1 s here (process start, base image pull, one cache lookup and
layer pull per step; the final push is skipped because the tag already serves the very image), so the
ratio depends on how much work the cold steps do (--loop) and, a lot, on the machine's load: the warm
run is a chain of short processes, registry requests and fsyncs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stagefleet import buildenv
from stagefleet.localregistry import LocalRegistry, ensure_base_image

# Each RUN does real work (a shell loop, files of random data) so that the cold build costs what
# builds cost: executing steps. The warm build only downloads the resulting layers.
DOCKERFILE = """FROM {base} AS app
ENV SALT={salt}
RUN i=0; while [ $i -lt {loop} ]; do i=$((i+1)); done; echo $i > /loop1
RUN dd if=/dev/urandom of=/blob1 bs=1024 count=2048 2>/dev/null && sha256sum /blob1 > /blob1.sha
RUN i=0; while [ $i -lt {loop} ]; do i=$((i+1)); done; echo $i > /loop2
COPY data.txt /data.txt
RUN i=0; while [ $i -lt {loop} ]; do i=$((i+1)); done; wc -c /data.txt /blob1 > /summary
RUN sleep 1 && echo done > /done
"""


def run_worker(ctx: Path, registry: str, salt: str, tmp: Path) -> tuple[float, dict[str, object]]:
    tmp.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(tmp), "STAGEFLEET_INSECURE_REGISTRIES": registry}
    argv = [sys.executable, "-m", "stagefleet.worker.main", "--context", str(ctx), "--target", "app",
            "--cache-repo", f"{registry}/bench/cache-{salt}", "--push", f"{registry}/bench/app:{salt}"]
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout[-3000:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return elapsed, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", type=int, default=150000,
                        help="shell-loop iterations per busy RUN step: the work a cold build does")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmpdir, LocalRegistry() as reg:
        tmp = Path(tmpdir)
        base_root = tmp / "base-root"
        base_env = buildenv.prepare(base_root, insecure_registries=[reg.host])
        base = ensure_base_image(reg.host, base_env)
        buildenv.cleanup(base_root, base_env)
        cold: list[float] = []
        warm: list[float] = []
        for n in range(args.rounds):
            salt = secrets.token_hex(4)
            ctx = tmp / f"ctx{n}"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base, salt=salt, loop=args.loop))
            (ctx / "data.txt").write_text("stagefleet\n" * 1000)
            c, cres = run_worker(ctx, reg.host, salt, tmp / f"cold{n}")
            w, wres = run_worker(ctx, reg.host, salt, tmp / f"warm{n}")
            if wres["cachedSteps"] != wres["steps"]:
                raise SystemExit(f"warm run took only {wres['cachedSteps']}/{wres['steps']} steps from cache")
            cold.append(c)
            warm.append(w)
            print(f"round {n + 1}: cold {c:.2f}s ({cres['cachedSteps']}/{cres['steps']} cached), "
                  f"warm {w:.2f}s ({wres['cachedSteps']}/{wres['steps']} cached)", flush=True)
        mc, mw = statistics.median(cold), statistics.median(warm)
        ratio = mw / mc
        print(f"cold median {mc:.2f}s  warm median {mw:.2f}s  warm/cold {ratio:.0%} "
              f"(target <= 25%: {'met' if ratio <= 0.25 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
