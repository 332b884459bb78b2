"""Rebuilds: stagefleet's stage reuse vs a fresh builder with the registry cache (a new pod or CI runner).

    .venv/bin/python bench/rebuild.py [--reps 2] [--sleep 5]

The seed shape (two branches, each `RUN sleep S`, a final copying from both), built cold once, then
rebuilt three ways, each repetition in this order:
  (a) unchanged        the same Dockerfile and base
  (b) one branch       build1's RUN changed (its text), build2 and the base unchanged
  (c) base changed     a new digest under the base image's tag (same content, another manifest)
Two builders, interleaved:
  stagefleet   an ImageBuild on the dev cluster (bench/makespan.py's harness: real operator, one real worker
               pod per plan group, a local docker-registry), every build with the same output repository,
               so they share one cache repository: timed from the API create to the watch event that
               shows Succeeded; "pods" counts the worker pods the build started.
  buildah      `buildah build --layers --cache-from R --cache-to R --jobs 3` in a fresh storage root, the
               registry cache R shared by its builds (what a fresh CI runner has); it pushes nothing else.
  BuildKit     `docker build` on a private dockerd the bench starts (bench/buildkit.py, Debian's docker.io):
               pruned before each repetition's cold build, then warm (its local cache kept) for the three
               rebuilds — a long-lived BuildKit daemon. Its build is timed alone, and with the `docker
               push` of its output to the local registry after it ("BuildKit + push": stagefleet's time
               includes writing the output tag). Skipped, with the reason, when docker.io is not installed.
Prints a table per scenario: median seconds (min, max) and the ratios stagefleet / buildah,
stagefleet / BuildKit and stagefleet / BuildKit + push.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from buildkit import buildkit_daemon  # noqa: E402
from makespan import SEED, buildah_once, stagefleet  # noqa: E402

SCENARIOS = ("cold", "unchanged", "one branch", "base changed")


def variant(sleep: int, branch_text: str) -> str:
    return SEED.format(s=sleep).replace("echo one", f"echo {branch_text}")


def retag_base(registry_url: str, base: str, tag: str, note: str | None) -> str:
    """The base's manifest under ``tag`` of its repository (with ``note``: as an annotation, so another
    digest for the same content — a base rebuilt under its tag). The reference."""
    host_repo, _, src = base.rpartition(":")
    host, _, repo = host_repo.partition("/")
    accept = ("application/vnd.oci.image.manifest.v1+json, "
              "application/vnd.docker.distribution.manifest.v2+json")
    req = urllib.request.Request(f"{registry_url}/v2/{repo}/manifests/{src}", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body, media = resp.read(), resp.headers["Content-Type"]
    if note is not None:
        doc = json.loads(body)
        doc["annotations"] = {**doc.get("annotations", {}), "bench.stagefleet.io/note": note}
        body = json.dumps(doc).encode()
    put = urllib.request.Request(f"{registry_url}/v2/{repo}/manifests/{tag}", data=body, method="PUT",
                                 headers={"Content-Type": media})
    with urllib.request.urlopen(put, timeout=30):
        pass
    return f"{host}/{repo}:{tag}"


def buildah_cached(dockerfile: str, base: str, registry: str, cache: str, work: Path) -> float:
    """A fresh builder with the registry layer cache: `buildah build --layers --cache-from/--cache-to`."""
    return buildah_once(dockerfile, base, registry, 3, work,
                        ["--layers", "--cache-from", cache, "--cache-to", cache])


def fmt(xs: list[float]) -> str:
    spread = f" ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else ""
    return f"{statistics.median(xs):6.2f} s{spread}"


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--reps", type=int, default=2, help="repetitions of the whole sequence (2)")
    p.add_argument("--sleep", type=int, default=5, help="seconds each branch's RUN sleeps (5)")
    p.add_argument("--workdir", help="keep logs here instead of a temp dir")
    args = p.parse_args()

    from stagefleet import buildenv
    from stagefleet.localregistry import LocalRegistry, ensure_base_image

    sf_times: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    sf_pods: dict[str, list[int]] = {s: [] for s in SCENARIOS}
    bh_times: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    bk_times: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    bkp_times: dict[str, list[float]] = {s: [] for s in SCENARIOS}  # build + push
    with tempfile.TemporaryDirectory(prefix="sf-rebuild-") as tmpdir:
        work = Path(args.workdir) if args.workdir else Path(tmpdir)
        work.mkdir(parents=True, exist_ok=True)
        with LocalRegistry(work / "registry") as reg, stagefleet(work / "sf", reg.host) as sf, \
                buildkit_daemon(reg.host) as bk:
            base_root = work / "base-root"
            base_env = buildenv.prepare(base_root, insecure_registries=[reg.host])
            base = ensure_base_image(reg.host, base_env)
            buildenv.cleanup(base_root, base_env)
            print(f"registry {reg.host}; operator log {sf.oplog}", flush=True)
            for rep in range(args.reps):
                tag = f"rebuild-{rep}"
                out = f"{reg.host}/bench/rebuild-{rep}:latest"
                cache = f"{reg.host}/bench/rebuild-{rep}/buildah-cache"
                steps = [
                    ("cold", variant(args.sleep, "one"), None),
                    ("unchanged", variant(args.sleep, "one"), None),
                    ("one branch", variant(args.sleep, "one-changed"), None),
                    ("base changed", variant(args.sleep, "one-changed"), "rebuilt"),
                ]
                ref = base
                for scenario, dockerfile, note in steps:
                    if scenario in ("cold", "base changed"):
                        ref = retag_base(reg.url, base, tag, note)
                    seconds = buildah_cached(dockerfile, ref, reg.host, cache, work / f"bh-{rep}-{scenario}")
                    bh_times[scenario].append(seconds)
                    if bk is not None:
                        if scenario == "cold":
                            bk.prune()
                        bk_out = f"{reg.host}/bench/rebuild-bk-{rep}:latest"
                        bk_times[scenario].append(bk.build(dockerfile, ref, tag=bk_out))
                        bkp_times[scenario].append(bk_times[scenario][-1] + bk.push(bk_out))
                    run = sf.build(dockerfile, ref, output=out)
                    sf_times[scenario].append(run.seconds)
                    sf_pods[scenario].append(len(run.traces))
                    print(f"  #{rep + 1} {scenario:13s} stagefleet {run.seconds:6.2f} s, "
                          f"{len(run.traces)} pod(s); buildah+registry cache {seconds:6.2f} s"
                          + (f"; BuildKit {bk_times[scenario][-1]:6.2f} s (+ push "
                             f"{bkp_times[scenario][-1]:6.2f} s)" if bk is not None else ""),
                          flush=True)
    print(f"\nrebuild, seed shape with `sleep {args.sleep}` branches, {args.reps} repetition(s), medians:")
    print("| scenario | stagefleet | worker pods | fresh buildah + registry cache | stagefleet / buildah "
          "| BuildKit (warm daemon) | stagefleet / BuildKit | BuildKit + push "
          "| stagefleet / BuildKit + push |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in SCENARIOS:
        sf_med = statistics.median(sf_times[s])
        bk_cols = (f"{fmt(bk_times[s])} | {sf_med / statistics.median(bk_times[s]):.2f} | "
                   f"{fmt(bkp_times[s])} | {sf_med / statistics.median(bkp_times[s]):.2f}" if bk_times[s]
                   else "not measured | - | not measured | -")
        print(f"| {s} | {fmt(sf_times[s])} | {statistics.median(sf_pods[s]):.0f} | {fmt(bh_times[s])} | "
              f"{sf_med / statistics.median(bh_times[s]):.2f} | {bk_cols} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
