"""Local mode's stage reuse (`stagefleet build`), as the operator's: before any worker starts, every stage is
keyed, and a group whose result is stored under its key in the cache repository runs no worker.

The keys are the operator's (`stagefleet.reuse`, `stagekey`); the context is the local directory
(`local.context.index_directory`) and the platform the local machine's, or ``--platform``. Key tags live in
the build's cache repository, the one its layer cache uses (`cache_repository`). Like the operator's, the
lookup never fails a build: what it cannot do is a note, and those groups are built.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stagefleet import registryclient
from stagefleet import reuse as shared
from stagefleet.local import context as localcontext
from stagefleet.local.refs import ref_host, repository_of
from stagefleet.local.shapes import PlanLike
from stagefleet.local.workerargs import Stored
from stagefleet.stages import StageGraph

__all__ = ["MAX_NOTES", "Prepared", "cache_repository", "clients", "prepare"]

MAX_NOTES = 5


def cache_repository(explicit: str | None, tags: Sequence[str], *, outlives_build: bool) -> str | None:
    """The cache repository (layer cache and key tags): ``--cache-repo``, else OUTPUT-REPOSITORY/cache as
    the operator's default (the first tag's repository), if that registry outlives the build; else none.
    A throwaway registry's cache would go with it: caching there costs pushes and saves nothing."""
    if explicit:
        return explicit
    if not outlives_build or not tags or ref_host(tags[0]) is None:
        return None
    return f"{repository_of(tags[0])}/cache"


@dataclass
class Prepared:
    """What the workers are given (keys, pins) and what needs none (stored results), with notes."""

    keys: dict[str, str] = field(default_factory=dict)  # stage → key
    pins: dict[str, str] = field(default_factory=dict)  # image → digest
    stored: dict[str, Stored] = field(default_factory=dict)  # group → its stored result
    notes: list[str] = field(default_factory=list)


def clients(insecure: Collection[str]) -> shared.ClientFor:
    """Registry clients by host, anonymous as the local workers are; plain HTTP first for ``insecure``."""
    made: dict[str, registryclient.Registry] = {}

    def client_for(host: str) -> registryclient.Registry:
        if host not in made:
            made[host] = registryclient.Registry(
                host, insecure=host in insecure, timeout=shared.LOOKUP_TIMEOUT, user_agent="stagefleet")
        return made[host]

    return client_for


def prepare(graph: StageGraph, plan: PlanLike, *, context: Path, platform: str, cache_repo: str,
            tags: Sequence[str], client_for: shared.ClientFor, find: bool = True,
            dockerfile: Path | None = None) -> Prepared:
    """Key the stages, and with ``find`` look their results up; a stored final result is copied to every
    tag (then nothing is built). What the context's ignore files leave out (``dockerfile``: the Dockerfile,
    whose own ignore file next to it wins when it is in the context) is left out of the keys. Registry I/O
    with bounded timeouts; never raises."""
    try:
        ignore = localcontext.ignore_rules(context, dockerfile)
        index = localcontext.index_directory(context, ignore)
        found = shared.lookup(graph, plan, platform=platform, context=index, cache_repo=cache_repo,
                              client_for=client_for, find=find)
    except Exception as e:  # noqa: BLE001 (reuse saves time; it must never stop a build)
        return Prepared(notes=[f"stage reuse: nothing keyed ({type(e).__name__}: {e})"])
    out = Prepared(
        keys={stage: r.key for stage, r in found.keys.items() if r.key is not None},
        pins=dict(found.bases),
        stored={gid: Stored(found.image[gid], digest) for gid, digest in found.found.items()},
    )
    unkeyed = sorted({r.reason for r in found.keys.values() if r.key is None and r.reason})
    out.notes = [f"stage reuse: {n}" for n in [*unkeyed, *found.notes]][:MAX_NOTES]
    final = plan.final_group
    if final in out.stored:
        why = _copy_output(out.stored[final], tags, client_for)
        if why is None:
            out.notes.append(f"output written from the stored result: {', '.join(tags)}")
        else:
            out.notes.append(f"stage reuse: output not copied from the stored result, building it: {why}")
            del out.stored[final]
    return out


def _copy_output(stored: Stored, tags: Sequence[str], client_for: shared.ClientFor) -> str | None:
    """Every tag names the stored result (`reuse.copy_image`); None when done, else why not."""
    where = registryclient.split_repository(repository_of(stored.image))
    if where is None:
        return f"{stored.image} names no registry host"
    try:
        shared.copy_image(client_for(where[0]), stored.image, stored.digest, tags)
    except registryclient.RegistryError as e:
        return str(e)
    return None
