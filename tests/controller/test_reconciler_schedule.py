"""reconciler.safety_poll_seconds: the no-event safety passes stay bounded in total as builds grow."""

from __future__ import annotations

from stagefleet.controller.reconciler import SAFETY_POLL_SECONDS, safety_poll_seconds


def test_few_builds_are_looked_at_every_15_seconds() -> None:
    assert safety_poll_seconds(0) == SAFETY_POLL_SECONDS == 15.0
    assert safety_poll_seconds(75) == 15.0


def test_many_builds_share_five_safety_passes_a_second() -> None:
    assert safety_poll_seconds(300) == 60.0
    for n in (76, 300, 1000, 5000):
        assert n / safety_poll_seconds(n) <= 5.0 + 1e-9
