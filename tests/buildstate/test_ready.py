"""The core's start decisions: ready groups, their order, slots, early start and backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.local.fakes import FakeGroup, seed_plan

from stagefleet.buildstate import ready
from stagefleet.buildstate.phases import PENDING, RETRYING, RUNNING, SUCCEEDED, WAITING

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def start(groups: tuple[FakeGroup, ...], phases: dict[str, str], slots: int = 4,
          early_start: bool = False) -> list[str]:
    due = {gid for gid, phase in phases.items() if ready.is_due(phase, None, NOW)}
    starts, _ = ready.to_start(groups, phases, due, slots, early_start=early_start)
    return [g.id for g in starts]


def test_independent_groups_start_together_and_the_final_waits() -> None:
    groups = seed_plan().groups
    assert start(groups, {"g1": WAITING, "g2": WAITING, "g3": WAITING}) == ["g1", "g2"]
    assert start(groups, {"g1": SUCCEEDED, "g2": RUNNING, "g3": WAITING}) == []
    assert start(groups, {"g1": SUCCEEDED, "g2": SUCCEEDED, "g3": WAITING}) == ["g3"]
    assert start(groups, {"g1": SUCCEEDED, "g2": SUCCEEDED, "g3": SUCCEEDED}) == []


def test_slots_limit_and_the_critical_group_goes_first() -> None:
    groups = seed_plan().groups
    assert start(groups, {"g1": WAITING, "g2": WAITING, "g3": WAITING}, slots=1) == ["g1"]
    assert start(groups, {"g1": RUNNING, "g2": WAITING, "g3": WAITING}, slots=0) == []
    assert start(groups, {"g1": SUCCEEDED, "g2": WAITING, "g3": WAITING}, slots=1) == ["g2"]
    _, left = ready.to_start(groups, {"g1": WAITING, "g2": WAITING, "g3": WAITING}, {"g1", "g2", "g3"}, 1,
                             early_start=True)
    assert [g.id for g in left] == ["g2"]  # ready but without a slot: the shell says it is queued


def test_among_equals_the_earlier_wave_then_the_heavier_group_then_plan_order() -> None:
    groups = (FakeGroup("g1", ("a",), weight=1), FakeGroup("g2", ("b",), weight=5),
              FakeGroup("g3", ("c",), weight=1), FakeGroup("g4", ("d",), weight=9, wave=1))
    phases = {g.id: WAITING for g in groups}
    assert start(groups, phases, slots=3) == ["g2", "g1", "g3"]


def test_a_group_waiting_for_an_unknown_group_never_starts() -> None:
    groups = (FakeGroup("g1", ("a",)), FakeGroup("g2", ("b",), after=("g9",)))
    assert start(groups, {"g1": SUCCEEDED, "g2": WAITING}) == []


def test_early_start_takes_the_next_wave_once_its_upstreams_build() -> None:
    groups = seed_plan().groups
    # Upstreams merely created (Pending): no waiter may hold a slot for them.
    assert start(groups, {"g1": PENDING, "g2": RUNNING, "g3": WAITING}, early_start=True) == []
    # Both upstreams building (or done): the final group starts and waits for their results.
    assert start(groups, {"g1": RUNNING, "g2": SUCCEEDED, "g3": WAITING}, early_start=True) == ["g3"]
    assert start(groups, {"g1": RUNNING, "g2": SUCCEEDED, "g3": WAITING}, early_start=False) == []
    # Ready groups have the slots first.
    chain = (*groups, FakeGroup("g4", ("x",)))
    assert start(chain, {"g1": RUNNING, "g2": SUCCEEDED, "g3": WAITING, "g4": WAITING}, slots=1,
                 early_start=True) == ["g4"]


def test_early_start_looks_exactly_one_wave_ahead() -> None:
    groups = (FakeGroup("g1", ("a",)), FakeGroup("g2", ("b",), after=("g1",), wave=1),
              FakeGroup("g3", ("c",), after=("g2",), wave=2))
    # g2 runs, but only as an early waiter (its own upstream still builds): g3 must not wait behind it.
    assert start(groups, {"g1": RUNNING, "g2": RUNNING, "g3": WAITING}, early_start=True) == []
    assert start(groups, {"g1": SUCCEEDED, "g2": RUNNING, "g3": WAITING}, early_start=True) == ["g3"]


def test_a_retry_is_due_at_its_time_and_a_held_start_waits_like_one() -> None:
    later = NOW + timedelta(seconds=5)
    assert ready.is_due(WAITING, None, NOW)
    assert not ready.is_due(RETRYING, later, NOW) and ready.is_due(RETRYING, later, later)
    assert ready.is_due(RETRYING, None, NOW)
    assert not ready.is_due(WAITING, later, NOW, held=True) and ready.is_due(WAITING, later, later, held=True)
    assert not ready.is_due(RUNNING, None, NOW) and not ready.is_due(SUCCEEDED, None, NOW)


def test_queued_counts_retries_and_waiters_whose_upstreams_succeeded() -> None:
    phases = {"g1": "Succeeded", "g2": "Waiting", "g3": "Waiting", "g4": "Retrying", "g5": "Running"}
    after = {"g2": ("g1",), "g3": ("g2",), "g4": ("g5",)}
    assert ready.queued(phases, after) == 2  # g2 (g1 done) and g4 (retrying, whatever its upstreams)
    assert ready.queued({"g1": "Waiting"}, {}) == 1
