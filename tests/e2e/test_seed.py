"""The seed example applied with the real kubectl: parallel worker pods, Succeeded with the served digest."""

from __future__ import annotations

import pytest

from stagefleet import health
from stagefleet.localregistry import LocalRegistry

from .conftest import (
    Kubectl,
    Operator,
    inline_manifest,
    pod_window,
    seed_manifest,
    stage,
    wait_for,
    wait_terminal,
)
from .oci import image_files, manifest_digest

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


def test_seed_builds_in_parallel_pods(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    kubectl.apply(seed_manifest("seed", base_image, registry.host, sleep=5))

    # What a user (or a GitOps tool) waits on.
    wait_for(kubectl, operator, "seed", lambda o: "status" in o, "a first status")
    waited = kubectl.run("wait", "--for=condition=Ready", "imagebuild/seed", "--timeout=300s", check=False)
    obj = wait_terminal(kubectl, operator, "seed")
    assert waited.returncode == 0, waited.stderr
    status = obj["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["progress"] == "3/3" and status["observedGeneration"] == 1
    assert health.convention_problems(obj) == []

    # The digest in status is the one the registry serves, and the image has both stages' files.
    digest = status["image"]["digest"]
    assert manifest_digest(registry.host, "e2e/seed", "latest") == digest
    files = image_files(registry.host, "e2e/seed", digest)
    assert files["/out/one.txt"] == b"built by build1\n" and files["/out/two.txt"] == b"built by build2\n"

    # One pod per group; build1 and build2 ran at the same time; final started early (operator default):
    # its pod ran while both were building, waited for their results in the registry, and still got both
    # files (checked above) from the digests they pushed.
    pods = {p["metadata"]["labels"]["stagefleet.io/group"]: p for p in kubectl.pods("seed")}
    assert sorted(p["metadata"]["name"] for p in pods.values()) == [
        "seed-1-g1-a1",
        "seed-1-g2-a1",
        "seed-1-g3-a1",
    ]
    groups = {stage(obj, n)["group"]: n for n in ("build1", "build2", "final")}
    (s1, e1), (s2, e2), (s3, _) = (pod_window(pods[g]) for g in sorted(groups, key=lambda g: groups[g]))
    assert s1 < e2 and s2 < e1, f"build1 {s1}..{e1} and build2 {s2}..{e2} did not overlap"
    assert s3 < min(e1, e2), f"final started at {s3}, after build1 ended {e1} / build2 {e2}"
    final_args = pods["g3"]["spec"]["containers"][0]["args"]
    waits = [final_args[i + 1] for i, a in enumerate(final_args) if a == "--upstream-wait"]
    assert [w.split("=", 1)[0] for w in waits] == ["build1", "build2"]
    pushed = [stage(obj, "build1")["image"], stage(obj, "build2")["image"]]
    assert [w.split("=", 1)[1] for w in waits] == pushed
    # Every pod ran on one of the cluster's Nodes, and each stage's recorded node is its pod's.
    nodes = {n["metadata"]["name"] for n in kubectl.json("get", "nodes")["items"]}
    by_name = {p["metadata"]["name"]: p for p in pods.values()}
    assert nodes and all(p["spec"].get("nodeName") in nodes for p in pods.values()), (nodes, by_name)
    for name in ("build1", "build2", "final"):
        s = stage(obj, name)
        assert s["node"] == by_name[s["pod"]]["spec"]["nodeName"], (name, s)
    for p in pods.values():
        assert p["spec"]["restartPolicy"] == "Never"
        assert p["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    # Per-stage status: digests, durations, pods; printer columns show phase and progress.
    for name in ("build1", "build2", "final"):
        s = stage(obj, name)
        assert s["phase"] == "Succeeded" and s["digest"].startswith("sha256:") and s["attempts"] == 1
        assert s["pod"] in {p["metadata"]["name"] for p in pods.values()}
    table = kubectl.run("get", "ib", "seed").stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "STAGES", "READY", "IMAGE", "AGE", "MESSAGE"], table
    assert row.split()[:5] == ["seed", "Succeeded", "3/3", "True", digest[:19]], table
    assert f"built {obj['status']['image']['name']}@{digest}" in row

    reasons = [e["reason"] for e in kubectl.events() if e["involvedObject"].get("kind") == "ImageBuild"]
    assert {"Planned", "StageSucceeded", "BuildSucceeded"} <= set(reasons)


def test_max_parallel_pods_queues_groups(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    """With maxParallelPods: 1 the independent groups run one after the other (critical path first)."""
    kubectl.apply(seed_manifest("queued", base_image, registry.host, sleep=2, maxParallelPods=1))
    obj = wait_terminal(kubectl, operator, "queued")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    pods = {p["metadata"]["labels"]["stagefleet.io/group"]: p for p in kubectl.pods("queued")}
    critical = next(g["id"] for g in obj["status"]["plan"]["groups"] if g["wave"] == 0 and g["critical"])
    other = next(g["id"] for g in obj["status"]["plan"]["groups"] if g["wave"] == 0 and not g["critical"])
    (s1, e1), (s2, e2) = pod_window(pods[critical]), pod_window(pods[other])
    assert e1 <= s2, f"{critical} {s1}..{e1} and {other} {s2}..{e2} overlapped"


def test_a_chain_of_stages_runs_in_one_pod(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    dockerfile = (
        f"FROM {base_image} AS base\nRUN echo base > /base\n"
        "FROM base AS deps\nRUN echo deps > /deps\n"
        f"FROM {base_image} AS tools\nRUN echo tools > /tools\n"
        "FROM deps AS app\nCOPY --from=tools /tools /tools\n"
    )
    kubectl.apply(inline_manifest("chain", dockerfile, registry.host))
    obj = wait_terminal(kubectl, operator, "chain")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    base, deps = stage(obj, "base"), stage(obj, "deps")
    assert base["group"] == deps["group"] and base["pod"] == deps["pod"]
    chain = next(g for g in obj["status"]["plan"]["groups"] if g["id"] == base["group"])
    assert chain["stages"][:2] == ["base", "deps"]
    for name in chain["stages"]:  # per-stage timings from one pod; only the group's target is pushed
        s = stage(obj, name)
        assert s["duration"] >= 0 and s["pod"] == base["pod"]
        assert ("digest" in s) == (name == chain["stages"][-1])
    assert len(kubectl.pods("chain")) == len(obj["status"]["plan"]["groups"]) < len(obj["status"]["stages"])
    files = image_files(registry.host, "e2e/chain", obj["status"]["image"]["digest"])
    assert {files["/base"], files["/deps"], files["/tools"]} == {b"base\n", b"deps\n", b"tools\n"}


@pytest.mark.tiers("real")
def test_the_final_stage_starts_while_its_upstreams_build(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    """The head start: the early-started final pod builds its own steps before the first `COPY --from`
    while both upstreams still build; the build proper takes them from its layer cache."""
    dockerfile = (
        f"FROM {base_image} AS up1\nRUN sleep 5 && echo one > /one\n"
        f"FROM {base_image} AS up2\nRUN sleep 5 && echo two > /two\n"
        f"FROM {base_image} AS final\nRUN echo prepared > /prep\n"
        "COPY --from=up1 /one /one\nCOPY --from=up2 /two /two\n"
    )
    kubectl.apply(inline_manifest("headstart", dockerfile, registry.host))
    obj = wait_terminal(kubectl, operator, "headstart")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    files = image_files(registry.host, "e2e/headstart", obj["status"]["image"]["digest"])
    assert (files["/prep"], files["/one"], files["/two"]) == (b"prepared\n", b"one\n", b"two\n")
    log = kubectl.run("logs", stage(obj, "final")["pod"]).stdout
    assert ("head start: building final up to Dockerfile:6 while the upstreams build "
            "(Dockerfile:7 needs one)") in log, log
    assert "head start done: exit status 0" in log, log
    run = log.index("STEP 2/4: RUN echo prepared")  # the build proper's step, after the head start's 2/2
    assert log.index("STEP 2/2: RUN echo prepared") < run
    assert "--> Using cache" in log[run:].split("STEP 3/4")[0]
