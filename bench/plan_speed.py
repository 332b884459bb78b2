"""Parse+plan time for Dockerfiles of 10, 100 and 1,000 stages (about 10 instructions each).

Prints the median of several runs, split into BuildKit's Go parser (the `dockerfile` package) and our
own code (stage resolution + planning), and the growth ratio between sizes (10x more stages should
cost about 10x the time when everything is linear). Target: 1,000 stages in under 250 ms.

    .venv/bin/python bench/plan_speed.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import dockerfile

from stagefleet.plan import make_plan
from stagefleet.stages import parse_stage_graph

SIZES = (10, 100, 1000)


def make_dockerfile(stages: int) -> str:
    """A DAG: each stage builds FROM the previous one or an image, and copies from a few earlier ones."""
    lines = ["# syntax=docker/dockerfile:1", "ARG BASE=alpine:3.19"]
    for i in range(stages):
        base = f"s{i - 1}" if i % 3 else "${BASE}"
        lines += [
            f"FROM {base} AS s{i}",
            f"ARG V{i}=1",
            f"ENV STAGE={i}",
            "WORKDIR /src",
            f"COPY --from=s{i // 2} /out /in/{i}" if i else "COPY . /src",
            f"RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=tok{i % 4} make {i}",
            f"RUN --mount=type=bind,from=s{i // 3},target=/dep true" if i else "RUN true",
            "COPY --from=busybox:1.36 /bin/busybox /bin/",
            f"LABEL stage={i}",
            f'CMD ["/out/{i}"]',
        ]
    return "\n".join(lines) + "\n"


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for n in SIZES:
        text = make_dockerfile(n)
        go = median_ms(lambda text=text: dockerfile.parse_string(text), args.repeat)
        total = median_ms(lambda text=text: make_plan(parse_stage_graph(text)), args.repeat)
        groups = len(make_plan(parse_stage_graph(text)).groups)
        rows.append((n, text.count("\n"), groups, go, total))
    header = ("stages", 7), ("lines", 6), ("groups", 6), ("go parser ms", 13), ("ours ms", 8), ("total ms", 9)
    print(" ".join(f"{title:>{width}}" for title, width in header), f"{'growth':>7}")
    prev = None
    for n, lines, groups, go, total in rows:
        growth = f"{total / prev:.1f}x" if prev else "-"
        print(f"{n:>7} {lines:>6} {groups:>6} {go:>13.2f} {total - go:>8.2f} {total:>9.2f} {growth:>7}")
        prev = total
    last = rows[-1][4]
    verdict = "OK" if last < 250 else "OVER"
    print(f"1000 stages: {last:.1f} ms (target < 250 ms: {verdict}); growth per 10x stages should be ~10x")


if __name__ == "__main__":
    main()
