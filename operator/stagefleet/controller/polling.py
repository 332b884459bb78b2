"""Pure: when a finished build looks at its git branch again, and what the look leaves in status.

A build whose ``spec.source.git.revision`` is a branch (or tag) is pinned to one commit per run. With
``spec.source.git.pollInterval`` the operator asks the repository (``git ls-remote``, no fetch) for the
revision's commit every interval once the run finished; a commit other than the run's starts a new run
(`runs`), as a spec edit would, so a GitOps tool needs no webhook. A new value of the
``stagefleet.io/resolve`` annotation asks at once (``status.resolve`` records the value answered); it
starts a run only when the commit moved (``stagefleet.io/rebuild`` runs again regardless).

``status.polledAt`` says when the repository was last asked; ``status.lastSucceeded`` keeps the image of the
last run that succeeded (and its commit), so a Deployment can follow it while a newer run builds or failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from stagefleet.controller.clock import parse_time

ANNOTATION_RESOLVE = "stagefleet.io/resolve"




def requested(meta: Mapping[str, Any]) -> str | None:
    value = (meta.get("annotations") or {}).get(ANNOTATION_RESOLVE)
    return value if isinstance(value, str) else None


def unanswered(meta: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """A resolve request the status has not answered."""
    asked = requested(meta)
    return asked is not None and asked != status.get("resolve")


def commit_of(status: Mapping[str, Any]) -> str | None:
    git = (status.get("source") or {}).get("git") or {}
    commit = git.get("commit") if isinstance(git, Mapping) else None
    return commit if isinstance(commit, str) and commit else None


def due_in(
    status: Mapping[str, Any], meta: Mapping[str, Any], interval: int | None, now: datetime
) -> float | None:
    """Seconds until the branch is to be asked again (<= 0: now); None when it never is: no interval and no
    resolve request, or the run did not record a commit (it ended before resolving its source)."""
    if commit_of(status) is None:
        return None
    if unanswered(meta, status):
        return 0.0
    if not interval:
        return None
    last = parse_time(status.get("polledAt")) or parse_time(status.get("completionTime"))
    if last is None:
        return 0.0
    return (last - now).total_seconds() + interval


UNRESOLVED = ("SourceUnavailable", "SourceTimeout")  # a run that ended before pinning a commit


def retry_in(
    status: Mapping[str, Any], meta: Mapping[str, Any], interval: int | None, now: datetime
) -> float | None:
    """For a run that failed to resolve its source (no commit pinned): seconds until a new run tries
    again (<= 0: now), the interval after it ended or at once on a new resolve request; None: never."""
    reason = (status.get("failure") or {}).get("reason")
    if status.get("phase") != "Failed" or reason not in UNRESOLVED or commit_of(status) is not None:
        return None
    if unanswered(meta, status):
        return 0.0
    done = parse_time(status.get("completionTime"))
    if not interval or done is None:
        return None
    return (done - now).total_seconds() + interval


def answered(status: Mapping[str, Any], meta: Mapping[str, Any], now: str) -> dict[str, Any]:
    """``status`` after a look that found the run's own commit: when, and the resolve request answered."""
    out = {**status, "polledAt": now}
    asked = requested(meta)
    if asked is not None:
        out["resolve"] = asked
    return out


CARRIED = ("lastSucceeded", "polledAt", "resolve")


def carried(old: Mapping[str, Any]) -> dict[str, Any]:
    """What a new run's status keeps of the previous run's: the last good image, when the repository was
    last asked, and the resolve request answered."""
    return {k: old[k] for k in CARRIED if k in old}


def last_succeeded(status: Mapping[str, Any]) -> dict[str, Any] | None:
    """``status.lastSucceeded`` of a run that just succeeded: its image, digest, commit, run and time."""
    image = status.get("image") or {}
    if status.get("phase") != "Succeeded" or not isinstance(image, Mapping) or not image.get("digest"):
        return None
    out: dict[str, Any] = {"image": image.get("name"), "digest": image.get("digest")}
    for key, value in (("commit", commit_of(status)), ("run", status.get("run")),
                       ("time", status.get("completionTime"))):
        if value is not None:
            out[key] = value
    return out
