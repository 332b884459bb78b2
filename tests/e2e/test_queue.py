"""The farm's cap on worker pods, shared fairly between namespaces (docs/operator.md, "The farm's cap"): with
`--max-worker-pods 1`, a namespace that applied two builds delays another namespace's one build by at most
one of its own, not by its whole backlog; waiting builds say where they stand (Reconciling reason Queued,
status.queue) and never Stalled; no two worker pods ever run at once. On both tiers, with the real builder
and registry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stagefleet import health
from stagefleet.localregistry import LocalRegistry
from tiers import BUILD_NAMESPACE_LABELS

from .conftest import (
    Cluster,
    Kubectl,
    Operator,
    inline_manifest,
    pod_states,
    wait_for,
    wait_terminal,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


@pytest.fixture
def other(cluster: Cluster, namespace: str) -> Iterator[Kubectl]:
    """A second team's namespace."""
    ns = f"{namespace[:40]}-b-{uuid.uuid4().hex[:4]}"
    k = Kubectl(cluster, "default")
    meta = {"name": ns, "labels": BUILD_NAMESPACE_LABELS}
    k.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    yield Kubectl(cluster, ns)
    k.run("delete", "namespace", ns, "--wait=false", check=False)


def _build(name: str, base_image: str, registry: str, seconds: int) -> dict[str, Any]:
    # Each its own content: identical stages would be reused from the first one without a pod.
    run = f"sleep {seconds} && " if seconds else ""
    return inline_manifest(name, f"FROM {base_image}\nRUN {run}echo {name} > /built\n", registry)


def _condition(o: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in o["status"]["conditions"] if c["type"] == ctype)


def _first_start(kubectl: Kubectl, name: str) -> str:
    """When the build's (one) worker container started: RFC 3339, comparable as text."""
    [pod] = [p for p in kubectl.pods(name) if p["status"].get("phase") == "Succeeded"]
    return str(pod["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"])


@pytest.mark.tiers("real")
def test_a_namespaces_backlog_does_not_queue_another_namespace_behind_it(
    kubectl: Kubectl, other: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    operator.stop()
    operator.extra = ["--namespace", other.namespace, "--max-worker-pods", "1"]
    operator.start()
    big = ["big1", "big2"]
    for name in big:  # (slow enough that the second still waits when the other namespace's build comes)
        kubectl.apply(_build(name, base_image, registry.host, 4))

    def one_queued() -> bool:
        return any("queue" in (kubectl.ib(n).get("status") or {}) for n in big)

    wait_until(one_queued, "one of big1, big2 queued", operator, timeout=120,
               show=lambda: "\n".join(pod_states(kubectl, n) for n in big))
    last = next(o for o in (kubectl.ib(n) for n in big) if "queue" in (o.get("status") or {}))
    status = last["status"]
    assert _condition(last, "Reconciling")["reason"] == "Queued", status["conditions"]
    assert _condition(last, "Stalled")["status"] == "False"
    assert status["queue"]["maxWorkerPods"] == 1 and status["queue"]["groups"] == 1, status["queue"]
    assert status["queue"]["namespaceRunning"] == 1 and status["message"].startswith("queued: "), status
    assert health.kstatus(last).status == "InProgress" and health.convention_problems(last) == []

    other.apply(_build("small", base_image, registry.host, 0))
    small = wait_for(other, operator, "small",
                     lambda o: "queue" in (o.get("status") or {}) or bool(other.pods("small")),
                     "small queued or started", timeout=120)
    if "queue" in small["status"]:
        # First in line: its namespace runs nothing, the other runs one pod.
        assert small["status"]["queue"]["ahead"] == 0, small["status"]

    for name in big:
        phase = wait_terminal(kubectl, operator, name)["status"]["phase"]
        assert phase == "Succeeded", pod_states(kubectl, name)
    done = wait_terminal(other, operator, "small")
    assert done["status"]["phase"] == "Succeeded", pod_states(other, "small")
    assert "queue" not in done["status"]

    starts = sorted([(_first_start(kubectl, n), n) for n in big] + [(_first_start(other, "small"), "small")])
    order = [n for _, n in starts]
    # First come, first served would run small last; fair sharing runs it when the running build ends.
    assert order[1] == "small", starts
    windows = sorted(
        (str(t["startedAt"]), str(t["finishedAt"]))
        for k, names in ((kubectl, big), (other, ["small"]))
        for n in names
        for p in k.pods(n)
        for t in [p["status"]["containerStatuses"][0]["state"].get("terminated") or {}]
        if t
    )
    for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
        assert start >= end, windows  # never two worker containers at once
