"""Worker pods lost mid-build: one deleted, one on a node that dies (the kubelet's node-loss simulation).
The affected groups run again as attempt 2 and the build succeeds; a group that keeps failing with an
infrastructure exit code ends the build Failed with its attempts recorded. SIMULATED worker."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import Kubectl

from .conftest import (
    Api,
    OperatorFactory,
    RCluster,
    fake_manifest,
    pod_labels,
    poll,
    read_records,
    terminal,
)

pytestmark = [pytest.mark.cluster]

# Three independent stages and a final: g1, g2, g3 run side by side, then g4.
WIDE = """FROM busybox:1.36 AS a
RUN echo a > /a
FROM busybox:1.36 AS b
RUN echo b > /b
FROM busybox:1.36 AS c
RUN echo c > /c
FROM busybox:1.36 AS final
COPY --from=a /a /a
COPY --from=b /b /b
COPY --from=c /c /c
"""


def _running(pods: list[dict[str, Any]], group: str) -> dict[str, Any] | None:
    return next(
        (p for p in pods if pod_labels(p)[1] == group and (p.get("status") or {}).get("phase") == "Running"),
        None,
    )


def test_deleted_pod_and_lost_node_are_retried(
    api: Api, kubectl: Kubectl, make_operator: OperatorFactory, rcluster: RCluster, records: Path
) -> None:
    op = make_operator(sleep=3.0, slow={"g4": 0.5})
    api.create(fake_manifest("lost", WIDE, maxParallelPods=4))
    pods = poll(
        lambda: (lambda ps: ps if all(_running(ps, g) for g in ("g1", "g2", "g3")) else None)(api.pods()),
        "g1..g3 running",
        op,
    )
    victim = _running(pods, "g1")
    assert victim is not None
    node = victim["spec"]["nodeName"]
    on_node = sorted(pod_labels(p)[1] for p in pods if p["spec"].get("nodeName") == node)
    # a group on the other node, if any, loses its pod by deletion instead
    other = next((pod_labels(p)[1] for p in pods if p["spec"].get("nodeName") != node), None)
    try:
        rcluster.dev.lose_node(node)
        if other is not None:
            doomed = next(p for p in pods if pod_labels(p)[1] == other)
            kubectl.run("delete", "pod", doomed["metadata"]["name"], "--wait=false")
        obj = terminal(api, "lost", op)
    finally:
        rcluster.dev.recover_node(node)
    st = obj["status"]
    assert st["phase"] == "Succeeded", st.get("message")
    hit = set(on_node) | ({other} if other else set())
    for s in st["stages"]:
        assert s["attempts"] == (2 if s["group"] in hit else 1), s
        assert s["phase"] == "Succeeded"
    created = rcluster.ledger.names(api.namespace)
    assert all(n == 1 for n in created.values()), created
    attempts = Counter((g, a) for _, g, a in map(pod_labels, api.pods()))
    assert all(n == 1 for n in attempts.values()), attempts
    # retried pods do not run on the lost node
    for p in api.pods():
        if pod_labels(p)[2] == "2":
            assert p["spec"].get("nodeName") != node, p["metadata"]["name"]
    reasons = Counter(e["reason"] for e in api.events() if e["involvedObject"].get("name") == "lost")
    assert reasons["GroupRetrying"] >= len(hit), reasons
    # the final image consumed the successful attempt's results
    ok = {r["result"]["group"]: r["result"]["digest"] for r in read_records(records) if r["result"]["ok"]}
    assert st["image"]["digest"] == ok["g4"]


def test_group_that_keeps_failing_ends_failed_with_attempts(
    api: Api, make_operator: OperatorFactory, rcluster: RCluster, records: Path
) -> None:
    op = make_operator(sleep=0.5, fail={"g2": 14})  # 14: push failed after retries — infrastructure
    api.create(fake_manifest("flaky", WIDE, retries=2))
    obj = terminal(api, "flaky", op)
    st = obj["status"]
    assert st["phase"] == "Failed"
    failure = st["failure"]
    assert failure["group"] == "g2" and failure["attempts"] == 3, failure
    assert failure.get("exitCode") == 14, failure
    assert "g2" in st["message"] or "b" in st["message"], st["message"]
    b = next(s for s in st["stages"] if s["name"] == "b")
    assert b["phase"] == "Failed" and b["attempts"] == 3, b
    runs = Counter(r["result"]["group"] for r in read_records(records))
    assert runs["g2"] == 3, runs
    assert runs.get("g4", 0) == 0, "the final group must not run after its upstream failed"
    created = rcluster.ledger.names(api.namespace)
    assert sorted(n for n in created if "-g2-" in n) == ["flaky-1-g2-a1", "flaky-1-g2-a2", "flaky-1-g2-a3"]
    assert all(n == 1 for n in created.values()), created
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds.get("Ready") == "False" and conds.get("Stalled") == "True", conds
