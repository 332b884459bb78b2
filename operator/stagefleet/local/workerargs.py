"""Pure: one local build's settings and the `stagefleet-worker` command line of each of its groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stagefleet.buildstate.retries import DEFAULT_RETRIES
from stagefleet.local.refs import repository_of, stage_repo
from stagefleet.local.shapes import GroupLike


@dataclass(frozen=True)
class BuildSettings:
    """Everything about one local build that does not change while it runs."""

    context: Path
    dockerfile: Path
    registry: str
    build_id: str
    tags: tuple[str, ...]
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)      # id → file
    ssh: Mapping[str, str] = field(default_factory=dict)          # id → key file
    cache_repo: str | None = None
    insecure: tuple[str, ...] = ()
    parallel: int = 1
    worker: Sequence[str] = ("stagefleet-worker",)
    platform: str | None = None
    no_cache: bool = False
    keys: Mapping[str, str] = field(default_factory=dict)   # stage → content key (`stagekey`)
    pins: Mapping[str, str] = field(default_factory=dict)   # image → digest the keys were computed from
    retries: int = DEFAULT_RETRIES  # more attempts for a group that failed through no fault of the build
    backoff_base: float = 2.0     # seconds before the first retry (doubling, `buildstate.retries`)
    early_start: bool = True      # with workers to spare, start the next wave while its upstreams build

    def push_refs(self, group: GroupLike, final_group: str) -> list[str]:
        """The final group goes to every tag; any other to the build's stage repository."""
        if group.id == final_group:
            return list(self.tags)
        return [result_tag(self, group.id)]


def result_tag(settings: BuildSettings, group_id: str) -> str:
    """Where a (non-final) group pushes its result, and where a consumer started early waits for it. Every
    attempt pushes there: a consumer waiting for a retried group takes the attempt that succeeded."""
    return f"{stage_repo(settings.registry, settings.build_id)}:{group_id}"


def worker_argv(settings: BuildSettings, group: GroupLike, *, final_group: str,
                upstream: Mapping[str, str], storage_root: Path, result_file: Path) -> list[str]:
    """The `stagefleet-worker` command line for one group (see docs/contracts.md).

    `upstream` maps a producing group id to the `REPO@sha256:..` it pushed; a producer missing from it is
    still building (the group starts early): its worker waits for the producer's result tag
    (``--upstream-wait``). Only the secrets and ssh ids the group's own stages use are passed, as the
    operator mounts only those into a pod.
    """
    argv = [*settings.worker, "--context", str(settings.context)]
    try:
        rel = settings.dockerfile.resolve().relative_to(settings.context.resolve())
        argv += ["--dockerfile", str(rel)]
    except ValueError:
        argv += ["--inline-dockerfile", str(settings.dockerfile)]
    argv += ["--group", group.id, "--target", group.stages[-1]]
    for s in group.stages:
        argv += ["--stage", s]
    for stage_name, producer in group.consumes:
        if producer in upstream:
            argv += ["--upstream", f"{stage_name}={upstream[producer]}"]
        else:
            argv += ["--upstream-wait", f"{stage_name}={result_tag(settings, producer)}"]
    for sid in group.secrets:
        if sid in settings.secrets:
            argv += ["--secret", f"id={sid},src={settings.secrets[sid]}"]
    for sid in group.ssh:
        if sid in settings.ssh:
            argv += ["--ssh", f"{sid}={settings.ssh[sid]}"]
    for k, v in settings.build_args.items():
        argv += ["--build-arg", f"{k}={v}"]
    if settings.platform:
        argv += ["--platform", settings.platform]
    if settings.cache_repo:
        argv += ["--cache-repo", settings.cache_repo, "--mount-cache-repo", settings.cache_repo]
    if settings.no_cache:
        argv.append("--no-cache")
    for ref in settings.push_refs(group, final_group):
        argv += ["--push", ref]
    argv += key_args(settings, group.stages[-1])
    for host in settings.insecure:
        argv += ["--insecure-registry", host]
    argv += ["--storage-root", str(storage_root), "--result-file", str(result_file)]
    return argv


def key_args(settings: BuildSettings, target: str) -> list[str]:
    """``--stage-key`` and ``--pin-image`` for a keyed group, as the operator's pods get them: the worker
    stores its result under the key in the cache repository, built from the digests the key was
    computed from (an image the Dockerfile names by digest pins itself)."""
    from stagefleet.stagekey import worker_args  # (here: stagekey imports the Dockerfile parser)

    key = settings.keys.get(target)
    if not key or not settings.cache_repo:
        return []
    return worker_args(key, settings.pins)


@dataclass(frozen=True)
class Stored:
    """A group's result found under its key tag at plan time: no worker runs for it, its consumers build
    from ``image`` by ``digest``."""

    image: str   # CACHE-REPO:stage-KEY
    digest: str

    @property
    def ref(self) -> str:
        """What consumers get as ``--upstream STAGE=REF``: the repository by digest."""
        return f"{repository_of(self.image)}@{self.digest}"
