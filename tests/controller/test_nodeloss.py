"""nodeloss.py and its use in status.decide: pods on a node that stopped reporting (or stuck Terminating)
are lost: force-deleted and retried elsewhere; results are per attempt, and a pod that waited for (or built
from) a superseded upstream attempt is restarted against the new one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stagefleet.controller.nodeloss import (
    NODE_LOST,
    STUCK_TERMINATING,
    NodeReadiness,
    lost_pods,
    next_loss_in,
    node_readiness,
)
from stagefleet.controller.observe import observe_pod
from stagefleet.controller.podspec import (
    ANNOTATION_UPSTREAM_ATTEMPTS,
    ResolvedSource,
    WorkerConfig,
    format_attempts,
    parse_attempts,
    worker_pod,
)
from stagefleet.controller.report import planned_status
from stagefleet.controller.status import Decision, StartPod

from .helpers import BUILD, SEED_PLAN, adopted, decide_pods, make_spec, pod, result_json

T0 = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
D1, D1B, D2, D3 = ("sha256:" + c * 64 for c in "1a23")
GRACE = 60.0
SPEC = make_spec()


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def unknown_since(t: datetime) -> dict[str, NodeReadiness]:
    return {"node-1": NodeReadiness("Unknown", t), "node-2": NodeReadiness("True", T0 - timedelta(hours=1))}


HEALTHY = {"node-1": NodeReadiness("True", T0 - timedelta(hours=1)), "node-2": NodeReadiness("True", T0)}


def with_waits(p: dict[str, Any], waits: dict[str, int]) -> dict[str, Any]:
    p["metadata"]["annotations"] = {ANNOTATION_UPSTREAM_ATTEMPTS: format_attempts(waits)}
    return p


def deleting_at(p: dict[str, Any], t: datetime) -> dict[str, Any]:
    p["metadata"]["deletionTimestamp"] = iso(t)
    return p


def run(
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    *,
    now: datetime,
    nodes: dict[str, NodeReadiness] | None = HEALTHY,
    early: bool = True,
    spec: Any = SPEC,
) -> Decision:
    return decide_pods(status, pods, now=now, spec=spec, backoff_base=10, early_start=early, nodes=nodes,
                       node_lost_after=GRACE)


def phases(status: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["phase"] for s in status["stages"]}


def entry(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["stages"] if s["name"] == name)


def running_seed() -> dict[str, Any]:
    """g1 and g2 running on node-1 and node-2, g3 started early (waiting for both, attempt 1 of each)."""
    s = planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=T0)
    s = run(s, [], now=T0).status
    d = run(s, [pod("g1"), pod("g2", node="node-2")], now=T0)
    assert [(c.group.id, dict(c.upstream_attempts)) for c in d.create] == [("g3", {"g1": 1, "g2": 1})]
    return run(d.status, seed_pods(), now=T0).status


def seed_pods() -> list[dict[str, Any]]:
    return [pod("g1"), pod("g2", node="node-2"), with_waits(pod("g3", node="node-2"), {"g1": 1, "g2": 1})]


# --- the pure rule ---------------------------------------------------------------------------------------


def obs(p: dict[str, Any]) -> Any:
    o = observe_pod(p)
    assert o is not None
    return o


def test_a_pod_is_lost_once_its_node_has_not_been_ready_for_the_grace_period() -> None:
    p = obs(pod("g1"))
    nodes = unknown_since(T0)
    assert lost_pods([p], nodes, T0 + timedelta(seconds=59), GRACE) == {}
    assert next_loss_in([p], nodes, T0 + timedelta(seconds=59), GRACE) == 1.0
    (lost,) = lost_pods([p], nodes, T0 + timedelta(seconds=60), GRACE).values()
    assert (lost.pod, lost.reason, lost.node, lost.at) == (
        "seed-1-g1-a1",
        NODE_LOST,
        "node-1",
        T0 + timedelta(seconds=60),
    )
    assert lost.message == (
        "pod seed-1-g1-a1: node node-1 stopped reporting (Ready=Unknown) since 2026-01-01T00:01:00Z, "
        "over 60 s"
    )
    assert next_loss_in([p], nodes, T0 + timedelta(seconds=60), GRACE) is None
    # Ready=False (the kubelet reports NotReady) counts the same way.
    (not_ready,) = lost_pods([p], {"node-1": NodeReadiness("False", T0)}, T0 + timedelta(minutes=2)).values()
    assert not_ready.reason == NODE_LOST and "node node-1 is NotReady" in not_ready.message


def test_finished_pods_ready_nodes_and_unknown_nodes_lose_nothing() -> None:
    late = T0 + timedelta(hours=1)
    done = obs(pod("g1", phase="Succeeded", message=result_json("g1", "build1", D1)))
    assert lost_pods([done], unknown_since(T0), late) == {}
    assert lost_pods([obs(pod("g1"))], HEALTHY, late) == {}
    assert lost_pods([obs(pod("g1", node="deleted-node"))], unknown_since(T0), late) == {}
    assert lost_pods([obs(pod("g1"))], None, late) == {}  # no Node access and not deleting: nothing known


def test_a_pod_stuck_terminating_is_lost_even_without_node_access() -> None:
    p = obs(deleting_at(pod("g1"), T0))
    assert lost_pods([p], None, T0 + timedelta(seconds=59)) == {}
    assert next_loss_in([p], None, T0, GRACE) == 60.0
    (lost,) = lost_pods([p], None, T0 + timedelta(seconds=60)).values()
    assert lost.reason == STUCK_TERMINATING and lost.node == "node-1"
    assert (
        lost.message
        == "pod seed-1-g1-a1: stuck Terminating on node node-1 since 2026-01-01T00:01:00Z, over 60 s"
    )
    # The earlier of the two reasons decides.
    (first,) = lost_pods([p], unknown_since(T0 - timedelta(seconds=30)), T0 + timedelta(seconds=30)).values()
    assert first.reason == NODE_LOST and first.at == T0 + timedelta(seconds=30)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["True", "False", "Unknown", None]),
    st.integers(-300, 300),
    st.one_of(st.none(), st.integers(-300, 300)),
    st.sampled_from(["Running", "Pending", "Succeeded", "Failed"]),
    st.integers(0, 120),
)
def test_lost_exactly_when_a_grace_period_ran_out(
    ready: str | None, since: int, deleted: int | None, phase: str, grace: int
) -> None:
    p = pod("g1", phase=phase, message=result_json("g1", "build1", D1) if phase == "Succeeded" else None)
    if deleted is not None:
        deleting_at(p, T0 + timedelta(seconds=deleted))
    nodes = {} if ready is None else {"node-1": NodeReadiness(ready, T0 + timedelta(seconds=since))}
    o = obs(p)
    finished = phase in ("Succeeded", "Failed")
    by_node = ready not in (None, "True") and since + grace <= 0
    by_deletion = deleted is not None and deleted + grace <= 0
    assert (o.name in lost_pods([o], nodes, T0, grace)) == (not finished and (by_node or by_deletion))
    wait = next_loss_in([o], nodes, T0, grace)
    if wait is not None:
        assert wait > 0 and not finished
        assert o.name in lost_pods([o], nodes, T0 + timedelta(seconds=wait), grace)
        assert lost_pods([o], nodes, T0 + timedelta(seconds=wait - 0.5), grace) == {}


def test_node_readiness_reads_the_ready_condition() -> None:
    node = {
        "metadata": {"name": "n1"},
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "Unknown", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": "Unknown", "lastTransitionTime": "2026-01-01T00:01:00Z"},
            ]
        },
    }
    assert node_readiness(node) == ("n1", NodeReadiness("Unknown", T0))
    assert node_readiness({"metadata": {"name": "new"}}) == ("new", NodeReadiness("Unknown", None))


def test_upstream_attempts_annotation_round_trips() -> None:
    assert parse_attempts(format_attempts({"g2": 3, "g1": 1})) == {"g1": 1, "g2": 3}
    assert format_attempts({"g2": 3, "g1": 1}) == "g1=1,g2=3"
    assert parse_attempts("g1=1,junk,g2=x,=4,") == {"g1": 1}
    assert parse_attempts(None) == {}


# --- in decide -------------------------------------------------------------------------------------------


def test_a_group_on_a_lost_node_is_retried_and_its_pod_force_deleted() -> None:
    s = running_seed()
    nodes = unknown_since(T0)
    # Not yet past the grace period: still Running, and a pass is due when it ends.
    d = run(s, seed_pods(), now=T0 + timedelta(seconds=20), nodes=nodes)
    assert phases(d.status)["build1"] == "Running" and d.force_delete == []
    assert d.requeue_after == 40.0
    lost_at = T0 + timedelta(seconds=60)
    d = run(s, seed_pods(), now=lost_at + timedelta(seconds=3), nodes=nodes)
    assert d.force_delete == ["seed-1-g1-a1"] and "seed-1-g1-a1" not in d.delete
    b1 = entry(d.status, "build1")
    retry_at = iso(lost_at + timedelta(seconds=10))
    assert b1["phase"] == "Retrying" and b1["attempts"] == 1 and b1["retryAt"] == retry_at
    assert b1["message"].startswith(
        "attempt 1 failed: NodeLost: pod seed-1-g1-a1: node node-1 stopped reporting"
    )
    assert [e.reason for e in d.events].count("GroupRetrying") == 1
    # The final waited for g1's attempt 1, whose tag now only the lost pod could push: restarted.
    final = entry(d.status, "final")
    assert final["phase"] == "Waiting" and final["restarts"] == 1 and final["attempts"] == 1
    assert final["message"] == "restarting: upstream group g1 attempt 1 was superseded"
    assert d.delete == ["seed-1-g3-a1"]
    assert "GroupRestarted" in [e.reason for e in d.events]
    # The force delete did not happen (say, the API failed): the same verdict, no second event.
    again = run(d.status, seed_pods(), now=lost_at + timedelta(seconds=5), nodes=nodes)
    assert again.force_delete == ["seed-1-g1-a1"] and entry(again.status, "build1")["retryAt"] == retry_at
    assert "GroupRetrying" not in [e.reason for e in again.events]
    # Gone, backoff over: attempt 2 (elsewhere: the node is tainted), and the final waits for it.
    rest = [pod("g2", node="node-2"), deleting_at(seed_pods()[2], lost_at)]
    later = lost_at + timedelta(seconds=11)
    d2 = run(d.status, rest, now=later, nodes=nodes)
    assert [(c.group.id, c.attempt) for c in d2.create] == [("g1", 2)]
    # g1's attempt 2 runs: the final starts early again, now waiting for attempt 2's tag.
    d3 = run(d2.status, [pod("g1", 2, node="node-2"), *rest], now=later, nodes=nodes)
    (final_start,) = d3.create
    assert (final_start.group.id, final_start.attempt) == ("g3", 2)
    assert dict(final_start.upstream_attempts) == {"g1": 2, "g2": 1}


def test_the_lost_attempts_result_is_never_used() -> None:
    """Attempt 1 of g1 was lost but kept running and pushed; attempt 2's result is the one accepted and
    passed on, and the final built from attempt 1's push is not accepted."""
    s = running_seed()
    nodes = unknown_since(T0)
    lost_at = T0 + timedelta(seconds=60)
    s = run(s, seed_pods(), now=lost_at, nodes=nodes).status
    s = run(s, [pod("g2", node="node-2")], now=lost_at + timedelta(seconds=11), nodes=nodes).status
    g2 = pod("g2", node="node-2", phase="Succeeded", message=result_json("g2", "build2", D2))
    g1 = pod("g1", 2, node="node-2", phase="Succeeded", message=result_json("g1", "build1", D1B))
    d = run(s, [g1, g2], now=lost_at + timedelta(seconds=20), nodes=nodes)
    assert entry(d.status, "build1")["digest"] == D1B
    (final,) = d.create
    assert final.attempt == 2 and dict(final.upstream)["build1"][1] == D1B
    # Were a final pod of the old attempt to report a result built from attempt 1's push: not accepted.
    old = json.dumps(
        {**json.loads(result_json("g3", "final", D3)), "upstreams": {"build1": D1, "build2": D2}}
    )
    stale = with_waits(pod("g3", phase="Succeeded", message=old), {"g1": 1, "g2": 1})
    s2 = run(
        d.status,
        [g1, g2, stale, pod("g3", 2, node="node-2")],
        now=lost_at + timedelta(seconds=21),
        nodes=nodes,
    ).status
    assert s2["phase"] == "Building" and entry(s2, "final")["attempts"] == 2


def test_a_stuck_terminating_pod_is_lost_without_node_access() -> None:
    s = running_seed()
    deleted = deleting_at(pod("g1"), T0)
    d = run(s, [deleted, *seed_pods()[1:]], now=T0 + timedelta(seconds=30), nodes=None)
    assert phases(d.status)["build1"] == "Running" and d.force_delete == []
    assert d.requeue_after == 30.0
    d = run(s, [deleted, *seed_pods()[1:]], now=T0 + timedelta(seconds=60), nodes=None)
    assert d.force_delete == ["seed-1-g1-a1"] and phases(d.status)["build1"] == "Retrying"
    assert (
        "PodStuckTerminating: pod seed-1-g1-a1: stuck Terminating on node node-1"
        in entry(d.status, "build1")["message"]
    )


def test_a_group_lost_too_often_fails_the_build() -> None:
    s = running_seed()
    s = run(s, seed_pods(), now=T0 + timedelta(seconds=60), nodes=unknown_since(T0)).status
    for attempt in (2, 3):
        t = T0 + timedelta(minutes=2 * attempt)  # node-1 is back (Ready) and takes the next attempt
        d = run(s, [pod("g2", node="node-2")], now=t, nodes=HEALTHY)
        assert [(c.group.id, c.attempt) for c in d.create] == [("g1", attempt)]
        pods = [pod("g1", attempt), pod("g2", node="node-2")]
        s = run(d.status, pods, now=t, nodes=HEALTHY).status
        s = run(s, pods, now=t + timedelta(seconds=61), nodes=unknown_since(t)).status
    assert s["phase"] == "Failed" and s["failure"]["group"] == "g1" and s["failure"]["attempts"] == 3
    assert "NodeLost" in s["failure"]["message"] and s["failure"]["kind"] == "infrastructure"
    assert s["failure"]["message"].endswith("after 3 attempts")


def test_restarts_do_not_count_against_retries() -> None:
    spec = make_spec(retries=0)
    s = running_seed()
    nodes = unknown_since(T0)
    s = run(s, seed_pods(), now=T0 + timedelta(seconds=60), nodes=nodes, spec=spec).status
    assert s["phase"] == "Failed"  # g1 itself had no retry left
    # With one retry: g1 is retried, the final restarted; the final's own failure later is its first.
    spec = make_spec(retries=1)
    s = run(running_seed(), seed_pods(), now=T0 + timedelta(seconds=60), nodes=nodes, spec=spec).status
    assert entry(s, "final")["restarts"] == 1
    t = T0 + timedelta(minutes=2)
    ok1 = pod("g1", 2, node="node-2", phase="Succeeded", message=result_json("g1", "build1", D1B))
    ok2 = pod("g2", node="node-2", phase="Succeeded", message=result_json("g2", "build2", D2))
    d = run(adopted(s, ok1), [ok1, ok2], now=t, nodes=nodes, spec=spec)
    assert [(c.group.id, c.attempt) for c in d.create] == [("g3", 2)]
    failed = pod("g3", 2, node="node-2", phase="Failed", exit_code=14)
    d2 = run(d.status, [ok1, ok2, failed], now=t, nodes=nodes, spec=spec)
    # Attempt 2 failed: with the restart not counted, that is the final's first failure, and retries=1.
    assert d2.status["phase"] == "Building" and [(c.group.id, c.attempt) for c in d2.create] == [("g3", 3)]


def test_a_waiters_result_waits_until_the_upstream_result_it_consumed_is_accepted() -> None:
    s = running_seed()
    used = {"build1": D1, "build2": D2}
    msg = json.dumps({**json.loads(result_json("g3", "final", D3)), "upstreams": used})
    g1_done = pod("g1", phase="Succeeded", message=result_json("g1", "build1", D1))
    g3_done = with_waits(pod("g3", node="node-2", phase="Succeeded", message=msg), {"g1": 1, "g2": 1})
    # g2 pushed its tag (the final found it) but its pod has not reported yet: the final is not accepted.
    d = run(s, [g1_done, pod("g2", node="node-2"), g3_done], now=T0 + timedelta(seconds=5))
    final = entry(d.status, "final")
    assert final["phase"] == "Running" and "digest" not in final
    assert final["message"] == "finished; its result waits until group g2's result (consumed) is recorded"
    assert d.status["phase"] == "Building" and d.create == [] and d.delete == []
    # g2 reports the digest the final consumed: all accepted.
    g2_done = pod("g2", node="node-2", phase="Succeeded", message=result_json("g2", "build2", D2))
    d2 = run(d.status, [g1_done, g2_done, g3_done], now=T0 + timedelta(seconds=6))
    assert d2.status["phase"] == "Succeeded" and d2.status["image"]["digest"] == D3
    # Or g2's node is lost before it reports: the final's result is never accepted, it is restarted.
    lost = run(
        d.status,
        [g1_done, pod("g2", node="node-1"), g3_done],
        now=T0 + timedelta(seconds=61),
        nodes=unknown_since(T0),
    )
    assert phases(lost.status) == {"build1": "Succeeded", "build2": "Retrying", "final": "Waiting"}
    assert entry(lost.status, "final")["message"] == (
        "restarting: consumed the result of group g2 attempt 1, which was superseded"
    )
    assert lost.force_delete == ["seed-1-g2-a1"] and lost.delete == []  # the final's pod already ended


def test_superseded_attempts_still_running_are_stopped() -> None:
    s = running_seed()
    # (g1's attempt 2 created, and recorded, by a pass whose stop of attempt 1 was lost)
    pods = [pod("g1"), pod("g1", 2), *seed_pods()[1:]]
    d = run(adopted(s, pod("g1", 2)), pods, now=T0 + timedelta(seconds=1))
    assert entry(d.status, "build1")["attempts"] == 2
    # g1's attempt 1 is stopped, and so is the final's pod, which waited for it.
    # (at once replaced by its attempt 2, waiting for g1's attempt 2).
    assert d.delete == ["seed-1-g1-a1", "seed-1-g3-a1"]
    assert [(c.group.id, c.attempt, dict(c.upstream_attempts), c.restart) for c in d.create] == [
        ("g3", 2, {"g1": 2, "g2": 1}, True)
    ]
    assert [e.message for e in d.events if e.reason == "GroupStarted"] == [
        "group g3 (final): attempt 2 (restart)"
    ]


def test_a_finished_build_force_deletes_its_lost_pods() -> None:
    s = {**running_seed(), "phase": "Failed"}
    stuck = deleting_at(pod("g2", node="node-2"), T0)
    d = run(s, [stuck, pod("g1")], now=T0 + timedelta(seconds=70), nodes=unknown_since(T0))
    assert d.force_delete == ["seed-1-g1-a1", "seed-1-g2-a1"] and d.delete == []
    d = run(s, [stuck], now=T0 + timedelta(seconds=10), nodes=HEALTHY)
    assert d.force_delete == [] and d.requeue_after == 50.0


def test_each_attempt_pushes_its_own_tag_and_waiters_wait_for_that_attempt() -> None:
    config = WorkerConfig(insecure_registries=("127.0.0.1:5000",))
    source = ResolvedSource(configmap="cm")

    def args(start: StartPod) -> list[str]:
        p = worker_pod(
            build=BUILD,
            spec=SPEC,
            plan=SEED_PLAN,
            group=start.group,
            attempt=start.attempt,
            source=source,
            upstream=start.upstream,
            config=config,
            deadline_seconds=60,
            upstream_attempts=start.upstream_attempts,
        )
        return list(p["spec"]["containers"][0]["args"])

    def pushes(group: str, attempt: int) -> str:
        a = args(StartPod(SEED_PLAN.group(group), attempt, {}))
        return a[a.index("--push") + 1]

    assert pushes("g1", 1).endswith("-1-g1-a1") and pushes("g1", 2).endswith("-1-g1-a2")
    waiter = StartPod(SEED_PLAN.group("g3"), 1, {"build2": ("r/s:g2", D2)}, {"g1": 2})
    a = args(waiter)
    assert a[a.index("--upstream-wait") + 1] == f"build1={pushes('g1', 2)}"
    p = worker_pod(
        build=BUILD,
        spec=SPEC,
        plan=SEED_PLAN,
        group=waiter.group,
        attempt=1,
        source=source,
        upstream=waiter.upstream,
        config=config,
        deadline_seconds=60,
        upstream_attempts={"g1": 2},
    )
    assert p["metadata"]["annotations"][ANNOTATION_UPSTREAM_ATTEMPTS] == "g1=2"
    assert obs(p).waits == {"g1": 2}
    assert (
        ANNOTATION_UPSTREAM_ATTEMPTS
        not in worker_pod(
            build=BUILD,
            spec=SPEC,
            plan=SEED_PLAN,
            group=SEED_PLAN.group("g1"),
            attempt=1,
            source=source,
            upstream={},
            config=config,
            deadline_seconds=60,
        )["metadata"]["annotations"]
    )
