"""What a finished build leaves behind and when it goes (controller/stagetags.py, podspec.is_stage_tag_of):
pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stagefleet.controller import stagetags
from stagefleet.controller.podspec import BuildRef, is_stage_tag_of, stage_result_ref
from stagefleet.controller.stagetags import Deletion, entry, plan_deletion, pods_due_in, tags_due_in

from .helpers import BUILD, make_spec

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
DONE = {"phase": "Succeeded", "observedGeneration": 1, "completionTime": "2026-01-01T00:09:00Z", "plan": {}}
FAILED = {**DONE, "phase": "Failed"}


def test_a_succeeded_builds_tags_are_due_at_once_a_failed_ones_after_the_keep_time() -> None:
    assert tags_due_in(DONE, 1, 3600, NOW) == -60.0
    assert tags_due_in(FAILED, 1, 3600, NOW) == 3540.0
    assert tags_due_in({**FAILED, "phase": "Cancelled"}, 1, 120, NOW) == 60.0
    assert tags_due_in(FAILED, 1, 0, NOW) == -60.0


def test_nothing_is_due_before_the_end_in_another_generation_without_a_plan_or_once_done() -> None:
    assert tags_due_in({**DONE, "phase": "Building"}, 1, 0, NOW) is None
    assert tags_due_in(DONE, 2, 0, NOW) is None  # edited since: a new build runs
    assert tags_due_in({k: v for k, v in DONE.items() if k != "plan"}, 1, 0, NOW) is None  # nothing ran
    assert tags_due_in({k: v for k, v in DONE.items() if k != "completionTime"}, 1, 0, NOW) is None
    done = {**DONE, "stageTags": entry(3, "deleted 3", NOW)}
    assert tags_due_in(done, 1, 0, NOW) is None


def test_a_transient_failure_is_retried_a_bounded_number_of_times() -> None:
    first = entry(1, "unreachable", NOW, attempts=1, retry=True)
    assert first["retryAt"] == "2026-01-01T00:10:30Z" and first["attempts"] == 1
    assert tags_due_in({**DONE, "stageTags": first}, 1, 0, NOW) == 30.0
    assert stagetags.attempts_so_far({**DONE, "stageTags": first}) == 1
    second = entry(1, "unreachable", NOW, attempts=2, retry=True)
    assert second["retryAt"] == "2026-01-01T00:11:00Z"
    last = entry(1, "unreachable", NOW, attempts=stagetags.MAX_ATTEMPTS, retry=True)
    assert "retryAt" not in last and tags_due_in({**DONE, "stageTags": last}, 1, 0, NOW) is None


def test_pods_of_a_succeeded_build_go_after_their_own_keep_time_failed_ones_with_the_tags() -> None:
    assert pods_due_in(DONE, 1, 3600, 0, NOW) == -60.0
    assert pods_due_in(DONE, 1, 3600, 600, NOW) == 540.0
    assert pods_due_in(FAILED, 1, 3600, 0, NOW) == 3540.0
    assert pods_due_in(FAILED, 1, 3600, 0, NOW + timedelta(hours=1)) == -60.0
    assert pods_due_in({**DONE, "phase": "Building"}, 1, 0, 0, NOW) is None
    assert pods_due_in(DONE, 2, 0, 0, NOW) is None


def test_only_this_builds_own_stage_tags_match_in_every_generation_group_and_attempt() -> None:
    spec = make_spec()
    tag = stage_result_ref(spec, BUILD, "g2", 3).rsplit(":", 1)[1]
    assert tag == "seed-01234567-1-g2-a3"
    assert is_stage_tag_of(BUILD, tag)
    assert is_stage_tag_of(BUILD, "seed-01234567-7-g12-a1")
    # another build of the same name (a new uid), and one whose name starts with this one's name and uid
    assert not is_stage_tag_of(BUILD, "seed-89abcdef-1-g2-a1")
    longer = BuildRef("seed-01234567-1", "ns", "fedcba9876543210", 1)
    other = stage_result_ref(spec, longer, "g1", 1).rsplit(":", 1)[1]
    assert other.startswith("seed-01234567-") and not is_stage_tag_of(BUILD, other)
    assert not is_stage_tag_of(BUILD, "seed-01234567-1-g2-a1-extra")
    assert not is_stage_tag_of(BUILD, "latest")


def test_a_digest_is_deleted_only_when_every_tag_naming_it_is_this_builds() -> None:
    own = {"a-1", "a-2", "a-3"}
    digests = {
        "a-1": "sha256:1",  # only ours
        "a-2": "sha256:2",
        "b-1": "sha256:2",  # another build's identical stage: a-2 is moved off it, not deleted
        "a-3": None,  # gone meanwhile
        "b-2": "sha256:3",  # not ours at all
    }
    plan = plan_deletion(own, digests)
    assert plan == Deletion({"sha256:1": ("a-1",)}, ("a-2",))
    assert plan.tags == 2
    assert plan_deletion(own, {"a-1": "sha256:1", "a-2": "sha256:1"}) == Deletion(
        {"sha256:1": ("a-1", "a-2")}, ()
    )
    assert plan_deletion(set(), {"b-1": "sha256:1"}) == Deletion()
