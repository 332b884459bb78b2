"""Which groups start now: those whose upstream groups all succeeded, critical path first, and with slots
to spare one wave ahead ("early start"): a group whose upstreams are still building starts too, and its
worker waits for their results in the registry while its own start, base-image pulls and setup overlap
the upstream build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from datetime import datetime
from typing import Protocol, TypeVar

from stagefleet.buildstate.phases import RETRYING, RUNNING, SUCCEEDED, WAITING


class Schedulable(Protocol):
    """What the core needs of a plan group (`plan.Group`, `controller.model.GroupPlan`)."""

    @property
    def id(self) -> str: ...
    @property
    def after(self) -> tuple[str, ...]: ...
    @property
    def wave(self) -> int: ...
    @property
    def critical(self) -> bool: ...
    @property
    def weight(self) -> int: ...


G = TypeVar("G", bound=Schedulable)


def is_due(phase: str, retry_at: datetime | None, now: datetime, *, held: bool = False) -> bool:
    """Whether a group wants its worker started now: never started (Waiting), or its backoff has passed
    (Retrying after a failed attempt, or ``held``: waiting after the start itself was refused)."""
    if phase == RETRYING or (phase == WAITING and held):
        return retry_at is None or retry_at <= now
    return phase == WAITING


def succeeded(phases: Mapping[str, str], groups: Sequence[str]) -> bool:
    return all(phases.get(gid) == SUCCEEDED for gid in groups)


def queued(phases: Mapping[str, str], after: Mapping[str, Sequence[str]]) -> int:
    """How many groups would start if slots were free (the queue-depth metric): those retrying, and those
    waiting whose upstream groups (``after``) all succeeded. Backoffs are not looked at: a retry waits
    for a slot either way."""
    return sum(1 for gid, phase in phases.items()
               if phase == RETRYING or (phase == WAITING and succeeded(phases, after.get(gid, ()))))


def start_order(groups: Sequence[G]) -> list[G]:
    """Critical groups first (the critical path decides the wall time), then the earlier wave, then the
    heavier group, then plan order."""
    index = {g.id: i for i, g in enumerate(groups)}
    return sorted(groups, key=lambda g: (not g.critical, g.wave, -g.weight, index[g.id]))


def ready(groups: Sequence[G], phases: Mapping[str, str], due: Set[str]) -> list[G]:
    """Due groups whose upstream groups all succeeded, in `start_order`."""
    return start_order([g for g in groups if g.id in due and succeeded(phases, g.after)])


def early(groups: Sequence[G], phases: Mapping[str, str], due: Set[str]) -> list[G]:
    """Due groups worth starting before their upstreams finish: every upstream group has succeeded or is
    *building*: Running (a worker at work, not merely created) with all of its own upstreams succeeded.

    Running, because a waiting worker holds a node's resources: were workers allowed to wait for upstreams
    that have not started, a full cluster could fill with waiters and never start what they wait for. Its
    own upstreams succeeded, so the lookahead is exactly one wave and no worker waits behind a waiter.
    """
    by_id = {g.id: g for g in groups}

    def building(gid: str) -> bool:
        phase = phases.get(gid)
        if phase == SUCCEEDED:
            return True
        return phase == RUNNING and gid in by_id and succeeded(phases, by_id[gid].after)

    return start_order([g for g in groups if g.id in due and not succeeded(phases, g.after)
                        and all(building(a) for a in g.after)])


def to_start(groups: Sequence[G], phases: Mapping[str, str], due: Set[str], slots: int, *,
             early_start: bool) -> tuple[list[G], list[G]]:
    """(groups to start now, ready groups left waiting for a slot): ready groups first, then — with
    ``early_start`` and slots to spare — `early` ones."""
    first = ready(groups, phases, due)
    slots = max(0, slots)
    start, left = first[:slots], first[slots:]
    if early_start:
        start += early(groups, phases, due)[: slots - len(start)]
    return start, left
