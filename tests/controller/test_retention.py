"""When a finished ImageBuild is deleted (controller/retention.py): pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stagefleet.controller.retention import expires_in, ttl_of
from stagefleet.controller.spec import SpecError

from .helpers import make_spec

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
DONE = {"phase": "Succeeded", "observedGeneration": 2, "completionTime": "2026-01-01T00:09:00Z"}


def test_the_spec_wins_over_the_default_and_zero_default_keeps() -> None:
    assert ttl_of({"ttlSecondsAfterFinished": 30}, 3600) == 30
    assert ttl_of({"ttlSecondsAfterFinished": 0}, 3600) == 0
    assert ttl_of({}, 3600) == 3600
    assert ttl_of({}, 0) is None and ttl_of(None, 0) is None
    assert ttl_of({"ttlSecondsAfterFinished": "30"}, 0) is None  # malformed: the spec check names it


def test_counted_from_completion_in_the_current_generation_only() -> None:
    assert expires_in(DONE, 2, 120, NOW) == 60.0
    assert expires_in(DONE, 2, 30, NOW) == -30.0
    assert expires_in(DONE, 2, None, NOW) is None
    assert expires_in(DONE, 3, 30, NOW) is None  # edited since it finished: a new build runs
    assert expires_in({**DONE, "phase": "Building"}, 2, 30, NOW) is None
    assert expires_in({**DONE, "phase": "Failed"}, 2, 30, NOW + timedelta(seconds=30)) == -60.0
    assert expires_in({k: v for k, v in DONE.items() if k != "completionTime"}, 2, 30, NOW) is None


def test_the_spec_field_is_validated() -> None:
    assert make_spec(ttlSecondsAfterFinished=600).ttl_seconds_after_finished == 600
    assert make_spec().ttl_seconds_after_finished is None
    with pytest.raises(SpecError, match="spec.ttlSecondsAfterFinished: must be between 0 and"):
        make_spec(ttlSecondsAfterFinished=-1)
