"""status.py: a worker pod refused by the namespace's ResourceQuota ("exceeded quota") is a wait, not an
error: the group waits and is tried again within seconds, the build stays Reconciling with reason
WaitingForQuota (never Stalled), one Normal event when the wait begins; a quota that can never admit the
pod ("failed quota: must specify limits") is still PodRejected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stagefleet import health
from stagefleet.controller import trust
from stagefleet.controller.buildphase import QUOTA, REJECTED
from stagefleet.controller.podspec import BuildRef, pod_name
from stagefleet.controller.rejections import (
    note_rejections,
    quota_exhausted,
    rejection_backoff,
    rejection_text,
)
from stagefleet.controller.report import planned_status
from stagefleet.controller.status import Decision

from .helpers import BUILD, SEED_PLAN, decide_pods, make_spec, pod, result_json, uid_of

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
SPEC = make_spec()
D1 = "sha256:" + "1" * 64
BASE = 1.0


def quota_refusal(pod_name: str, used: int = 1) -> str:
    """A real kube-apiserver's answer to a pod over a `pods: 1` ResourceQuota, as the operator records it."""
    api = (f'pods "{pod_name}" is forbidden: exceeded quota: builds, requested: pods=1, used: pods={used}, '
           f"limited: pods=1")
    return rejection_text("Pod", pod_name, 403, "Forbidden", api)


def limits_refusal(pod_name: str) -> str:
    api = f'pods "{pod_name}" is forbidden: failed quota: builds: must specify limits.cpu'
    return rejection_text("Pod", pod_name, 403, "Forbidden", api)


def run(status: dict[str, Any], pods: list[dict[str, Any]], now: datetime = NOW) -> Decision:
    return decide_pods(status, pods, now=now, spec=SPEC, backoff_base=BASE)


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def entry(status: dict[str, Any], stage: str) -> dict[str, Any]:
    return next(s for s in status["stages"] if s["name"] == stage)


def one_admitted() -> tuple[dict[str, Any], Decision]:
    """The first pass under a one-pod quota, as the reconciler runs it: g1's pod created (and recorded),
    g2's refused by the quota (its group marked in the input status), decided again."""
    s = planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)
    first = decide_pods(s, [], now=NOW, spec=SPEC, backoff_base=BASE, record=False)
    assert sorted(c.group.id for c in first.create) == ["g1", "g2"]
    name = pod_name(BuildRef(BUILD.name, BUILD.namespace, BUILD.uid, 1), "g1", 1)
    created = {"g1": (1, name, uid_of(name), trust.token_hash("t"))}
    marked = trust.with_created(note_rejections(s, {"g2": quota_refusal("seed-1-g2-a1")}, NOW, BASE), created)
    return marked, run(marked, [pod("g1", token="t")])


def test_only_exceeded_quota_is_a_wait() -> None:
    assert quota_exhausted(quota_refusal("p"))
    assert not quota_exhausted(limits_refusal("p"))
    sa = rejection_text("Pod", "p", 403, "Forbidden", 'pods "p" is forbidden: serviceaccount "x" not found')
    assert not quota_exhausted(sa) and not quota_exhausted(None)
    # A 422 that quotes the words is not the quota plugin speaking.
    assert not quota_exhausted(rejection_text("Pod", "p", 422, "Invalid", "exceeded quota: in a label"))


def test_a_quota_refusal_keeps_the_build_reconciling_with_the_reason() -> None:
    _, d = one_admitted()
    st = d.status
    assert st["phase"] == "Building"
    assert st["message"] == (
        "running g1; waiting for the namespace's ResourceQuota: group g2 (build2) not started: "
        + quota_refusal("seed-1-g2-a1")
    )
    assert cond(st, "Stalled")["status"] == "False"
    rec = cond(st, "Reconciling")
    assert (rec["status"], rec["reason"], rec["message"]) == ("True", QUOTA, st["message"])
    assert health.kstatus({"kind": "ImageBuild", "metadata": {"generation": 1}, "status": st}).status == (
        "InProgress")
    assert [(e.type, e.reason) for e in d.events if e.reason in (QUOTA, REJECTED)] == [("Normal", QUOTA)]
    g2 = entry(st, "build2")
    assert g2["phase"] == "Waiting" and g2["attempts"] == 0 and g2["rejections"] == 1
    assert g2["retryAt"] == "2026-01-01T00:01:01Z"


def test_quota_retries_back_off_to_five_seconds_with_no_new_event() -> None:
    assert [rejection_backoff(n, BASE, quota=True) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    _, d = one_admitted()
    status, now = d.status, NOW
    for n in range(2, 6):
        now = datetime.fromisoformat(entry(status, "build2")["retryAt"].replace("Z", "+00:00"))
        due = run(status, [pod("g1", token="t")], now=now)
        assert [(c.group.id, c.attempt) for c in due.create] == [("g2", 1)]  # a refusal used no attempt
        marked = note_rejections(status, {"g2": quota_refusal("seed-1-g2-a1")}, now, BASE)
        after = run(marked, [pod("g1", token="t")], now=now)
        assert [e.reason for e in after.events if e.reason in (QUOTA, REJECTED)] == [], n
        assert cond(after.status, "Reconciling")["reason"] == QUOTA
        assert entry(after.status, "build2")["rejections"] == n
        status = after.status
    assert entry(status, "build2")["retryAt"] == "2026-01-01T00:01:17Z"  # +1 +2 +4 +5 +5


def test_the_build_goes_on_once_the_quota_admits_the_pod() -> None:
    _, d = one_admitted()
    later = NOW + timedelta(seconds=1)
    done = pod("g1", phase="Succeeded", token="t", message=result_json("g1", "build1", D1))
    due = run(d.status, [done], now=later)
    assert [(c.group.id, c.attempt) for c in due.create] == [("g2", 1)]
    st = due.status
    assert cond(st, "Reconciling")["reason"] != QUOTA and "ResourceQuota" not in st["message"]
    assert "rejections" not in entry(st, "build2")


def test_nothing_admitted_is_pending_and_a_quota_that_never_admits_is_stalled() -> None:
    s = planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)
    refusals = {"g1": quota_refusal("seed-1-g1-a1"), "g2": quota_refusal("seed-1-g2-a1")}
    d = run(note_rejections(s, refusals, NOW, BASE), [])
    assert d.status["phase"] == "Pending" and cond(d.status, "Stalled")["status"] == "False"
    assert d.status["message"].startswith("waiting for the namespace's ResourceQuota: group g1 (build1)")
    # A pod spec the quota can never admit needs a fix: Stalled, PodRejected, a Warning.
    limits = {"g1": limits_refusal("seed-1-g1-a1"), "g2": quota_refusal("seed-1-g2-a1")}
    d = run(note_rejections(s, limits, NOW, BASE), [])
    stalled = cond(d.status, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == REJECTED
    assert "must specify limits.cpu" in stalled["message"]
    assert [e.type for e in d.events if e.reason == REJECTED] == ["Warning"]
