"""A pod its node's kubelet refuses at admission (docs/operator.md, Failures: "pod refused by its node").

A real kubelet fails a bound pod before starting any container when its own count of the node's resources
disagrees with the scheduler's (pods that just finished still count: "OutOfcpu"). The operator retries such
a group at once, without using an attempt. On the real tier this cannot be caused on demand (it shows up
under load; the reliability suites accept it only with the operator's event naming it), so this test runs
on the dev cluster, whose kubelet refuses the next N pods of a node as a real one does (same status: Failed,
reason OutOfcpu, the kubelet's message, no container status) while the node carries
``dev.stagefleet.io/refuse-pods: N``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, pod_states, refused_at_admission, seed_manifest, wait_terminal

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


def _group(p: dict[str, Any]) -> str:
    return str(p["metadata"]["labels"]["stagefleet.io/group"])


def test_pods_refused_at_admission_are_retried_without_using_an_attempt(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    if kubectl.cluster.dev is None:
        pytest.skip("real tier: a kubelet refuses a pod at admission only when its count races the "
                    "scheduler's, which cannot be caused on demand")
    for node in kubectl.cluster.node_names:
        kubectl.run("annotate", "--overwrite", "node", node, "dev.stagefleet.io/refuse-pods=1")
    # spec.retries 0: a refusal that counted would fail the build.
    kubectl.apply(seed_manifest("refused", base_image, registry.host, sleep=1, retries=0))
    obj = wait_terminal(kubectl, operator, "refused")
    st = obj["status"]
    assert st["phase"] == "Succeeded", (st.get("message"), pod_states(kubectl, "refused"))
    pods = kubectl.pods("refused")
    refused = Counter(_group(p) for p in pods if refused_at_admission(p))
    assert refused, pod_states(kubectl, "refused")  # the first pod on a node was refused
    for p in pods:
        if refused_at_admission(p):
            assert p["status"]["reason"] == "OutOfcpu" and not p["status"].get("containerStatuses"), p
    for s in st["stages"]:
        assert s["attempts"] == 1 + refused[s["group"]] and s.get("restarts", 0) == refused[s["group"]], s
    said = [e["message"] for e in kubectl.events()
            if e["involvedObject"].get("name") == "refused" and e["reason"] == "GroupRetrying"]
    assert len(said) == sum(refused.values()), said
    assert all("at admission (OutOfcpu: Pod Node didn't have enough resource: cpu" in m
               and "not counted as an attempt" in m for m in said), said
