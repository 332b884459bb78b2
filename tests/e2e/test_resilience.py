"""Mid-build disturbances: the operator killed and restarted, a worker pod deleted, the spec edited, the
ImageBuild deleted. Each ends in the right state with no duplicate pod."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, seed_manifest, stage, wait_for, wait_terminal, wait_until
from .oci import manifest_digest

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


def _running(name: str) -> Any:
    return lambda o: any(
        s["phase"] == "Running" and s["name"] == name for s in (o.get("status") or {}).get("stages") or ()
    )


def _labels(pod: dict[str, Any]) -> tuple[str, str, str]:
    lab = pod["metadata"]["labels"]
    return lab["stagefleet.io/generation"], lab["stagefleet.io/group"], lab["stagefleet.io/attempt"]


def test_operator_killed_mid_build_resumes_without_duplicates(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    kubectl.apply(seed_manifest("crash", base_image, registry.host, sleep=6))
    wait_for(kubectl, operator, "crash", _running("build1"), "build1 running")
    operator.kill()
    # While nobody watches, both parallel pods finish: their results exist only in the pods.
    wait_until(
        lambda: sum(p["status"].get("phase") == "Succeeded" for p in kubectl.pods("crash")) >= 2,
        "build1 and build2 pods to finish",
        operator,
    )
    operator.start()
    obj = wait_terminal(kubectl, operator, "crash")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    pods = kubectl.pods("crash")
    assert sorted(p["metadata"]["name"] for p in pods) == ["crash-1-g1-a1", "crash-1-g2-a1", "crash-1-g3-a1"]
    assert all(stage(obj, n)["attempts"] == 1 for n in ("build1", "build2", "final"))
    assert manifest_digest(registry.host, "e2e/crash", "latest") == obj["status"]["image"]["digest"]


def test_operator_killed_twice_at_different_points(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    kubectl.apply(seed_manifest("crash2", base_image, registry.host, sleep=4))
    wait_for(kubectl, operator, "crash2", lambda o: "plan" in (o.get("status") or {}), "a plan")
    operator.kill()
    operator.start()
    wait_for(kubectl, operator, "crash2", _running("final"), "final running")
    operator.kill()
    operator.start()
    obj = wait_terminal(kubectl, operator, "crash2")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    names = Counter(_labels(p)[1] for p in kubectl.pods("crash2"))
    assert names == {"g1": 1, "g2": 1, "g3": 1}


def test_worker_pod_deleted_mid_build_is_retried(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    # 5 s: long enough that build1 still runs when the delete lands (else attempts would be 1, and fail).
    kubectl.apply(seed_manifest("evict", base_image, registry.host, sleep=5))
    obj = wait_for(kubectl, operator, "evict", _running("build1"), "build1 running")
    victim = stage(obj, "build1")["pod"]
    kubectl.run("delete", "pod", victim, "--wait=false")
    obj = wait_terminal(kubectl, operator, "evict")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    b1 = stage(obj, "build1")
    assert b1["attempts"] == 2 and b1["pod"] == victim.replace("-a1", "-a2")
    assert stage(obj, "build2")["attempts"] == 1 and stage(obj, "final")["attempts"] == 1
    reasons = [e["reason"] for e in kubectl.events() if e["involvedObject"].get("name") == "evict"]
    assert "GroupRetrying" in reasons
    attempts = Counter((g, a) for _, g, a in map(_labels, kubectl.pods("evict")))
    assert all(n == 1 for n in attempts.values())


def test_spec_edit_mid_build_supersedes_the_running_build(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    kubectl.apply(seed_manifest("edit", base_image, registry.host, sleep=30))
    wait_for(kubectl, operator, "edit", _running("build1"), "build1 running")
    kubectl.run("patch", "imagebuild", "edit", "--type=merge", "-p", '{"spec":{"buildArgs":{"SLEEP":"1"}}}')
    obj = wait_terminal(kubectl, operator, "edit")
    assert obj["metadata"]["generation"] == 2 and obj["status"]["observedGeneration"] == 2
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    # The first generation's pods are stopped and removed; the second ran one pod per group.
    wait_until(
        lambda: all(_labels(p)[0] == "2" for p in kubectl.pods("edit")), "generation-1 pods gone", operator
    )
    assert sorted(p["metadata"]["name"] for p in kubectl.pods("edit")) == [
        "edit-2-g1-a1",
        "edit-2-g2-a1",
        "edit-2-g3-a1",
    ]
    reasons = [e["reason"] for e in kubectl.events() if e["involvedObject"].get("name") == "edit"]
    assert "Superseded" in reasons


def test_delete_mid_build_removes_the_pods(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    kubectl.apply(seed_manifest("gone", base_image, registry.host, sleep=30))
    wait_for(kubectl, operator, "gone", _running("build1"), "build1 running")
    # build1's and build2's pods exist; final's too when it was started early (the operator's default).
    groups = sorted(_labels(p)[1] for p in kubectl.pods("gone"))
    assert groups in (["g1", "g2"], ["g1", "g2", "g3"]), groups
    kubectl.run("delete", "imagebuild", "gone", "--wait=false")
    wait_until(lambda: kubectl.pods("gone") == [], "the build's pods to be removed", operator)
    assert (
        kubectl.run("get", "configmaps", "-l", "stagefleet.io/imagebuild=gone", "-o", "name").stdout.strip()
        == ""
    )
    assert operator.alive()


def test_api_errors_and_dropped_watches_lose_nothing(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str, cluster: Any
) -> None:
    """The API answers 429/500/503 to a share of requests and drops watches: the build still completes,
    with one pod per group and every stage result recorded."""
    if cluster.dev is None:
        pytest.skip("fault injection needs the dev cluster's API emulator")
    kubectl.apply(seed_manifest("flaky", base_image, registry.host, sleep=3))
    cluster.dev.faults.update({"error_rate": 0.15, "watch_drop_seconds": 3.0, "seed": 7})
    try:
        obj = wait_terminal(kubectl, operator, "flaky")
    finally:
        cluster.dev.faults.update({"error_rate": 0.0, "watch_drop_seconds": None})
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    assert all(stage(obj, n)["digest"].startswith("sha256:") for n in ("build1", "build2", "final"))
    assert sorted(p["metadata"]["name"] for p in kubectl.pods("flaky")) == [
        "flaky-1-g1-a1",
        "flaky-1-g2-a1",
        "flaky-1-g3-a1",
    ]
    assert operator.alive()
