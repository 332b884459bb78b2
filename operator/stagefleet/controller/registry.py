"""The operator's registry I/O beyond the plan-time lookups (`controller.reuse`): removing a finished build's
stage tags. The client is `stagefleet.registryclient` (shared with local mode); which tags go, and when, is
decided in `controller.stagetags` (pure).
"""

from __future__ import annotations

from collections.abc import Callable

from stagefleet.controller import stagetags
from stagefleet.registryclient import (
    ACCEPT,
    OCI_MANIFEST,
    UNTAG_ANNOTATION,
    Registry,
    RegistryError,
    Unsupported,
    manifest_blobs,
    split_repository,
)

__all__ = [
    "ACCEPT",
    "OCI_MANIFEST",
    "UNTAG_ANNOTATION",
    "Registry",
    "RegistryError",
    "Unsupported",
    "manifest_blobs",
    "remove_build_tags",
    "split_repository",
]


def remove_build_tags(
    reg: Registry, repository: str, own: Callable[[str], bool]
) -> tuple[int, int, RegistryError | None]:
    """Remove the tags ``own`` accepts from ``repository``: (tags removed, tags of ours found, the error that
    stopped it or None). Every tag of the repository is resolved (one HEAD each), so that a digest another
    build's tag shares is never deleted (`stagetags.plan_deletion`). Raises `RegistryError` when the tags
    cannot be listed or resolved."""
    tags = reg.tags(repository)
    mine = {t for t in tags if own(t)}
    if not mine:
        return 0, 0, None
    digests = {t: reg.digest(repository, t) for t in tags}
    plan = stagetags.plan_deletion(mine, digests)
    done = 0
    try:
        for digest, names in plan.digests.items():
            reg.delete(repository, digest)
            done += len(names)
        for tag in plan.untag:
            reg.untag(repository, tag)
            done += 1
    except RegistryError as e:
        return done, plan.tags, e
    return done, plan.tags, None
