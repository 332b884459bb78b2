"""Pure: when a finished ImageBuild is deleted (``ttlSecondsAfterFinished``, as a Job's).

A farm that builds on every commit would otherwise keep every ImageBuild, and through their owner
references every worker pod, forever. The clock starts at ``status.completionTime``; the spec's value wins
over the operator's default; a default of 0 means "keep".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from stagefleet.controller.runs import run_of

TERMINAL = ("Succeeded", "Failed", "Cancelled")


def ttl_of(spec: Mapping[str, Any] | None, default: int) -> int | None:
    """The TTL in seconds for this build, None to keep it: the spec's field (if a valid number), else the
    operator's default (0: keep). Read from the raw spec so that a build whose spec no longer parses
    still expires."""
    value = (spec or {}).get("ttlSecondsAfterFinished")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default if default > 0 else None


def expires_in(status: Mapping[str, Any], generation: int, ttl: int | None, now: datetime) -> float | None:
    """Seconds until the finished build is due for deletion (<= 0: now); None if it is not finished (in
    this generation), has no completion time, or is kept."""
    if ttl is None or status.get("phase") not in TERMINAL or run_of(status) != generation:
        return None
    done = status.get("completionTime")
    if not isinstance(done, str):
        return None
    try:
        finished = datetime.fromisoformat(done.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ttl - (now - finished).total_seconds()
