"""Stand-ins for `stagefleet.plan` objects: the pure local-mode tests do not depend on the planner."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FakeGroup:
    id: str
    stages: tuple[str, ...]
    after: tuple[str, ...] = ()
    consumes: tuple[tuple[str, str], ...] = ()
    secrets: tuple[str, ...] = ()
    ssh: tuple[str, ...] = ()
    critical: bool = False
    weight: int = 1
    wave: int = 0

    @property
    def target(self) -> str:
        return self.stages[-1]


@dataclass(frozen=True)
class FakePlan:
    groups: tuple[FakeGroup, ...]
    critical_path: tuple[str, ...]
    final_group: str


def seed_plan() -> FakePlan:
    """The seed's shape: build1 and build2 independent, final consumes both."""
    return FakePlan(
        groups=(
            FakeGroup("g1", ("build1",), critical=True, weight=3),
            FakeGroup("g2", ("build2",), weight=3),
            FakeGroup("g3", ("final",), after=("g1", "g2"), consumes=(("build1", "g1"), ("build2", "g2")),
                      critical=True, weight=4, wave=1),
        ),
        critical_path=("build1", "final"),
        final_group="g3",
    )
