"""The admin's policy, with the operator's safe defaults: a tenant's ImageBuild that asks for another builder
image, a ServiceAccount, tolerations or a file:// source fails naming each field and rule, and no pod is
ever created for it, while an ordinary build beside it succeeds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagefleet import health
from stagefleet.localregistry import LocalRegistry

from .conftest import Cluster, Kubectl, Operator, inline_manifest, wait_terminal

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


@pytest.fixture
def strict_operator(cluster: Cluster, namespace: str, registry: LocalRegistry,
                    tmp_path: Path) -> Iterator[Operator]:
    """The operator with no policy flags at all: on the real tier with the chart's policy values."""
    op = Operator(cluster, namespace, registry.host, tmp_path / "operator.log", policy=())
    op.start()
    yield op
    op.kill()
    print(f"--- operator log ({op.log}) ---\n{op.tail(120)}")


def test_escalating_fields_fail_by_policy_and_start_nothing(
    kubectl: Kubectl, strict_operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    dockerfile = f"FROM {base_image} AS a\nRUN echo ok > /ok\n"
    kubectl.apply(inline_manifest(
        "escalate", dockerfile, registry.host,
        builderImage=f"{registry.host}/tenant/root-shell:1",
        serviceAccountName="default",
        tolerations=[{"operator": "Exists"}],
    ))
    kubectl.apply({
        "apiVersion": "stagefleet.io/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "localfiles"},
        "spec": {"source": {"git": {"url": "file:///etc", "revision": "main"}},
                 "output": {"image": f"{registry.host}/e2e/localfiles:1"}},
    })
    kubectl.apply(inline_manifest("ordinary", dockerfile, registry.host))

    escalate = wait_terminal(kubectl, strict_operator, "escalate")["status"]
    assert escalate["phase"] == "Failed" and escalate["failure"]["reason"] == "PolicyViolation", escalate
    stalled = next(c for c in escalate["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "PolicyViolation"
    msg = escalate["message"]
    image = f"{registry.host}/tenant/root-shell:1"
    for needle in (f"spec.builderImage: '{image}' is not an allowed builder image",
                   "spec.serviceAccountName: 'default' is not allowed",
                   "spec.tolerations[0]: a toleration without a key (it tolerates every taint)"):
        assert needle in msg, msg
    localfiles = wait_terminal(kubectl, strict_operator, "localfiles")
    st = localfiles["status"]
    assert st["phase"] == "Failed" and st["failure"]["reason"] == "PolicyViolation"
    assert st["message"].startswith("spec.source.git.url: the file scheme is not allowed for cluster builds")
    assert "source" not in st  # refused before the operator looked at the path
    assert health.convention_problems(localfiles) == [] and health.kstatus(localfiles).status == "Failed"

    ordinary = wait_terminal(kubectl, strict_operator, "ordinary")["status"]
    assert ordinary["phase"] == "Succeeded", ordinary.get("message")
    assert kubectl.pods("escalate") == [] and kubectl.pods("localfiles") == []
    assert kubectl.pods("ordinary")
    reasons = {(e["reason"], e["involvedObject"]["name"]) for e in kubectl.events()}
    assert {("PolicyViolation", "escalate"), ("PolicyViolation", "localfiles")} <= reasons
    # The denial is not echoed with anything the tenant did not write.
    assert "root:x:0:0" not in json.dumps(localfiles)
