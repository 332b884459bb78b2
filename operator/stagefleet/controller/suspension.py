"""Pure: spec.suspend over time: how long a run was suspended, and the deadline spec.timeout sets
without that time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from stagefleet.controller import fields
from stagefleet.controller.clock import parse_time
from stagefleet.controller.observe import PodObservation
from stagefleet.controller.spec import ImageBuildSpec


@dataclass(frozen=True)
class Suspension:
    """How long the run has been suspended in all (``seconds``, closed spells only), since when it is now
    (``since``), and whether this pass began or ended a spell."""

    seconds: float = 0.0
    since: datetime | None = None
    began: bool = False
    ended: bool = False


def suspension(status: Mapping[str, Any], suspend: bool, now: datetime) -> Suspension:
    """The run's suspension as this pass leaves it (status.suspendedAt, status.suspendedSeconds)."""
    seconds = fields.number(status.get("suspendedSeconds")) or 0.0
    since = parse_time(status.get("suspendedAt"))
    if suspend:
        return Suspension(seconds, since or now, began=since is None)
    if since is not None:
        return Suspension(seconds + max(0.0, (now - since).total_seconds()), None, ended=True)
    return Suspension(seconds)


def build_deadline(
    status: Mapping[str, Any], spec: ImageBuildSpec, now: datetime, pause: Suspension | None = None
) -> datetime:
    """When spec.timeout cancels the run: from its start, not counting time suspended (never while it is)."""
    pause = pause or suspension(status, spec.suspend, now)
    if pause.since is not None:
        return datetime.max.replace(tzinfo=UTC)
    start = parse_time(status.get("startTime")) or now
    return start + timedelta(seconds=spec.timeout_seconds + pause.seconds)


def pause_stopped(delete: Sequence[str], current: Sequence[PodObservation]) -> int:
    running = {p.name for p in current if not p.terminated and not p.deleting}
    return len(running.intersection(delete))
