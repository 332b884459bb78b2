"""Mid-build disturbances: the operator killed and restarted, a worker pod deleted, a node lost, the spec
edited, the ImageBuild deleted. Each ends in the right state with no duplicate pod."""

from __future__ import annotations

import json
import urllib.error
from collections import Counter
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import (
    Cluster,
    Kubectl,
    Operator,
    inline_manifest,
    pod_states,
    refused_at_admission,
    seed_manifest,
    stage,
    wait_for,
    wait_terminal,
    wait_until,
)
from .oci import image_files, manifest_digest

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
    # While nobody watches, both parallel pods finish: their results exist only in the pods. (A pod its
    # node refused at admission ends too, and waits for the operator to start its group again.)
    wait_until(
        lambda: sum(
            p["status"].get("phase") == "Succeeded" or refused_at_admission(p)
            for p in kubectl.pods("crash")
            if _labels(p)[1] in ("g1", "g2")
        ) >= 2,
        "build1 and build2 pods to finish",
        operator,
        show=lambda: pod_states(kubectl, "crash"),
    )
    operator.start()
    obj = wait_terminal(kubectl, operator, "crash")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    pods = kubectl.pods("crash")
    refused = Counter(_labels(p)[1] for p in pods if refused_at_admission(p))
    ran = sorted(_labels(p)[1] for p in pods if not refused_at_admission(p))
    assert ran == ["g1", "g2", "g3"], pod_states(kubectl, "crash")
    for name, group in (("build1", "g1"), ("build2", "g2"), ("final", "g3")):
        assert stage(obj, name)["attempts"] == 1 + refused[group], (stage(obj, name), refused)
    assert manifest_digest(registry.host, "e2e/crash", "latest") == obj["status"]["image"]["digest"]


def test_operator_killed_twice_at_different_points(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    # 9 s: the second kill must find final still running after the first restart, which took 7.6 s on a
    # loaded 2-core machine (the build had ended by then with sleep 4)
    kubectl.apply(seed_manifest("crash2", base_image, registry.host, sleep=9))
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
    assert stage(obj, "build2")["attempts"] == 1
    # final, if it was started early, waited for build1's attempt 1: restarted against attempt 2, which
    # costs none of its retries (each attempt pushes its own tag, so it would have waited for ever)
    final = stage(obj, "final")
    assert final["attempts"] - final.get("restarts", 0) == 1 and final.get("restarts", 0) <= 1, final
    reasons = [e["reason"] for e in kubectl.events() if e["involvedObject"].get("name") == "evict"]
    assert "GroupRetrying" in reasons
    attempts = Counter((g, a) for _, g, a in map(_labels, kubectl.pods("evict")))
    assert all(n == 1 for n in attempts.values())


# build1 writes something no other run of it writes, then takes long enough for its node to be lost while it
# runs. The loss is noticed later (16 s grace period on both tiers, then --node-lost-after), after the lost
# attempt ended: its kubelet is gone, so nothing reports that, and the pod stays Running on an Unknown node.
# build2 makes final a group of its own (a plain chain would be one group), consuming build1's result.
LONG_FIRST_STAGE = """ARG BASE
FROM ${{BASE}} AS build1
RUN cat /proc/sys/kernel/random/uuid > /id && sleep {sleep}
FROM ${{BASE}} AS build2
RUN echo two > /two
FROM ${{BASE}} AS final
COPY --from=build1 /id /id
COPY --from=build2 /two /two
"""


def _registry_digest(host: str, ref: str) -> str | None:
    """The digest the registry serves for REPO:TAG, None while the tag does not exist."""
    repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
    try:
        return manifest_digest(host, repo, tag)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def test_a_lost_nodes_group_is_retried_elsewhere_and_its_late_result_ignored(
    cluster: Cluster, kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    """The kubelet of the node running build1 dies; its container runs on. The control plane marks the node
    Unknown but leaves the pod Running: the operator gives the pod up after --node-lost-after, force-deletes
    it and runs build1 again on the other node. The lost attempt still finishes and pushes — to its own
    tag; the build succeeds from the retry's result alone."""
    operator.kill()
    operator.extra += ["--node-lost-after", "5"]
    operator.start()
    dockerfile = LONG_FIRST_STAGE.format(sleep=9)  # outlasts the few seconds until the node is lost
    # No layer cache: the other tier's run of this test shares the session registry, and a RUN step taken
    # from its cache would give both attempts the same /id.
    kubectl.apply(inline_manifest("nodeloss", dockerfile, registry.host, buildArgs={"BASE": base_image},
                                  cache={"disabled": True}))
    obj = wait_for(kubectl, operator, "nodeloss", _running("build1"), "build1 running")
    victim = stage(obj, "build1")["pod"]
    node = kubectl.json("get", "pod", victim)["spec"]["nodeName"]
    assert node in cluster.node_names and len(cluster.node_names) >= 2
    args = kubectl.json("get", "pod", victim)["spec"]["containers"][0]["args"]
    lost_ref = args[args.index("--push") + 1]
    assert lost_ref.endswith("-g1-a1"), args
    cluster.lose_node(node)
    try:
        # The lost attempt runs on (its kubelet is gone, not its container) and pushes to its own tag — long
        # before the retry ends (it started the loss-detection time earlier), so before the finished build's
        # clean-up removes its stage tags, the lost one's included.
        lost_digest: str | None = None

        def lost_push_seen() -> bool:
            nonlocal lost_digest
            lost_digest = lost_digest or _registry_digest(registry.host, lost_ref)
            return lost_digest is not None

        wait_until(lost_push_seen, "the lost attempt's late push", operator, timeout=300)
        assert lost_digest is not None
        stages_repo = lost_ref.split("/", 1)[1].rsplit(":", 1)[0]
        lost_id = image_files(registry.host, stages_repo, lost_digest)["/id"]
        obj = wait_terminal(kubectl, operator, "nodeloss", timeout=300)
    finally:
        cluster.recover_node(node)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    b1, final = stage(obj, "build1"), stage(obj, "final")
    assert b1["image"].removesuffix("-a2") + "-a1" == lost_ref
    # Retried once, on the other node, as attempt 2; the lost pod is gone (force-deleted).
    assert b1["attempts"] == 2 and b1.get("restarts") is None, b1
    assert b1["pod"] == victim.replace("-a1", "-a2") and b1["node"] != node, b1
    assert kubectl.json("get", "pod", b1["pod"])["spec"]["nodeName"] == b1["node"]
    assert victim not in {p["metadata"]["name"] for p in kubectl.pods("nodeloss")}
    retried = [e["message"] for e in kubectl.events() if e["reason"] == "GroupRetrying"]
    assert any(f"NodeLost: pod {victim}: node {node} stopped reporting" in m for m in retried), retried
    # The recorded result is the retry's. The lost attempt's result is another image (it wrote another
    # /id), and the final image was built from the retry's alone (its /id is not the lost one's).
    assert b1["image"].endswith("-g1-a2") and lost_digest != b1["digest"]
    image = obj["status"]["image"]
    assert manifest_digest(registry.host, "e2e/nodeloss", "latest") == image["digest"] == final["digest"]
    assert image_files(registry.host, "e2e/nodeloss", image["digest"])["/id"] != lost_id
    # The finished build's clean-up removed its stage tags, the lost attempt's late one included (one
    # DELETE per digest, one after the other: wait for both, not for the first and then look at the other).
    wait_until(lambda: all(_registry_digest(registry.host, ref) is None for ref in (lost_ref, b1["image"])),
               "the lost attempt's and the retry's stage tags removed", operator, timeout=60)
    # The final group's accepted pod consumed exactly the recorded digest (by digest, or found by tag).
    final_pod = kubectl.json("get", "pod", final["pod"])
    term = final_pod["status"]["containerStatuses"][0]["state"]["terminated"]
    result = json.loads(term["message"].strip().splitlines()[-1])
    assert result["upstreams"] == {"build1": b1["digest"], "build2": stage(obj, "build2")["digest"]}, result


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
    pods = kubectl.pods("gone")
    groups = sorted(_labels(p)[1] for p in pods)
    assert groups in (["g1", "g2"], ["g1", "g2", "g3"]), (  # (a retry here is a bug: say why it came)
        groups,
        [(p["metadata"]["name"], p.get("status")) for p in pods],
        [(e["reason"], e["message"]) for e in kubectl.events()],
        kubectl.json("get", "imagebuild", "gone").get("status"),
    )
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
