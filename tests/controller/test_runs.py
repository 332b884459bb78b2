"""runs.py: which run an ImageBuild is on, and what starts the next (a spec edit or a new
stagefleet.io/rebuild value), as the status records it."""

from __future__ import annotations

from typing import Any

from stagefleet.controller.runs import ANNOTATION_REBUILD, Run, current, run_of, started_by, unanswered


def meta(generation: int, rebuild: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"generation": generation}
    if rebuild is not None:
        out["annotations"] = {ANNOTATION_REBUILD: rebuild, "other": "x"}
    return out


def test_the_first_run_is_the_generation_and_answers_an_annotation_set_at_creation() -> None:
    assert current(meta(1), {}) == Run(1, 1, None)
    assert current(meta(3, "a"), {}) == Run(3, 3, "a")
    assert unanswered(meta(1), {})


def test_a_status_written_before_runs_existed_is_its_generations_run() -> None:
    old = {"observedGeneration": 2, "phase": "Succeeded"}
    assert run_of(old) == 2
    assert current(meta(2), old) == Run(2, 2, None) and not unanswered(meta(2), old)


def test_a_new_rebuild_value_starts_the_next_run_of_the_same_generation() -> None:
    done = Run(1, 1).fields() | {"phase": "Failed"}
    assert not unanswered(meta(1), done)
    assert current(meta(1, "1"), done) == Run(2, 1, "1")
    second = Run(2, 1, "1").fields() | {"phase": "Succeeded"}
    assert second == {"observedGeneration": 1, "run": 2, "rebuild": "1", "phase": "Succeeded"}
    # The same value again is answered; removing the annotation starts nothing.
    assert not unanswered(meta(1, "1"), second) and current(meta(1, "1"), second) == Run(2, 1, "1")
    assert not unanswered(meta(1), second) and current(meta(1), second).number == 2
    assert current(meta(1, "2"), second) == Run(3, 1, "2")


def test_a_spec_edit_after_rebuilds_never_reuses_a_run_number() -> None:
    rebuilt = Run(4, 2, "x").fields()
    # generation 3 after run 4: run 5 (run 3 was a rebuild of generation 2 once; its pod names are taken)
    assert current(meta(3, "x"), rebuilt) == Run(5, 3, "x")
    # a generation far ahead of the runs: its own number
    assert current(meta(9, "x"), rebuilt) == Run(9, 9, "x")


def test_what_started_a_run_is_named_for_its_event() -> None:
    first = Run(1, 1).fields()
    assert started_by({}, Run(1, 1)) is None
    assert started_by(first, Run(1, 1)) is None
    assert started_by(first, Run(2, 2)) == "spec changed (generation 2)"
    assert started_by(first, Run(2, 1, "now")) == "rebuild requested (stagefleet.io/rebuild='now')"
    assert started_by(Run(2, 1, "now").fields(), Run(3, 1, "now")) is None  # a moved branch: said by polling


def test_non_string_annotations_and_odd_statuses_do_not_crash() -> None:
    assert current({"generation": 1, "annotations": {ANNOTATION_REBUILD: 5}}, {}) == Run(1, 1, None)
    assert current({}, {"run": True, "observedGeneration": "1"}) == Run(1, 1, None)
