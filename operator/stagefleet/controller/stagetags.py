"""Pure: what a finished build leaves behind, and when it goes — its stage result tags and its worker pods.

Every non-final group pushes its result to a tag of its own in the build's stages repository
(`podspec.stage_result_ref`); nothing needs them once the build ended. They are removed from the registry
(`controller.registry` does the HTTP) once the build finished: at once after Succeeded, after
``keep_failed`` seconds after Failed or Cancelled (to pull a failed build's intermediate stages while
debugging). The worker pods follow the same clocks: a Succeeded build's after ``keep_succeeded_pods``
seconds (0: at once), a Failed or Cancelled build's after ``keep_failed`` (their logs say why it failed).

Only this build's own tags (`podspec.is_stage_tag_of`) are ever removed, and never another tag with
them: the registry API deletes manifests by digest, which removes every tag of that digest in the
repository. A stage another build of the namespace built identically (a fully cached rebuild) has the
same digest; such a shared digest is not deleted, only this build's tag is moved off it
(`registry.Registry.untag`).

The result is recorded in ``status.stageTags`` (`entry`): ``deleted`` (this build's tags removed),
``message``, ``time``, and while a transient failure is retried ``attempts`` and ``retryAt``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stagefleet.controller.clock import parse_time
from stagefleet.controller.runs import run_of

TERMINAL = ("Succeeded", "Failed", "Cancelled")
DEFAULT_KEEP_FAILED_SECONDS = 3600
MAX_ATTEMPTS = 3  # transient registry failures (unreachable, 5xx) are retried this often in all
RETRY_SECONDS = 30.0  # … after 30 s, then 60 s




def _finished_since(status: Mapping[str, Any], generation: int, now: datetime) -> float | None:
    """Seconds since this generation's build finished; None when it has not (or never planned: nothing
    ran, so nothing was pushed and no pod exists)."""
    if (
        status.get("phase") not in TERMINAL
        or run_of(status) != generation
        or "plan" not in status
    ):
        return None
    done = parse_time(status.get("completionTime"))
    return None if done is None else (now - done).total_seconds()


def tags_due_in(
    status: Mapping[str, Any], generation: int, keep_failed: float, now: datetime
) -> float | None:
    """Seconds until the build's stage tags are to be removed (<= 0: now); None when there is nothing to
    do: the build is not finished, or the removal happened (``status.stageTags`` without ``retryAt``)."""
    since = _finished_since(status, generation, now)
    if since is None:
        return None
    done = status.get("stageTags")
    if isinstance(done, Mapping):
        retry = parse_time(done.get("retryAt"))
        return None if retry is None else (retry - now).total_seconds()
    keep = 0.0 if status.get("phase") == "Succeeded" else max(0.0, keep_failed)
    return keep - since


def pods_due_in(
    status: Mapping[str, Any], generation: int, keep_failed: float, keep_succeeded: float, now: datetime
) -> float | None:
    """Seconds until the finished build's worker pods are to be deleted (<= 0: now); None when the build
    is not finished."""
    since = _finished_since(status, generation, now)
    if since is None:
        return None
    keep = keep_succeeded if status.get("phase") == "Succeeded" else keep_failed
    return max(0.0, keep) - since


@dataclass(frozen=True)
class Deletion:
    """How to remove this build's tags: ``digests`` to DELETE (each named by this build's tags only),
    ``untag`` tags of ours whose digest another tag of the repository shares (moved off it, then gone)."""

    digests: dict[str, tuple[str, ...]] = field(default_factory=dict)
    untag: tuple[str, ...] = ()

    @property
    def tags(self) -> int:
        return sum(len(t) for t in self.digests.values()) + len(self.untag)


def plan_deletion(own: Collection[str], digests: Mapping[str, str | None]) -> Deletion:
    """``own``: this build's tags; ``digests``: every tag of the repository → the digest it names (None: the
    tag went away meanwhile). A digest is deleted only if no other tag names it."""
    by_digest: dict[str, list[str]] = {}
    for tag, digest in digests.items():
        if digest is not None:
            by_digest.setdefault(digest, []).append(tag)
    delete: dict[str, tuple[str, ...]] = {}
    untag: list[str] = []
    for digest, tags in sorted(by_digest.items()):
        mine = sorted(t for t in tags if t in own)
        if not mine:
            continue
        if len(mine) == len(tags):
            delete[digest] = tuple(mine)
        else:
            untag += mine
    return Deletion(delete, tuple(sorted(untag)))


def entry(
    deleted: int, message: str, now: datetime, *, attempts: int = 1, retry: bool = False
) -> dict[str, Any]:
    """``status.stageTags``; with ``retry`` (a transient failure, attempts left) the next try's time."""
    out: dict[str, Any] = {"deleted": deleted, "message": message, "time": _fmt(now)}
    if retry and attempts < MAX_ATTEMPTS:
        out["attempts"] = attempts
        out["retryAt"] = _fmt(now + timedelta(seconds=RETRY_SECONDS * attempts))
    return out


def attempts_so_far(status: Mapping[str, Any]) -> int:
    done = status.get("stageTags")
    value = done.get("attempts") if isinstance(done, Mapping) else None
    return value if isinstance(value, int) else 0


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
