"""What local mode needs of a plan (structural, so tests use small fakes and `stagefleet.plan` fits), and
which of its groups a run needs at all."""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Protocol

from stagefleet.buildstate.ready import Schedulable


class GroupLike(Schedulable, Protocol):
    """What local mode needs of a `stagefleet.plan.Group`: what the build-state core schedules by
    (`ready.Schedulable`: id, after, wave, critical, weight), and what its worker is given."""

    @property
    def stages(self) -> tuple[str, ...]: ...
    @property
    def consumes(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def secrets(self) -> tuple[str, ...]: ...
    @property
    def ssh(self) -> tuple[str, ...]: ...


class PlanLike(Protocol):
    """What local mode needs of a `stagefleet.plan.Plan`."""

    @property
    def groups(self) -> Sequence[GroupLike]: ...
    @property
    def critical_path(self) -> tuple[str, ...]: ...
    @property
    def final_group(self) -> str: ...


def needed_groups(groups: Sequence[GroupLike], final_group: str, stored: Set[str]) -> set[str]:
    """The groups to build: the final one and what it waits for, transitively, except stored results
    (`Stored`), which need nothing built. A stored final group needs nothing at all."""
    by_id = {g.id: g for g in groups}
    needed: set[str] = set()
    pending = [final_group]
    while pending:
        gid = pending.pop()
        if gid in needed or gid in stored or gid not in by_id:
            continue
        needed.add(gid)
        pending.extend(by_id[gid].after)
    return needed


def unschedulable(groups: Sequence[GroupLike], succeeded: Set[str]) -> list[str]:
    """Groups that can never start because something they wait for is not in the plan."""
    ids = {g.id for g in groups}
    return [g.id for g in groups if g.id not in succeeded and any(a not in ids for a in g.after)]
