"""status.py: observed pods → stage states, next groups, phase and kstatus conditions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stagefleet import health
from stagefleet.controller import trust
from stagefleet.controller.groupupdate import ADMISSION_RETRIES
from stagefleet.controller.model import GroupPlan, PlanView
from stagefleet.controller.observe import PodObservation, observe_pod, parse_result, pod_signature
from stagefleet.controller.report import planned_status, terminal_status
from stagefleet.controller.secretneeds import secret_needs, secret_problems
from stagefleet.controller.status import Decision, decide

from .helpers import BUILD, SEED_PLAN, decide_pods, make_spec, pod, recorded, result_json

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
SPEC = make_spec()


def start() -> dict[str, Any]:
    return planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)


def run(
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    *,
    now: datetime = NOW,
    spec: Any = SPEC,
    missing: dict[str, str] | None = None,
    early: bool = False,
    plan: PlanView = SEED_PLAN,
) -> Decision:
    return decide_pods(status, pods, now=now, spec=spec, plan=plan, missing=missing, backoff_base=10,
                       early_start=early)


def obj(status: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"kind": "ImageBuild", "metadata": {"generation": generation}, "status": status}


def phases(status: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["phase"] for s in status["stages"]}


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_planned_status_is_building_and_reconciling() -> None:
    s = start()
    assert s["phase"] == "Building" and s["progress"] == "0/3" and s["stagesTotal"] == 3
    assert phases(s) == {"build1": "Waiting", "build2": "Waiting", "final": "Waiting"}
    assert s["plan"]["criticalPath"] == ["build1", "final"] and s["plan"]["waves"] == 2
    assert health.convention_problems(obj(s)) == []
    assert health.kstatus(obj(s)).status == "InProgress"


def test_independent_groups_start_together_and_final_waits() -> None:
    d = run(start(), [])
    assert [(c.group.id, c.attempt) for c in d.create] == [("g1", 1), ("g2", 1)]
    assert phases(d.status) == {"build1": "Pending", "build2": "Pending", "final": "Waiting"}
    assert d.status["stages"][0]["pod"] == "seed-1-g1-a1"
    assert d.events == []  # first starts: the pods' own events say it
    # Same input again (e.g. a duplicate event) with the pods now existing: nothing new.
    d2 = run(d.status, [pod("g1"), pod("g2")])
    assert d2.create == [] and phases(d2.status)["build1"] == "Running"
    assert d2.events == []  # Pending → Running: the kubelet's Started event on the pod says it


def test_lost_status_write_adopts_the_pods_it_created() -> None:
    """The operator recorded the pods it was about to create (write-ahead: their creation tokens' hashes),
    created them, then died before recording their UIDs: it adopts exactly those pods, never duplicates
    them, and records their UIDs now (controller.trust; impostors: tests/controller/test_trust.py)."""
    first = decide_pods(start(), [], now=NOW, spec=SPEC, record=False)
    intent = trust.with_intents(first.status, {"g1": trust.token_hash("t1"), "g2": trust.token_hash("t2")})
    pods = [pod("g1", phase="Pending", token="t1"), pod("g2", token="t2")]
    d = run(intent, pods)
    assert d.create == [] and d.delete == [] and d.events == []
    assert phases(d.status)["build1"] == "Pending" and phases(d.status)["build2"] == "Running"
    assert d.status["stages"][1]["attempts"] == 1
    assert [e["podUID"] for e in d.status["stages"][:2]] == [p["metadata"]["uid"] for p in pods]


def test_final_starts_with_upstream_digests_then_succeeds() -> None:
    s = run(start(), []).status
    done = [
        pod("g1", phase="Succeeded", message=result_json("g1", "build1", D1, cached=1)),
        pod("g2", phase="Succeeded", message=result_json("g2", "build2", D2)),
    ]
    d = run(s, done)
    assert [c.group.id for c in d.create] == ["g3"]
    assert dict(d.create[0].upstream) == {
        "build1": ("127.0.0.1:5000/t/app/stages:g1", D1),
        "build2": ("127.0.0.1:5000/t/app/stages:g2", D2),
    }
    st1 = d.status["stages"][0]
    assert st1["digest"] == D1 and st1["cachedSteps"] == 1 and st1["duration"] == 1.5
    assert d.status["progress"] == "2/3"
    final = done + [pod("g3", phase="Succeeded", message=result_json("g3", "final", D3))]
    d3 = run(d.status, final)
    s3 = d3.status
    assert s3["phase"] == "Succeeded" and s3["progress"] == "3/3"
    assert s3["image"] == {
        "name": "127.0.0.1:5000/t/app:latest",
        "digest": D3,
        "short": "sha256:333333333333",
        "tags": ["127.0.0.1:5000/t/app:latest"],
    }
    assert cond(s3, "Ready")["status"] == "True" and cond(s3, "Reconciling")["status"] == "False"
    assert health.convention_problems(obj(s3)) == [] and health.kstatus(obj(s3)).status == "Current"
    assert "BuildSucceeded" in [e.reason for e in d3.events]
    assert d3.requeue_after is None
    # Terminal: nothing more happens, and stage results survive the pods' disappearance.
    d4 = run(s3, [])
    assert d4.create == [] and d4.status == s3


def test_max_parallel_pods_prefers_the_critical_path() -> None:
    d = run(start(), [], spec=make_spec(maxParallelPods=1))
    assert [c.group.id for c in d.create] == ["g1"]
    d2 = run(d.status, [pod("g1")], spec=make_spec(maxParallelPods=1))
    assert d2.create == []
    assert phases(d2.status)["build2"] == "Waiting"


def test_build_error_fails_with_stage_line_and_stops_the_rest() -> None:
    s = run(start(), []).status
    err = {"kind": "build-step", "message": "RUN exit status 1: false", "stage": "build1", "line": 4}
    d = run(
        s,
        [
            pod(
                "g1",
                phase="Failed",
                exit_code=13,
                message=result_json("g1", "build1", "", ok=False, error=err),
            ),
            pod("g2"),
        ],
    )
    st = d.status
    assert st["phase"] == "Failed"
    assert "stage build1 (Dockerfile line 4): RUN exit status 1: false" in st["message"]
    assert (
        st["failure"]["stage"] == "build1" and st["failure"]["line"] == 4 and st["failure"]["exitCode"] == 13
    )
    assert phases(st) == {"build1": "Failed", "build2": "Cancelled", "final": "Cancelled"}
    assert d.delete == ["seed-1-g2-a1"] and d.create == []
    assert cond(st, "Stalled")["status"] == "True" and cond(st, "Ready")["status"] == "False"
    assert health.convention_problems(obj(st)) == [] and health.kstatus(obj(st)).status == "Failed"
    assert {"StageFailed", "BuildFailed"} <= {e.reason for e in d.events}


def test_infra_failure_retries_after_backoff() -> None:
    s = run(start(), []).status
    failed = [
        pod(
            "g1",
            phase="Failed",
            exit_code=14,
            finished="2026-01-01T00:01:00Z",
            message=result_json("g1", "build1", "", ok=False, error={"kind": "push", "message": "503"}),
        ),
        pod("g2"),
    ]
    d = run(s, failed)
    assert phases(d.status)["build1"] == "Retrying"
    assert d.status["stages"][0]["retryAt"] == "2026-01-01T00:01:10Z"
    assert d.create == [] and d.requeue_after == 10.0
    assert "GroupRetrying" in [e.reason for e in d.events]
    d2 = run(d.status, failed, now=NOW + timedelta(seconds=5))
    assert d2.create == []
    d3 = run(d2.status, failed, now=NOW + timedelta(seconds=10))
    assert [(c.group.id, c.attempt) for c in d3.create] == [("g1", 2)]
    assert [e.reason for e in d3.events] == ["GroupStarted"]
    assert d3.status["stages"][0]["pod"] == "seed-1-g1-a2"


def refused_by_kubelet(group: str, attempt: int = 1) -> dict[str, Any]:
    """A pod its node's kubelet failed at admission, as a real 1.24 kubelet leaves it: no container status."""
    p = pod(group, attempt, phase="Failed")
    p["status"] = {"phase": "Failed", "reason": "OutOfcpu",
                   "message": "Pod Node didn't have enough resource: cpu, requested: 500, used: 2000, "
                              "capacity: 2000"}
    return p


def test_a_pod_the_kubelet_refused_is_retried_at_once_without_using_an_attempt() -> None:
    """OutOfcpu (seen on the real tier under load): the kubelet's admission fails the pod before any
    container ran, so it has no finish time. Its retry time is fixed when the failure is first seen (a
    retry time recomputed from each pass's clock never came), it comes after a second, not the failure
    backoff, and the attempt is not counted against spec.retries."""
    s = run(start(), []).status
    refused = refused_by_kubelet("g1")
    d = run(s, [refused, pod("g2")])
    entry = d.status["stages"][0]
    assert entry["phase"] == "Retrying" and "OutOfcpu" in entry["message"], entry
    assert "refused by node node-1 at admission" in entry["message"] and "not counted" in entry["message"]
    assert entry["retryAt"] == "2026-01-01T00:01:01Z"
    assert entry["restarts"] == 1 and entry["admissionRejections"] == 1
    assert [e.reason for e in d.events] == ["GroupRetrying"]
    later = NOW + timedelta(milliseconds=500)
    d2 = run(d.status, [refused, pod("g2")], now=later)
    assert d2.status["stages"][0]["retryAt"] == "2026-01-01T00:01:01Z" and d2.create == [] and d2.events == []
    assert d2.status["stages"][0]["admissionRejections"] == 1
    d3 = run(d2.status, [refused, pod("g2")], now=NOW + timedelta(seconds=1))
    assert [(c.group.id, c.attempt) for c in d3.create] == [("g1", 2)]


def test_refusals_at_admission_are_free_five_times_in_a_row_then_count() -> None:
    """A node that refuses every pod (a broken device plugin: UnexpectedAdmissionError) must not retry a
    group forever: after ADMISSION_RETRIES free retries (1, 2, 4, 8, 8 s apart) refusals count as attempts,
    and with spec.retries 0 the next one fails the build, naming the kubelet's reason."""
    spec = make_spec(retries=0)
    s = run(start(), [], spec=spec).status
    now = NOW
    pods: list[dict[str, Any]] = []
    delays = []
    for attempt in range(1, ADMISSION_RETRIES + 2):
        pods = [p for p in pods if p["metadata"]["labels"]["stagefleet.io/group"] != "g2"]
        pods += [refused_by_kubelet("g1", attempt), pod("g2")]
        d = run(s, pods, now=now, spec=spec)
        s = d.status
        e = s["stages"][0]
        if attempt <= ADMISSION_RETRIES:
            assert e["phase"] == "Retrying" and e["restarts"] == attempt, e
            retry_at = datetime.strptime(e["retryAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            delays.append((retry_at - now).total_seconds())
            now = retry_at
            d = run(s, pods, now=now, spec=spec)
            assert [(c.group.id, c.attempt) for c in d.create] == [("g1", attempt + 1)]
            s = d.status
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert s["phase"] == "Failed" and "OutOfcpu" in s["message"], s["message"]
    assert s["failure"]["kind"] == "infrastructure"


def test_a_pod_that_ran_resets_the_count_of_refusals() -> None:
    s = run(start(), []).status
    d = run(s, [refused_by_kubelet("g1"), pod("g2")])
    d = run(d.status, [refused_by_kubelet("g1"), pod("g2")], now=NOW + timedelta(seconds=1))
    assert [c.attempt for c in d.create] == [2]
    d = run(d.status, [refused_by_kubelet("g1"), pod("g1", 2), pod("g2")], now=NOW + timedelta(seconds=2))
    assert d.status["stages"][0]["phase"] == "Running"
    assert "admissionRejections" not in d.status["stages"][0] and d.status["stages"][0]["restarts"] == 1


def test_a_failure_after_the_container_ran_is_no_admission_refusal() -> None:
    """OOMKilled is the container's own end (an exit code, a finish time): a counted attempt, the failure
    backoff."""
    s = run(start(), []).status
    d = run(s, [pod("g1", phase="Failed", exit_code=137, reason="OOMKilled"), pod("g2")])
    e = d.status["stages"][0]
    assert e["phase"] == "Retrying" and "restarts" not in e and e["retryAt"] == "2026-01-01T00:01:10Z", e


def test_retries_exhausted_fails_with_attempts() -> None:
    s = start()
    pods: list[dict[str, Any]] = []
    now = NOW
    for attempt in (1, 2, 3):
        d = run(s, pods, now=now)
        assert [c.attempt for c in d.create if c.group.id == "g1"] == [attempt]
        pods = [p for p in pods if p["metadata"]["labels"]["stagefleet.io/group"] != "g2"]
        pods += [
            pod("g1", attempt, phase="Failed", exit_code=1, finished=now.strftime("%Y-%m-%dT%H:%M:%SZ")),
            pod("g2"),
        ]
        s = run(d.status, pods, now=now).status
        now += timedelta(minutes=2)
    assert s["phase"] == "Failed"
    assert "after 3 attempts" in s["message"] and s["failure"]["attempts"] == 3


def test_vanished_pod_is_an_infrastructure_failure() -> None:
    s = run(start(), [pod("g1"), pod("g2")]).status
    d = run(s, [pod("g2")])
    assert phases(d.status)["build1"] == "Retrying"
    assert "disappeared" in d.status["stages"][0]["message"]


def test_missing_secret_stalls_then_resumes() -> None:
    missing = secret_problems(secret_needs(SPEC, SEED_PLAN), {"build-token": None})
    d = run(start(), [], missing=missing)
    st = d.status
    assert d.create == [] and st["phase"] == "Pending"
    assert (
        st["message"]
        == 'waiting for Secret "build-token" (spec.secrets[0].secretRef): not found in the namespace'
    )
    assert cond(st, "Stalled")["status"] == "True" and cond(st, "Stalled")["reason"] == "SecretNotFound"
    assert health.convention_problems(obj(st)) == []
    assert [e.reason for e in d.events] == ["SecretNotFound"]
    again = run(st, [], missing=missing)
    assert again.events == [] and again.requeue_after is not None and again.requeue_after <= 5
    d2 = run(st, [])
    assert len(d2.create) == 2 and d2.status["phase"] == "Building"
    assert cond(d2.status, "Stalled")["status"] == "False"


def test_timeout_cancels_and_stops_pods() -> None:
    s = run(start(), []).status
    d = run(s, [pod("g1"), pod("g2")], now=NOW + timedelta(minutes=11))
    assert d.status["phase"] == "Cancelled" and "timed out after 10m" in d.status["message"]
    assert d.delete == ["seed-1-g1-a1", "seed-1-g2-a1"]
    assert health.convention_problems(obj(d.status)) == []


def test_pod_deadline_exceeded_is_the_build_timeout_not_a_retry() -> None:
    s = run(start(), []).status
    d = run(
        s, [pod("g1", phase="Failed", reason="DeadlineExceeded"), pod("g2")], now=NOW + timedelta(minutes=9)
    )
    assert d.status["phase"] == "Cancelled" and d.create == [] and d.delete == ["seed-1-g2-a1"]


def test_old_generation_pods_are_deleted() -> None:
    d = run(start(), [pod("g1", generation=0), pod("g2", generation=0, deleting=True)])
    assert d.delete == ["seed-0-g1-a1"]
    assert len(d.create) == 2


def test_terminal_status_for_errors_before_planning() -> None:
    s = terminal_status(
        generation=2,
        phase="Failed",
        reason="DockerfileError",
        message="Dockerfile:3: unknown instruction FORM",
        old={},
        now=NOW,
    )
    assert s["phase"] == "Failed" and cond(s, "Stalled")["reason"] == "DockerfileError"
    assert health.convention_problems(obj(s, generation=2)) == []


def test_parse_result_takes_last_json_line() -> None:
    text = "noise\n" + result_json("g1", "build1", D1) + "\n"
    r = parse_result(text)
    assert r is not None and r.ok and r.digest == D1 and r.stages[0].name == "build1"
    assert parse_result("not json") is None and parse_result(None) is None
    assert parse_result(json.dumps([1])) is None


def test_image_pull_error_is_reported_then_retried_then_failed() -> None:
    s = run(start(), []).status
    pulling = pod("g1", phase="Pending", reason="ImagePullBackOff", created="2026-01-01T00:00:30Z")
    d = run(s, [pulling, pod("g2")])
    assert "ImagePullBackOff" in d.status["stages"][0]["message"] and d.delete == []
    # Still pulling two minutes later: an infrastructure failure; the pod is removed and retried.
    later = NOW + timedelta(minutes=2)
    d2 = run(d.status, [pulling, pod("g2")], now=later)
    assert phases(d2.status)["build1"] == "Retrying" and d2.delete == ["seed-1-g1-a1"]
    being_deleted = pod("g1", phase="Pending", reason="ImagePullBackOff", deleting=True)
    d3 = run(d2.status, [being_deleted, pod("g2")], now=later)
    assert phases(d3.status)["build1"] == "Retrying" and d3.create == []


def test_unusable_worker_security_context_fails_at_once_without_retries() -> None:
    """Exit 16: the pod spec itself keeps rootless buildah from working; another attempt fails alike."""
    s = run(start(), []).status
    hint = ("rootless buildah could not create a user namespace: ... set "
            "securityContext.seccompProfile.type: Unconfined on the worker container (or pod)")
    err = {"kind": "security-context", "message": hint}
    result = result_json("g1", "build1", "", ok=False, error=err)
    failed = pod("g1", phase="Failed", exit_code=16, message=result)
    d = run(s, [failed, pod("g2")], spec=make_spec(retries=3))
    st = d.status
    assert st["phase"] == "Failed" and phases(st)["build1"] == "Failed", st
    assert "securityContext.seccompProfile.type: Unconfined" in st["message"]
    assert st["failure"]["kind"] == "security-context" and st["failure"]["exitCode"] == 16
    assert st["failure"]["attempts"] == 1 and d.create == []


def test_invalid_builder_image_fails_at_once() -> None:
    s = run(start(), []).status
    d = run(s, [pod("g1", phase="Pending", reason="InvalidImageName"), pod("g2")])
    assert d.status["phase"] == "Failed" and "InvalidImageName" in d.status["message"]
    assert "seed-1-g1-a1" in d.delete and "seed-1-g2-a1" in d.delete


# --- early start: the next wave's pods start while their upstreams build ---------------------------------

# g1 → g2 → g3, each consuming the previous group's target: three waves.
LINE_PLAN = PlanView(
    target="c",
    groups=(
        GroupPlan("g1", ("a",), (), (), (), (), wave=0, critical=True),
        GroupPlan("g2", ("b",), ("g1",), (("a", "g1"),), (), (), wave=1, critical=True),
        GroupPlan("g3", ("c",), ("g2",), (("b", "g2"),), (), (), wave=2, critical=True),
    ),
    critical_path=("a", "b", "c"),
    final_group="g3",
)


def test_early_start_creates_the_final_pod_once_its_upstreams_run_and_it_waits() -> None:
    d0 = run(start(), [], early=True)
    assert [c.group.id for c in d0.create] == ["g1", "g2"]  # created, not running yet: no waiter
    half = run(d0.status, [pod("g1"), pod("g2", phase="Pending")], early=True)
    assert half.create == []  # build2's pod is not even running: a waiter could block its scheduling
    d = run(half.status, [pod("g1"), pod("g2")], early=True)
    assert [(c.group.id, c.attempt) for c in d.create] == [("g3", 1)]
    final = d.create[0]
    assert dict(final.upstream) == {} and final.waits_for == ("build1", "build2")
    assert phases(d.status) == {"build1": "Running", "build2": "Running", "final": "Pending"}
    assert d.status["stages"][2]["message"] == "started early: waits for build1, build2"
    assert d.status["message"] == "running g1, g2; g3 started early"
    # Adopted on the next pass; g1 done: g3 keeps its pod (no second one) and now waits only for build2.
    s = run(d.status, [pod("g1"), pod("g2"), pod("g3")], early=True).status
    done = [pod("g1", phase="Succeeded", message=result_json("g1", "build1", D1)), pod("g2"), pod("g3")]
    d2 = run(s, done, early=True)
    assert d2.create == [] and d2.delete == []
    assert d2.status["stages"][2]["message"] == "started early: waits for build2"
    both = [done[0], pod("g2", phase="Succeeded", message=result_json("g2", "build2", D2)), pod("g3")]
    d3 = run(d2.status, both, early=True)
    assert d3.create == [] and phases(d3.status)["final"] == "Running"
    assert "message" not in d3.status["stages"][2] and d3.status["message"] == "running g3"


def early_started() -> dict[str, Any]:
    """The seed with g1 and g2 running and g3's pod started early."""
    s = run(start(), [], early=True).status
    return run(s, [pod("g1"), pod("g2")], early=True).status


def test_without_early_start_the_final_waits_for_digests() -> None:
    d = run(start(), [], early=False)
    assert [c.group.id for c in d.create] == ["g1", "g2"]


def test_early_start_needs_a_free_slot_and_ready_groups_come_first() -> None:
    d = run(start(), [], early=True, spec=make_spec(maxParallelPods=2))
    assert [c.group.id for c in d.create] == ["g1", "g2"]
    d2 = run(d.status, [pod("g1"), pod("g2")], early=True, spec=make_spec(maxParallelPods=2))
    assert d2.create == []


def test_early_start_looks_one_wave_ahead_only() -> None:
    s0 = planned_status(generation=1, plan=LINE_PLAN, source={}, old={}, now=NOW)
    d = run(s0, [], early=True, plan=LINE_PLAN)
    assert [c.group.id for c in d.create] == ["g1"]
    d1 = run(d.status, [pod("g1")], early=True, plan=LINE_PLAN)
    assert [(c.group.id, c.waits_for) for c in d1.create] == [("g2", ("a",))]
    d2 = run(d1.status, [pod("g1"), pod("g2")], early=True, plan=LINE_PLAN)
    assert d2.create == []  # g2 runs, but only to wait for a: g3 would wait behind a waiter
    d3 = run(
        d2.status,
        [pod("g1", phase="Succeeded", message=result_json("g1", "a", D1)), pod("g2")],
        early=True,
        plan=LINE_PLAN,
    )
    # g2 now builds for real (its upstream succeeded): g3 may start and wait for b.
    assert [(c.group.id, c.waits_for) for c in d3.create] == [("g3", ("b",))]


def test_an_early_group_retried_while_its_upstream_retries_waits_for_it() -> None:
    s = run(early_started(), [pod("g1"), pod("g2"), pod("g3")], early=True).status
    failed = [pod("g1", phase="Failed", exit_code=14), pod("g2"), pod("g3", phase="Failed", exit_code=15)]
    d = run(s, failed, early=True)
    assert phases(d.status)["build1"] == "Retrying" and phases(d.status)["final"] == "Retrying"
    later = run(d.status, failed, early=True, now=NOW + timedelta(minutes=5))
    assert [(c.group.id, c.attempt) for c in later.create] == [("g1", 2)]  # g3 waits: g1 is not running
    again = [pod("g1", 2), *failed[1:]]
    d2 = run(later.status, [*failed, again[0]], early=True, now=NOW + timedelta(minutes=5))
    assert [(c.group.id, c.attempt, c.waits_for) for c in d2.create] == [("g3", 2, ("build1", "build2"))]


def test_a_result_built_from_another_upstream_digest_fails_the_group_and_is_retried() -> None:
    """Issue #14 item 4. A worker that waited by tag pinned whatever the tag named when it looked: a tag
    overwritten between the upstream's push and that pull gives a result built from other content. It is
    never accepted: the group fails (an infrastructure failure, counted, Warning) and its retry is given
    the recorded digest."""
    s = early_started()
    ups = [
        pod("g1", phase="Succeeded", message=result_json("g1", "build1", D1)),
        pod("g2", phase="Succeeded", message=result_json("g2", "build2", D2)),
    ]
    s = run(s, [*ups, pod("g3")], early=True).status
    other = "sha256:" + "9" * 64

    def final_with(used: dict[str, str] | None) -> dict[str, Any]:
        msg = result_json("g3", "final", D3, upstreams=used)
        waits = {"stagefleet.io/upstream-attempts": "g1=1,g2=1"}  # (what the early pod was created with)
        return pod("g3", phase="Succeeded", message=msg, annotations=waits)

    d = run(s, [*ups, final_with({"build1": D1, "build2": other})], early=True)
    assert d.status["phase"] == "Building" and "image" not in d.status and d.create == []
    final = d.status["stages"][2]
    assert final["phase"] == "Retrying" and final["attempts"] == 1 and "restarts" not in final
    mismatch = f"upstream digest mismatch: consumed build2@{other}, but group g2 recorded {D2}"
    assert mismatch in final["message"]
    assert [e.type for e in d.events if e.reason == "GroupRetrying"] == ["Warning"]
    assert [e for e in d.events if e.reason == "GroupRestarted"] == []
    # After the backoff the retry is given both upstreams by their recorded digests.
    bad = final_with({"build1": D1, "build2": other})
    later = run(d.status, [*ups, bad], now=NOW + timedelta(minutes=1))
    assert [(c.group.id, c.attempt, dict(c.upstream)) for c in later.create] == [
        (
            "g3",
            2,
            {
                "build1": ("127.0.0.1:5000/t/app/stages:g1", D1),
                "build2": ("127.0.0.1:5000/t/app/stages:g2", D2),
            },
        )
    ]
    # A waiter whose result does not name the digests it consumed is not accepted either.
    d_unreported = run(s, [*ups, final_with(None)], early=True)
    assert phases(d_unreported.status)["final"] == "Retrying"
    assert "consumed build1 without reporting its digest" in d_unreported.status["stages"][2]["message"]
    # With spec.retries used up the build fails; it never succeeds with the other content.
    no_retry = run(s, [*ups, bad], early=True, spec=make_spec(retries=0))
    assert no_retry.status["phase"] == "Failed" and "image" not in no_retry.status
    d2 = run(s, [*ups, final_with({"build1": D1, "build2": D2})], early=True)
    assert d2.status["phase"] == "Succeeded" and d2.create == []
    assert [e for e in d2.events if e.reason == "GroupRestarted"] == []


def test_the_build_succeeds_only_once_every_group_result_is_seen() -> None:
    """An early final pod may finish before the operator sees its upstream's result (a late watch event)."""
    s = early_started()
    g1 = pod("g1", phase="Succeeded", message=result_json("g1", "build1", D1))
    g3 = pod(
        "g3",
        phase="Succeeded",
        message=result_json("g3", "final", D3, upstreams={"build1": D1, "build2": D2}),
    )
    d = run(s, [g1, pod("g2"), g3], early=True)
    # (its result names build2's digest, not recorded yet: held until it is)
    assert d.status["phase"] == "Building" and phases(d.status)["final"] == "Running"
    assert "BuildSucceeded" not in [e.reason for e in d.events]
    d2 = run(d.status, [g1, pod("g2", phase="Succeeded", message=result_json("g2", "build2", D2)), g3])
    assert d2.status["phase"] == "Succeeded" and set(phases(d2.status).values()) == {"Succeeded"}
    assert d2.status["image"]["digest"] == D3


def test_an_early_pod_whose_upstream_fails_is_stopped() -> None:
    s = early_started()
    failed = [pod("g1", phase="Failed", exit_code=13, message="step 2 failed"), pod("g2"), pod("g3")]
    d = run(s, failed, early=True)
    assert d.status["phase"] == "Failed"
    assert d.delete == ["seed-1-g2-a1", "seed-1-g3-a1"] and d.create == []


# --- a whole build under random pod outcomes -------------------------------------------------------------

OUTCOMES = st.sampled_from(["run", "ok", "infra", "build", "vanish", "stay", "gc"])

# Like the seed, but g1 is a chain of two stages (only its target, build1, is pushed and consumed).
CHAIN3_PLAN = PlanView(
    target="final",
    groups=(
        GroupPlan("g1", ("base", "build1"), (), (), ("token",), (), wave=0, critical=True),
        GroupPlan("g2", ("build2",), (), (), (), (), wave=0),
        GroupPlan(
            "g3",
            ("final",),
            ("g1", "g2"),
            (("build1", "g1"), ("build2", "g2")),
            (),
            (),
            wave=1,
            critical=True,
        ),
    ),
    critical_path=("base", "build1", "final"),
    final_group="g3",
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["g1", "g2", "g3"]), OUTCOMES), max_size=40),
    st.integers(0, 3),
    st.integers(1, 3),
    st.sampled_from([SEED_PLAN, CHAIN3_PLAN]),
    st.booleans(),
)
def test_random_histories_keep_invariants(
    steps: list[tuple[str, str]], retries: int, parallel: int, plan: PlanView, early: bool
) -> None:
    """Whatever pods do (including finished pods being garbage-collected), the operator never runs two pods
    of a group at once, never reuses a pod name, never exceeds retries, never starts a group before its
    upstream succeeded (with early start: before every upstream is at least building), always hands it the
    real digests of the upstreams that succeeded, and always terminates."""
    spec = make_spec(retries=retries, maxParallelPods=parallel)
    status = planned_status(generation=1, plan=plan, source={}, old={}, now=NOW)
    pods: dict[str, dict[str, Any]] = {}
    created: set[str] = set()
    now = NOW
    digests = {"g1": D1, "g2": D2, "g3": D3}
    targets = {g.id: g.target for g in plan.groups}

    def group_of(p: dict[str, Any]) -> str:
        return str(p["metadata"]["labels"]["stagefleet.io/group"])

    def step() -> Decision:
        obs = [o for o in (observe_pod(p) for p in pods.values()) if o is not None]
        d = recorded(
            decide(
                build=BUILD,
                spec=spec,
                plan=plan,
                status=status,
                pods=obs,
                missing_secrets={},
                now=now,
                backoff_base=10,
                early_start=early,
            )
        )
        done = {s["group"] for s in d.status["stages"] if s["phase"] == "Succeeded"}
        building = done | {s["group"] for s in d.status["stages"] if s["phase"] == "Running"}
        for c in d.create:
            assert set(c.group.after) <= (building if early else done)
            assert {stage: digest for stage, (_, digest) in c.upstream.items()} == {
                stage: digests[gid] for stage, gid in c.group.consumes if gid in done
            }
            name = f"seed-1-{c.group.id}-a{c.attempt}"
            assert name not in created
            assert c.attempt <= 1 + retries
            live = [
                p
                for p in pods.values()
                if group_of(p) == c.group.id and p["status"]["phase"] in ("Pending", "Running")
            ]
            assert not live
            created.add(name)
            pods[name] = pod(c.group.id, c.attempt, phase="Pending")
        for name in d.delete:
            pods.pop(name, None)
        active = [p for p in pods.values() if p["status"]["phase"] in ("Pending", "Running")]
        assert len(active) <= parallel or d.status["phase"] in ("Failed", "Cancelled")
        assert health.convention_problems(obj(d.status)) == []
        return d

    consumes = {g.id: g.consumes for g in plan.groups}

    def finish(name: str, gid: str, attempt: int) -> None:
        used = {stage: digests[pg] for stage, pg in consumes[gid]}  # (the workers report what they took)
        pods[name] = pod(
            gid,
            attempt,
            phase="Succeeded",
            message=result_json(gid, targets[gid], digests[gid], upstreams=used),
        )

    for gid, outcome in steps:
        d = step()
        status = d.status
        now += timedelta(seconds=30)
        mine = sorted(
            (p for p in pods.values() if group_of(p) == gid),
            key=lambda p: int(p["metadata"]["labels"]["stagefleet.io/attempt"]),
        )
        if outcome == "gc":
            for p in mine:
                if p["status"]["phase"] in ("Succeeded", "Failed"):
                    del pods[p["metadata"]["name"]]
            continue
        if not mine or mine[-1]["status"]["phase"] not in ("Pending", "Running"):
            continue
        p = mine[-1]
        name = p["metadata"]["name"]
        attempt = int(p["metadata"]["labels"]["stagefleet.io/attempt"])
        if outcome == "run":
            pods[name] = pod(gid, attempt, phase="Running")
        elif outcome == "ok":
            finish(name, gid, attempt)
        elif outcome == "infra":
            pods[name] = pod(gid, attempt, phase="Failed", exit_code=14)
        elif outcome == "build":
            pods[name] = pod(gid, attempt, phase="Failed", exit_code=13)
        elif outcome == "vanish":
            del pods[name]
    # Let everything still running succeed; the build must end.
    for _ in range(30):
        d = step()
        status = d.status
        if status["phase"] in ("Succeeded", "Failed", "Cancelled"):
            break
        now += timedelta(minutes=1)
        for name, p in list(pods.items()):
            if p["status"]["phase"] in ("Pending", "Running"):
                finish(name, group_of(p), int(p["metadata"]["labels"]["stagefleet.io/attempt"]))
    assert status["phase"] in ("Succeeded", "Failed", "Cancelled")
    if status["phase"] == "Succeeded":
        assert status["image"]["digest"] == D3
        assert {s["phase"] for s in status["stages"]} == {"Succeeded"}, status["stages"]


def test_pod_signature_ignores_what_decide_does_not_read() -> None:
    a = pod("g1", phase="Running")
    b = json.loads(json.dumps(a))
    b["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    b["metadata"]["resourceVersion"] = "42"
    assert pod_signature(a) == pod_signature(b)
    assert pod_signature(a) != pod_signature(
        pod("g1", phase="Succeeded", message=result_json("g1", "build1", D1))
    )
    assert pod_signature(a) != pod_signature(pod("g1", phase="Running", deleting=True))


def test_observe_ignores_foreign_pods() -> None:
    assert observe_pod({"metadata": {"name": "x", "labels": {}}}) is None
    o = observe_pod(pod("g1", phase="Failed", exit_code=137, reason="OOMKilled"))
    assert isinstance(o, PodObservation) and o.exit_code == 137 and o.terminated


def test_secret_needs_only_what_the_plan_mounts_and_missing_keys_are_named() -> None:
    spec = make_spec(output={"image": "r.example/a/b", "pushSecretRef": {"name": "push"}})
    needs = secret_needs(spec, SEED_PLAN)
    assert [(n.name, n.key) for n in needs] == [("push", ".dockerconfigjson"), ("build-token", "value")]
    assert secret_problems(needs, {"push": {".dockerconfigjson"}, "build-token": {"value"}}) == {}
    problems = secret_problems(needs, {"push": {"config.json"}, "build-token": None})
    assert problems == {
        "push": 'Secret "push" has no key ".dockerconfigjson" (spec.output.pushSecretRef.key)',
        "build-token": 'Secret "build-token" (spec.secrets[0].secretRef): not found in the namespace',
    }


CHAIN_PLAN = PlanView(
    target="app",
    groups=(
        GroupPlan("g1", ("base", "deps"), (), (), (), (), wave=0, critical=True),
        GroupPlan("g2", ("app",), ("g1",), (("deps", "g1"),), (), (), wave=1, critical=True),
    ),
    critical_path=("base", "deps", "app"),
    final_group="g2",
)


def test_multi_stage_group_keeps_its_target_digest_across_passes() -> None:
    """After a restart the digest of a chain group must still come from its target stage's entry."""

    def step(status: dict[str, Any], pods: list[dict[str, Any]]) -> Decision:
        obs = [o for o in (observe_pod(p) for p in pods) if o is not None]
        return recorded(
            decide(
                build=BUILD, spec=SPEC, plan=CHAIN_PLAN, status=status, pods=obs, missing_secrets={}, now=NOW
            )
        )

    s = planned_status(generation=1, plan=CHAIN_PLAN, source={}, old={}, now=NOW)
    s = step(s, []).status
    ok = pod("g1", phase="Succeeded", message=result_json("g1", "deps", D1))
    s = step(s, [ok]).status
    assert {e["name"]: e.get("digest") for e in s["stages"]} == {"base": None, "deps": D1, "app": None}
    # A later pass (e.g. a restarted operator) with g1's pod gone: g2 still gets deps' digest.
    s2 = dict(s)
    s2["stages"] = [dict(e, phase="Waiting") if e["group"] == "g2" else e for e in s["stages"]]
    s2["stages"] = [
        {k: v for k, v in e.items() if not (e["group"] == "g2" and k in ("pod", "attempts"))}
        for e in s2["stages"]
    ]
    d = step(s2, [])
    assert [(c.group.id, dict(c.upstream)) for c in d.create] == [
        ("g2", {"deps": ("127.0.0.1:5000/t/app/stages:g1", D1)})
    ]
    assert {e["name"]: e.get("digest") for e in d.status["stages"]}["deps"] == D1
