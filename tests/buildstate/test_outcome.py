"""The core's view of the whole build from its groups' phases."""

from __future__ import annotations

from stagefleet.buildstate import outcome
from stagefleet.buildstate.phases import (
    CANCELLED,
    FAILED,
    PENDING,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    WAITING,
)


def test_the_first_failed_group_in_the_given_order_fails_the_build() -> None:
    phases = {"g1": SUCCEEDED, "g2": FAILED, "g3": FAILED, "g4": RUNNING}
    assert outcome.outcome(["g1", "g3", "g2", "g4"], phases) == outcome.Outcome(outcome.FAILED_BUILD, "g3")
    assert sorted(outcome.cancelled_by_failure(phases)) == ["g4"]


def test_the_build_succeeds_only_when_every_group_did() -> None:
    assert outcome.outcome(["g1", "g2"], {"g1": SUCCEEDED, "g2": SUCCEEDED}).succeeded
    still = outcome.outcome(["g1", "g2"], {"g1": RUNNING, "g2": SUCCEEDED})
    assert still.phase == outcome.BUILDING and not still.succeeded and still.failed_group is None


def test_what_a_failure_or_a_timeout_stops() -> None:
    phases = {"a": WAITING, "b": PENDING, "c": RUNNING, "d": RETRYING, "e": SUCCEEDED, "f": CANCELLED}
    assert sorted(outcome.cancelled_by_failure(phases)) == ["a", "b", "c", "d"]
    assert sorted(outcome.unfinished(phases)) == ["a", "b", "c", "d"]
