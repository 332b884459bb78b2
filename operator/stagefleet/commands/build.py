"""`stagefleet build`: the build farm on one machine — the same plan and worker, no cluster needed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from stagefleet import local
from stagefleet.buildstate import retries

if TYPE_CHECKING:
    from stagefleet.local import reuse as localreuse
    from stagefleet.stages import StageGraph

PROGRESS_MODES = ("auto", "plain", "json")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "build", help="build an image locally: one worker process per plan group, groups in parallel",
        description="Plan the Dockerfile's stage graph and run each group as a local stagefleet-worker "
                    "process with its own fresh storage root; results pass through a registry by digest. "
                    "Unchanged stages are not built again: every stage gets a content key, and a group whose "
                    "result is stored under its key in the cache repository runs no worker. "
                    "In --build-arg, --tag and --cache-repo values, {registry} stands for the registry used.")
    p.add_argument("context", nargs="?", default=".", help="build context directory (default: .)")
    p.add_argument("-f", "--file", dest="dockerfile", help="Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("--target", help="stage to build (default: the last one)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    p.add_argument("--secret", action="append", default=[], metavar="id=ID,src=FILE")
    p.add_argument("--ssh", action="append", default=[], metavar="ID=KEYFILE")
    p.add_argument("--tag", "-t", action="append", default=[], metavar="REF",
                   help="where to push the image (repeatable; default {registry}/stagefleet/local:BUILD-ID)")
    p.add_argument("--registry", metavar="HOST:PORT",
                   help="registry for stage results (default: a throwaway local registry)")
    p.add_argument("--cache-repo", metavar="REF",
                   help="layer cache repository (--cache-from/--cache-to); results are also stored there "
                        "under their stage keys (default: the first tag's repository + /cache, unless the "
                        "registry is a throwaway one)")
    p.add_argument("--no-cache", action="store_true",
                   help="build every step: no layer cache, no stored stage results (the fresh ones are "
                        "stored)")
    p.add_argument("--no-reuse", action="store_true",
                   help="build every group even when its result is stored (the layer cache is still used)")
    p.add_argument("--platform", metavar="OS/ARCH[,OS/ARCH...]",
                   help="target platform (default: this machine's, e.g. linux/amd64); several, comma-"
                        "separated: one build each, pushed as TAG-linux-ARCH, and an OCI image index of "
                        "them under every tag (other architectures run under binfmt_misc emulation)")
    p.add_argument("--parallel", type=int, default=max(os.cpu_count() or 1, 1), metavar="N",
                   help="at most N workers at once (default: CPUs)")
    p.add_argument("--retries", type=int, default=retries.DEFAULT_RETRIES, metavar="N",
                   help="retry a group up to N more times when its worker fails through no fault of the "
                        f"build (a push or pull, say; a failing step is never retried; default: "
                        f"{retries.DEFAULT_RETRIES})")
    p.add_argument("--no-early-start", dest="early_start", action="store_false",
                   help="start a group only once its upstream groups finished (by default, with workers to "
                        "spare, the next wave starts early and waits for their results)")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="auto (live on a terminal, else plain), plain, or json (one event per line)")
    p.add_argument("--keep-registry", action="store_true",
                   help="leave the throwaway registry running after the build (prints how to stop it)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def worker_command(explicit: str | None = None) -> tuple[str, ...]:
    """The worker to run: an explicit one, the one on PATH, the one next to this Python (a venv that is
    not activated), or this Python running the worker module."""
    if explicit:
        return (explicit,)
    found = shutil.which("stagefleet-worker")
    if found:
        return (found,)
    beside = Path(sys.executable).parent / "stagefleet-worker"
    if beside.is_file() and os.access(beside, os.X_OK):
        return (str(beside),)
    return (sys.executable, "-c", "import sys; from stagefleet.worker.main import main; sys.exit(main())")


def _expand(value: str, registry: str) -> str:
    return value.replace("{registry}", registry)


@contextlib.contextmanager
def throwaway_registry(keep: bool, notice: TextIO) -> Iterator[tuple[str, str]]:
    """A local registry plus the offline busybox base image in it; yields (host, base image ref)."""
    from stagefleet import localregistry

    reg = localregistry.LocalRegistry()
    reg.start()
    try:
        base = push_base_image(reg.host)
        what = "left running" if keep else "stopped when the build ends; --keep-registry keeps it"
        notice.write(f"throwaway registry at {reg.host} (data {reg.data_dir}; {what}); "
                     f"base image {base}\n")
        notice.flush()
        yield reg.host, base
    finally:
        if keep:
            notice.write(f"registry {reg.host} still running: stop it with `kill {reg.pid}`\n")
        else:
            reg.stop()


def push_base_image(registry: str) -> str:
    """Build the offline busybox base image in a scratch storage root and push it to `registry`."""
    from stagefleet import buildenv, localregistry

    root = Path(tempfile.mkdtemp(prefix="stagefleet-base-"))
    try:
        env = buildenv.prepare(root, insecure_registries=local.insecure_hosts([registry]))
        try:
            return localregistry.ensure_base_image(registry, env)
        finally:
            buildenv.cleanup(root, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from stagefleet.imageindex import PLATFORM_RE

    context = Path(args.context)
    if not context.is_dir():
        print(f"error: build context {context} is not a directory", file=sys.stderr)
        return 2
    dockerfile = Path(args.dockerfile) if args.dockerfile else context / "Dockerfile"
    try:
        text = dockerfile.read_text()
    except OSError as e:
        print(f"error: cannot read the Dockerfile {dockerfile}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        build_args = dict(local.parse_kv(a, "--build-arg") for a in args.build_arg)
        secrets = dict(local.parse_secret(s) for s in args.secret)
        ssh = dict(local.parse_kv(s, "--ssh") for s in args.ssh)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for sid, src in [*secrets.items(), *ssh.items()]:
        if not Path(src).is_file():
            print(f"error: file {src} for secret/ssh id {sid!r} does not exist", file=sys.stderr)
            return 2
    if args.parallel < 1:
        print("error: --parallel must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= args.retries <= retries.MAX_RETRIES:
        print(f"error: --retries must be between 0 and {retries.MAX_RETRIES}", file=sys.stderr)
        return 2
    platforms = [p.strip() for p in (args.platform or "").split(",") if p.strip()]
    for p in platforms:
        if not PLATFORM_RE.match(p) or platforms.count(p) > 1:
            why = "is named twice" if platforms.count(p) > 1 else "is not a platform (e.g. linux/arm64)"
            print(f"error: --platform: {p!r} {why}", file=sys.stderr)
            return 2

    mode = args.progress
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "plain"
    notice = sys.stderr if mode == "json" else sys.stdout

    with contextlib.ExitStack() as stack:
        if args.registry:
            registry = args.registry
        else:
            try:
                registry, _base = stack.enter_context(throwaway_registry(args.keep_registry, notice))
            except Exception as e:  # registry or base image: tell the user what to install
                print(f"error: cannot start a throwaway registry: {e}", file=sys.stderr)
                return 1
        build_args = {k: _expand(v, registry) for k, v in build_args.items()}
        tags = tuple(_expand(t, registry) for t in args.tag)
        if len(platforms) <= 1:
            rc, _ = _build_platform(args, text, dockerfile, context, registry, build_args, secrets, ssh,
                                    platforms[0] if platforms else None, tags, mode)
            return rc
        return _build_platforms(args, text, dockerfile, context, registry, build_args, secrets, ssh,
                                platforms, tags, mode)
    return 0  # pragma: no cover - the with block always returns


def _build_platform(args: argparse.Namespace, text: str, dockerfile: Path, context: Path, registry: str,
                    build_args: dict[str, str], secrets: dict[str, str], ssh: dict[str, str],
                    platform: str | None, tags: tuple[str, ...], mode: str) -> tuple[int, str | None]:
    """Plan and build for one platform (None: this machine's) into ``tags`` (none: a throwaway tag):
    (exit code, the image's digest)."""
    from stagefleet.local import reuse as localreuse
    from stagefleet.plan import make_plan
    from stagefleet.stages import DockerfileError, parse_stage_graph

    try:
        graph = parse_stage_graph(text, filename=str(dockerfile), target=args.target,
                                  build_args=build_args, platform=platform)
        plan = make_plan(graph)
    except DockerfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1, None
    build_id = local.new_build_id()
    tags = tags or (local.default_tag(registry, build_id),)
    outlives = bool(args.registry) or args.keep_registry or local.ref_host(tags[0]) != registry
    cache_repo = localreuse.cache_repository(
        _expand(args.cache_repo, registry) if args.cache_repo else None, tags, outlives_build=outlives)
    bases = [s.base for s in graph.built if s.base] + [i for s in graph.built for i in s.images]
    settings = local.BuildSettings(
        context=context, dockerfile=dockerfile, registry=registry, build_id=build_id, tags=tags,
        target=graph.target, build_args=build_args, secrets=secrets, ssh=ssh, cache_repo=cache_repo,
        insecure=tuple(local.insecure_hosts([registry, *tags, cache_repo, *bases])),
        parallel=args.parallel, worker=worker_command(args.worker), platform=platform,
        no_cache=args.no_cache, retries=args.retries, early_start=args.early_start)
    prepared = _prepare_reuse(args, graph, plan, settings)
    settings = dataclasses.replace(settings, keys=prepared.keys, pins=prepared.pins)
    mask = local.Masker.from_files([*secrets.values(), *ssh.values()])

    start = time.time()
    progress: local.Progress
    if mode == "json":
        progress = local.JsonProgress(sys.stdout)
    elif mode == "rich":
        progress = local.RichProgress(plan, start)
    else:
        progress = local.PlainProgress(sys.stdout, start)
    try:
        result = asyncio.run(_run_stoppable(local.run_plan(
            plan, settings, progress.handle, mask, stored=prepared.stored, notes=prepared.notes)))
    except asyncio.CancelledError:
        print("error: build stopped by a signal; workers stopped", file=sys.stderr)
        return 143, None
    finally:
        progress.close()
    if mode != "json":
        _print_summary(result.summary, rich=mode == "rich")
        if result.ok:
            for tag in tags:
                print(f"image: {tag}@{result.digest}")
    if not result.ok:
        print(f"error: {result.message}", file=sys.stderr)
        return result.exit_code or 1, None
    return 0, result.digest


def _build_platforms(args: argparse.Namespace, text: str, dockerfile: Path, context: Path, registry: str,
                     build_args: dict[str, str], secrets: dict[str, str], ssh: dict[str, str],
                     platforms: list[str], tags: tuple[str, ...], mode: str) -> int:
    """One build per platform, each pushed under TAG-linux-ARCH, then one OCI index of them under every
    tag (`imageindex`), as the operator does for spec.platforms."""
    from stagefleet import registryclient
    from stagefleet.imageindex import platform_tag, write_index
    from stagefleet.local import reuse as localreuse

    tags = tags or (local.default_tag(registry, local.new_build_id()),)
    repository = local.repository_of(tags[0])
    host = local.ref_host(tags[0])
    if host is None or any(local.repository_of(t) != repository for t in tags):
        print("error: with several --platform values, every --tag must name the same repository of a "
              "registry (the index lists images stored there)", file=sys.stderr)
        return 2
    built: list[tuple[str, str]] = []
    for platform in platforms:
        tag = tags[0].rpartition(":")[2] if ":" in tags[0].rsplit("/", 1)[-1] else "latest"
        ref = f"{repository}:{platform_tag(tag, platform)}"
        print(f"== {platform} -> {ref}", file=sys.stderr if mode == "json" else sys.stdout)
        rc, digest = _build_platform(args, text, dockerfile, context, registry, build_args, secrets, ssh,
                                     platform, (ref,), mode)
        if rc or digest is None:
            print(f"error: the {platform} build failed", file=sys.stderr)
            return rc or 1
        built.append((platform, digest))
    client = localreuse.clients(local.insecure_hosts([registry, *tags]))(host)
    path = repository[len(host) + 1:]
    try:
        index = write_index(client, path, [t.rpartition(":")[2] for t in tags], built)
    except registryclient.RegistryError as e:
        print(f"error: writing the image index to {repository} failed: {e}", file=sys.stderr)
        return 1
    if mode != "json":
        for t in tags:
            print(f"image: {t}@{index} (index of {', '.join(p for p, _ in built)})")
    return 0


def _prepare_reuse(args: argparse.Namespace, graph: StageGraph, plan: local.PlanLike,
                   settings: local.BuildSettings) -> localreuse.Prepared:
    """Stage keys for the workers, and the results stored already (none with --no-cache/--no-reuse);
    nothing without a cache repository to keep them in."""
    from stagefleet.local import reuse as localreuse
    from stagefleet.reuse import machine_arch

    if settings.cache_repo is None:
        return localreuse.Prepared()
    return localreuse.prepare(
        graph, plan, context=settings.context, platform=settings.platform or f"linux/{machine_arch()}",
        cache_repo=settings.cache_repo, tags=settings.tags, client_for=localreuse.clients(settings.insecure),
        find=not (args.no_cache or args.no_reuse), dockerfile=settings.dockerfile)


async def _run_stoppable(coro: Coroutine[Any, Any, local.BuildResult]) -> local.BuildResult:
    """Run the build so that SIGTERM/SIGHUP (like Ctrl-C) stop the workers instead of orphaning them."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await coro
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _print_summary(summary: local.Summary, *, rich: bool) -> None:
    if not rich:
        print()
        for line in local.format_summary(summary):
            print(line)
        return
    from rich.console import Console
    from rich.table import Table

    header, cells = local.summary_table(summary)
    table = Table(*header, box=None, header_style="bold")
    for row in cells:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for line in local.summary_footer(summary):
        console.print(line, highlight=False, soft_wrap=True)
