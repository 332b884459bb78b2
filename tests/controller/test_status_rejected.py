"""status.py: worker pods the API server refuses to create (a missing ServiceAccount, Pod Security, a quota, a
webhook, an invalid field) leave their groups waiting, the build Stalled with reason PodRejected and the API's
words, one Warning event per distinct message; the create is retried after a growing delay, uses no attempt,
the build resumes once a pod is created, and spec.timeout counts all along."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as hst

from stagefleet import health
from stagefleet.controller import trust
from stagefleet.controller.buildphase import REJECTED
from stagefleet.controller.model import PlanView
from stagefleet.controller.rejections import note_rejections, rejection_backoff, rejection_text
from stagefleet.controller.report import planned_status
from stagefleet.controller.secretneeds import secret_needs, secret_problems
from stagefleet.controller.status import Decision
from stagefleet.controller.urgency import urgent_change

from .helpers import SEED_PLAN, decide_pods, make_spec, pod, result_json

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
SPEC = make_spec()
BASE = 5.0


def sa_refusal(pod_name: str, sa: str = "nope") -> str:
    """What the operator makes of a real kube-apiserver's answer to a pod naming a missing ServiceAccount."""
    api = (
        f'pods "{pod_name}" is forbidden: error looking up service account ns/{sa}: '
        f'serviceaccount "{sa}" not found'
    )
    return rejection_text("Pod", pod_name, 403, "Forbidden", api)


def run(
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    *,
    now: datetime = NOW,
    spec: Any = SPEC,
    plan: PlanView = SEED_PLAN,
    missing: dict[str, str] | None = None,
) -> Decision:
    return decide_pods(status, pods, now=now, spec=spec, plan=plan, missing=missing, backoff_base=BASE)


def start() -> dict[str, Any]:
    return planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def entry(status: dict[str, Any], stage: str) -> dict[str, Any]:
    return next(s for s in status["stages"] if s["name"] == stage)


def obj(status: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ImageBuild", "metadata": {"generation": 1}, "status": status}


def refused_everything(now: datetime = NOW) -> tuple[dict[str, Any], Decision]:
    """The first pass: both first-wave pods refused (the input status marked, then decided again)."""
    s = start()
    first = run(s, [], now=now)
    assert sorted(c.group.id for c in first.create) == ["g1", "g2"]
    marked = note_rejections(
        s, {"g1": sa_refusal("seed-1-g1-a1"), "g2": sa_refusal("seed-1-g2-a1")}, now, BASE
    )
    return marked, run(marked, [], now=now)


def test_refused_pods_stall_the_build_pending_with_the_apis_words_and_one_event() -> None:
    _, d = refused_everything()
    st = d.status
    assert d.create == [] and d.delete == []
    assert st["phase"] == "Pending" and st["startTime"] == "2026-01-01T00:01:00Z"
    assert st["message"] == (
        "group g1 (build1) not started: pod seed-1-g1-a1 refused by the API (403 Forbidden): "
        'pods "seed-1-g1-a1" is forbidden: error looking up service account ns/nope: '
        'serviceaccount "nope" not found; '
        "group g2 (build2) not started: pod seed-1-g2-a1 refused by the API (403 Forbidden): "
        'pods "seed-1-g2-a1" is forbidden: error looking up service account ns/nope: '
        'serviceaccount "nope" not found'
    )
    stalled = cond(st, "Stalled")
    assert (stalled["status"], stalled["reason"], stalled["message"]) == ("True", REJECTED, st["message"])
    assert cond(st, "Ready")["status"] == "False" and cond(st, "Reconciling")["status"] == "False"
    assert health.convention_problems(obj(st)) == []
    assert health.kstatus(obj(st)).status == "Failed"  # kstatus: Stalled
    assert [(e.type, e.reason, e.message) for e in d.events] == [("Warning", REJECTED, st["message"])]
    g1 = entry(st, "build1")
    assert g1["phase"] == "Waiting" and g1["attempts"] == 0 and "pod" not in g1
    assert g1["rejections"] == 1 and g1["retryAt"] == "2026-01-01T00:01:05Z"
    assert g1["message"] == sa_refusal("seed-1-g1-a1")
    assert entry(st, "final")["phase"] == "Waiting" and "rejections" not in entry(st, "final")
    assert d.requeue_after == 5.0
    assert urgent_change(start(), st) is not None


def test_passes_before_the_retry_time_change_nothing_and_emit_nothing() -> None:
    _, d = refused_everything()
    again = run(d.status, [], now=NOW + timedelta(seconds=3))
    assert again.create == [] and again.events == []
    assert again.status == d.status
    assert again.requeue_after == 2.0


def test_the_create_is_retried_with_a_growing_backoff_capped_and_one_event_per_message() -> None:
    assert [rejection_backoff(n, BASE) for n in range(1, 7)] == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]
    _, d = refused_everything()
    status, now = d.status, NOW
    retry_ats = []
    for n in range(2, 6):
        now = datetime.fromisoformat(entry(status, "build1")["retryAt"].replace("Z", "+00:00"))
        due = run(status, [], now=now)
        # The same pod names again: a refused create used no attempt.
        assert sorted((c.group.id, c.attempt) for c in due.create) == [("g1", 1), ("g2", 1)]
        marked = note_rejections(
            status, {"g1": sa_refusal("seed-1-g1-a1"), "g2": sa_refusal("seed-1-g2-a1")}, now, BASE
        )
        after = run(marked, [], now=now)
        assert after.events == [], n  # same message: no new event
        assert entry(after.status, "build1")["rejections"] == n
        assert cond(after.status, "Stalled")["lastTransitionTime"] == "2026-01-01T00:01:00Z"
        assert urgent_change(status, after.status) == "stage build1: pod refused"
        retry_ats.append(entry(after.status, "build1")["retryAt"])
        status = after.status
    assert retry_ats == [
        "2026-01-01T00:01:15Z",  # +10 s
        "2026-01-01T00:01:35Z",  # +20 s
        "2026-01-01T00:02:05Z",  # +30 s (cap)
        "2026-01-01T00:02:35Z",  # +30 s
    ]
    # Another cause (the ServiceAccount named changed, or a quota now) is news: one more event.
    other = {"g1": sa_refusal("seed-1-g1-a1", "other"), "g2": sa_refusal("seed-1-g2-a1", "other")}
    marked = note_rejections(status, other, now, BASE)
    changed = run(marked, [], now=now)
    assert [e.reason for e in changed.events] == [REJECTED]
    assert 'serviceaccount "other" not found' in changed.events[0].message


def test_once_the_pods_are_created_the_build_resumes_and_is_no_longer_stalled() -> None:
    _, d = refused_everything()
    later = NOW + timedelta(seconds=5)
    due = run(d.status, [], now=later)
    assert sorted(c.group.id for c in due.create) == ["g1", "g2"]
    st = due.status  # written with the pods created
    assert st["phase"] == "Building" and cond(st, "Stalled")["status"] == "False"
    assert cond(st, "Reconciling")["status"] == "True"
    g1 = entry(st, "build1")
    assert g1["phase"] == "Pending" and g1["attempts"] == 1 and g1["pod"] == "seed-1-g1-a1"
    assert "rejections" not in g1 and "retryAt" not in g1 and "message" not in g1
    assert due.events == [] and urgent_change(d.status, st) is not None
    assert health.convention_problems(obj(st)) == []
    running = run(st, [pod("g1"), pod("g2")], now=later + timedelta(seconds=5))
    assert running.status["phase"] == "Building" and running.create == []
    assert cond(running.status, "Stalled")["status"] == "False"


def test_a_pod_found_for_a_refused_group_is_adopted() -> None:
    """A pass recorded the pods it was about to create (write-ahead: their creation tokens' hashes),
    created them (the cause was fixed), but the status write after that was lost: the pods carrying
    those tokens are adopted and the mark goes (controller.trust)."""
    _, d = refused_everything()
    later = NOW + timedelta(seconds=5)
    due = decide_pods(d.status, [], now=later, spec=SPEC, backoff_base=BASE, record=False)
    intent = trust.with_intents(due.status, {"g1": trust.token_hash("t1"), "g2": trust.token_hash("t2")})
    pods = [pod("g1", phase="Pending", token="t1"), pod("g2", phase="Pending", token="t2")]
    adopted = run(intent, pods, now=later)
    assert entry(adopted.status, "build1")["podUID"] == pods[0]["metadata"]["uid"]
    assert adopted.create == [] and adopted.status["phase"] == "Building"
    assert "rejections" not in entry(adopted.status, "build1")
    assert cond(adopted.status, "Stalled")["status"] == "False"


def test_a_refused_retry_keeps_its_attempts_and_waits_for_the_refusal_backoff() -> None:
    s = run(start(), []).status
    failed = run(s, [pod("g1", phase="Failed", exit_code=14), pod("g2")])
    assert entry(failed.status, "build1")["phase"] == "Retrying"
    due_at = datetime.fromisoformat(entry(failed.status, "build1")["retryAt"].replace("Z", "+00:00"))
    pods = [pod("g1", phase="Failed", exit_code=14), pod("g2")]
    due = run(failed.status, pods, now=due_at)
    assert [(c.group.id, c.attempt) for c in due.create] == [("g1", 2)]
    assert [e.reason for e in due.events] == ["GroupStarted"]
    marked = note_rejections(failed.status, {"g1": sa_refusal("seed-1-g1-a2")}, due_at, BASE)
    after = run(marked, pods, now=due_at)
    st = after.status
    assert after.create == [] and [e.reason for e in after.events] == [REJECTED]  # no GroupStarted
    g1 = entry(st, "build1")
    assert g1["phase"] == "Retrying" and g1["attempts"] == 1 and g1["pod"] == "seed-1-g1-a1"
    assert g1["message"] == sa_refusal("seed-1-g1-a2")
    # The failed pod is not judged again: the retry waits for the refusal's backoff, not the failure's.
    assert due_at == NOW + timedelta(seconds=5) and g1["retryAt"] == "2026-01-01T00:01:10Z"
    assert st["phase"] == "Building" and cond(st, "Stalled")["reason"] == REJECTED
    assert health.convention_problems(obj(st)) == []
    assert run(st, pods, now=due_at + timedelta(seconds=3)).create == []
    again = run(st, pods, now=due_at + timedelta(seconds=5))
    assert [(c.group.id, c.attempt) for c in again.create] == [("g1", 2)]


def test_a_refused_group_leaves_its_slot_to_another() -> None:
    spec = make_spec(maxParallelPods=1)
    s = start()
    first = run(s, [], spec=spec)
    assert [c.group.id for c in first.create] == ["g1"]  # the critical path first
    marked = note_rejections(s, {"g1": sa_refusal("seed-1-g1-a1")}, NOW, BASE)
    second = run(marked, [], spec=spec)
    assert [c.group.id for c in second.create] == ["g2"]
    assert second.status["phase"] == "Building" and cond(second.status, "Stalled")["reason"] == REJECTED


def test_the_timeout_counts_while_every_pod_is_refused() -> None:
    spec = make_spec(timeout="5s")
    s = start()
    marked = note_rejections(
        s, {"g1": sa_refusal("seed-1-g1-a1"), "g2": sa_refusal("seed-1-g2-a1")}, NOW, BASE
    )
    stalled = run(marked, [], spec=spec)
    assert stalled.status["phase"] == "Pending" and stalled.requeue_after == 5.0
    over = run(stalled.status, [], spec=spec, now=NOW + timedelta(seconds=5))
    st = over.status
    assert st["phase"] == "Cancelled" and over.create == []
    assert st["message"].startswith("timed out after 5s (spec.timeout); group g1 (build1) not started: ")
    assert 'serviceaccount "nope" not found' in st["message"]
    assert (cond(st, "Stalled")["status"], cond(st, "Stalled")["reason"]) == ("True", "Timeout")
    assert {s["phase"] for s in st["stages"]} == {"Cancelled"}
    assert all("rejections" not in s and "retryAt" not in s for s in st["stages"])
    assert [e.reason for e in over.events] == ["BuildCancelled"]
    assert health.convention_problems(obj(st)) == [] and health.kstatus(obj(st)).status == "Failed"


def test_a_missing_secret_is_named_first() -> None:
    missing = secret_problems(secret_needs(SPEC, SEED_PLAN), {"build-token": None})
    _, d = refused_everything()
    both = run(d.status, [], missing=missing, now=NOW + timedelta(seconds=10))
    assert both.create == [] and cond(both.status, "Stalled")["reason"] == "SecretNotFound"
    assert [e.reason for e in both.events] == ["SecretNotFound"]


OUTCOMES = hst.sampled_from(["refused", "refused-other", "created"])


@settings(max_examples=150, deadline=None)
@given(hst.lists(OUTCOMES, max_size=30), hst.integers(1, 3))
def test_refusals_never_use_attempts_and_keep_the_conventions(outcomes: list[str], parallel: int) -> None:
    """Whatever the API answers to each create (refused for one cause or another, or created), no pod
    name is tried after it was created, the attempt is always 1 (nothing failed), every status keeps the
    kstatus conventions, Stalled says PodRejected exactly while a group is marked, an event only when that
    starts or its message changes; once creates go through the build succeeds."""
    spec = make_spec(maxParallelPods=parallel, timeout="1h")
    status = start()
    now = NOW
    pods: dict[str, dict[str, Any]] = {}
    answers = iter(outcomes)
    targets = {g.id: g.target for g in SEED_PLAN.groups}
    digests = {"g1": D1, "g2": D2, "g3": D3}
    for _ in range(200):
        d = run(status, list(pods.values()), now=now, spec=spec)
        rejected: dict[str, str] = {}
        for c in d.create:
            name = f"seed-1-{c.group.id}-a{c.attempt}"
            assert c.attempt == 1 and name not in pods
            answer = next(answers, "created")
            if answer == "created":
                pods[name] = pod(c.group.id, phase="Pending")
            else:
                rejected[c.group.id] = sa_refusal(name, "nope" if answer == "refused" else "other")
        if rejected:
            marked = note_rejections(status, rejected, now, BASE)
            d = run(marked, list(pods.values()), now=now, spec=spec)
            assert all(c.group.id not in rejected for c in d.create)
            for c in d.create:  # the slots the refused groups left
                pods[f"seed-1-{c.group.id}-a{c.attempt}"] = pod(c.group.id, phase="Pending")
        st = d.status
        assert health.convention_problems(obj(st)) == []
        marked_groups = {s["group"] for s in st["stages"] if s.get("rejections")}
        stalled = cond(st, "Stalled")
        assert (stalled["status"] == "True" and stalled["reason"] == REJECTED) == bool(marked_groups)
        # One event when the build becomes stalled by a refusal or the refusal's message changes, else none.
        before = cond(status, "Stalled")
        news = (stalled["status"], stalled["reason"], stalled["message"]) != (
            before["status"],
            before["reason"],
            before["message"],
        )
        expected = [stalled["message"]] if marked_groups and news else []
        assert [e.message for e in d.events if e.reason == REJECTED] == expected
        status = st
        if st["phase"] == "Succeeded":
            break
        now += timedelta(seconds=10)
        for name, p in list(pods.items()):  # every created pod finishes well
            gid = p["metadata"]["labels"]["stagefleet.io/group"]
            if p["status"]["phase"] == "Pending":
                pods[name] = pod(gid, phase="Succeeded", message=result_json(gid, targets[gid], digests[gid]))
    assert status["phase"] == "Succeeded", status
