"""Parse+plan time for Dockerfiles of 10, 100 and 1,000 stages (about 10 instructions each).

Prints the median (and best) wall time of several runs, split into BuildKit's Go parser (the
`dockerfile` package) and our own code (stage resolution + planning), and the growth ratio between
sizes (10x the stages should cost about 10x the time when everything is linear).
Target: 1,000 stages in under 250 ms.

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


def timings_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and best of `repeat` runs; the best is the least disturbed by other load on the host."""
    fn()  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for n in SIZES:
        text = make_dockerfile(n)
        go, go_best = timings_ms(lambda text=text: dockerfile.parse_string(text), args.repeat)
        total, best = timings_ms(lambda text=text: make_plan(parse_stage_graph(text)), args.repeat)
        groups = len(make_plan(parse_stage_graph(text)).groups)
        rows.append((n, text.count("\n"), groups, go, total, best))
    header = ("stages", 7), ("lines", 6), ("groups", 6), ("go parser", 10), ("ours", 7), ("total", 7)
    print(" ".join(f"{title:>{width}}" for title, width in header), "  best  growth   (median ms)")
    prev = None
    for n, lines, groups, go, total, best in rows:
        growth = f"{total / prev:.1f}x" if prev else "-"
        cells = f"{n:>7} {lines:>6} {groups:>6} {go:>10.2f} {total - go:>7.2f} {total:>7.2f}"
        print(f"{cells} {best:>7.2f} {growth:>6}")
        prev = total
    last, last_best = rows[-1][4], rows[-1][5]
    verdict = "OK" if last < 250 else "OVER"
    print(f"1000 stages: median {last:.1f} ms, best {last_best:.1f} ms (target < 250 ms: {verdict}); "
          "10x the stages should cost ~10x")


if __name__ == "__main__":
    main()
