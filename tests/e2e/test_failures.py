"""Bad inputs end as a precise status (Failed, Stalled=True, the problem named); the operator lives on."""

from __future__ import annotations

from typing import Any

import pytest

from stagefleet import health
from stagefleet.localregistry import LocalRegistry, free_port

from .conftest import Kubectl, Operator, inline_manifest, seed_manifest, wait_for, wait_terminal, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


def _expect_failed(kubectl: Kubectl, operator: Operator, name: str, *needles: str) -> dict[str, Any]:
    obj = wait_terminal(kubectl, operator, name)
    status = obj["status"]
    assert status["phase"] == "Failed", status
    for needle in needles:
        assert needle in status["message"], (needle, status["message"])
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and needles[0] in stalled["message"]
    assert health.convention_problems(obj) == []
    assert health.kstatus(obj).status == "Failed"
    assert operator.alive()
    return obj


@pytest.mark.parametrize(
    ("dockerfile", "target", "needles"),
    [
        ("FROM {base} AS a\nFORM x\n", None, ("Dockerfile:2: unknown instruction: FORM",)),
        ("FROM {base} AS a\nRUN true\n", "nope", ('target stage "nope" could not be found',)),
        (
            "FROM {base} AS a\nCOPY --from=b /x /x\nFROM {base} AS b\nCOPY --from=a /y /y\n",
            None,
            ("circular dependency",),
        ),
    ],
    ids=["invalid-dockerfile", "unknown-target", "cycle"],
)
def test_dockerfile_errors_fail_before_any_pod(
    kubectl: Kubectl,
    operator: Operator,
    registry: LocalRegistry,
    base_image: str,
    dockerfile: str,
    target: str | None,
    needles: tuple[str, ...],
) -> None:
    spec: dict[str, Any] = {"target": target} if target else {}
    kubectl.apply(inline_manifest("bad", dockerfile.format(base=base_image), registry.host, **spec))
    obj = _expect_failed(kubectl, operator, "bad", *needles)
    assert obj["status"]["failure"]["reason"] == "DockerfileError"
    assert kubectl.pods("bad") == []


def test_failing_step_names_stage_and_line(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    """A build error is not retried; the stage still running is stopped and marked Cancelled."""
    dockerfile = (
        f"FROM {base_image} AS slow\nRUN sleep 60 && echo ok > /ok\n"
        f"FROM {base_image} AS broken\nRUN echo about to fail && exit 3\n"
        f"FROM {base_image}\nCOPY --from=slow /ok /ok\nCOPY --from=broken /etc/hostname /x\n"
    )
    kubectl.apply(inline_manifest("step", dockerfile, registry.host, retries=2))
    obj = _expect_failed(kubectl, operator, "step", "broken")
    failure = obj["status"]["failure"]
    assert failure["stage"] == "broken" and failure["line"] == 4 and failure["exitCode"] == 13
    stages = {s["name"]: s for s in obj["status"]["stages"]}
    assert (
        stages["broken"]["phase"] == "Failed" and stages["broken"]["attempts"] == 1
    )  # a build error: no retry
    assert stages["slow"]["phase"] == "Cancelled" and stages["stage-2"]["phase"] == "Cancelled"
    assert "exit 3" in stages["broken"]["message"] or "exit status 3" in stages["broken"]["message"]
    # The slow stage's pod is stopped; the final group never built. It may have a pod started early (its
    # worker waits for the upstream results; pods start slower on a real cluster, so there it often does):
    # that pod waited by tag and is stopped with the build.
    final_group = stages["stage-2"]["group"]

    def in_group(group: str) -> list[dict[str, Any]]:
        return [p for p in kubectl.pods("step") if p["metadata"]["labels"]["stagefleet.io/group"] == group]

    wait_until(
        lambda: all(p["status"].get("phase") in ("Succeeded", "Failed")
                    for p in in_group(stages["slow"]["group"]) + in_group(final_group)),
        "the slow stage's and any early final pod to stop",
        operator,
    )
    for pod in in_group(final_group):
        assert "--upstream-wait" in pod["spec"]["containers"][0]["args"], pod["metadata"]["name"]
    assert "digest" not in stages["stage-2"]


def test_unreachable_git_repository(kubectl: Kubectl, operator: Operator, registry: LocalRegistry) -> None:
    kubectl.apply(
        {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": "nogit"},
            "spec": {
                "source": {"git": {"url": "file:///nonexistent/stagefleet/repo.git", "revision": "main"}},
                "output": {"image": f"{registry.host}/e2e/nogit:latest"},
            },
        }
    )
    obj = _expect_failed(
        kubectl, operator, "nogit", "git ls-remote failed", "/nonexistent/stagefleet/repo.git"
    )
    assert obj["status"]["failure"]["reason"] == "SourceUnavailable"


@pytest.mark.tiers("real")
def test_registry_down_retries_then_fails(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    operator.stop()
    operator.extra = ["--insecure-registry", dead]
    operator.start()
    manifest = seed_manifest("noreg", base_image, registry.host, sleep=0, retries=1)
    manifest["spec"]["output"] = {"image": f"{dead}/e2e/noreg:latest"}
    kubectl.apply(manifest)
    obj = _expect_failed(kubectl, operator, "noreg", "after 2 attempts")
    stages = {s["name"]: s for s in obj["status"]["stages"]}
    failed = [s for s in stages.values() if s["phase"] == "Failed"]
    assert failed and all(s["attempts"] == 2 for s in failed)
    assert obj["status"]["failure"]["kind"] != "build"
    assert dead.split(":")[1] in obj["status"]["message"] or "push" in obj["status"]["message"].lower()


def test_timeout_cancels_and_stops_pods(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    kubectl.apply(seed_manifest("slow", base_image, registry.host, sleep=120, timeout="5s"))
    obj = wait_terminal(kubectl, operator, "slow")
    status = obj["status"]
    assert status["phase"] == "Cancelled" and "timed out after 5s (spec.timeout)" in status["message"]
    assert {s["phase"] for s in status["stages"]} == {"Cancelled"}
    assert health.convention_problems(obj) == [] and health.kstatus(obj).status == "Failed"
    wait_until(
        lambda: all(p["status"].get("phase") in ("Succeeded", "Failed") for p in kubectl.pods("slow")),
        "the pods to stop",
        operator,
    )


def _stalled(o: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (o.get("status") or {}).get("conditions") or () if c["type"] == "Stalled"), {})


def _rejections(o: dict[str, Any]) -> int:
    return max((s.get("rejections") or 0 for s in (o.get("status") or {}).get("stages") or ()), default=0)


def test_refused_pod_stalls_with_the_apis_message_then_resumes(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    """A worker pod naming a ServiceAccount that does not exist is refused by the API (403): the build is
    Stalled with the API's words and one Warning event, is tried again meanwhile, and goes on by itself
    once the ServiceAccount is there."""
    sa = "does-not-exist"
    dockerfile = f"FROM {base_image}\nRUN echo ok > /ok\n"
    kubectl.apply(inline_manifest("nosa", dockerfile, registry.host, serviceAccountName=sa))
    obj = wait_for(
        kubectl,
        operator,
        "nosa",
        lambda o: _stalled(o).get("status") == "True" and _rejections(o) >= 3,
        "Stalled, the pod refused three times",
    )
    status = obj["status"]
    api_says = (
        f'pods "nosa-1-g1-a1" is forbidden: error looking up service account {kubectl.namespace}/{sa}: '
        f'serviceaccount "{sa}" not found'
    )
    stalled = _stalled(obj)
    assert stalled["reason"] == "PodRejected" and api_says in stalled["message"], stalled
    assert "pod nosa-1-g1-a1 refused by the API (403 Forbidden)" in stalled["message"]
    assert status["phase"] == "Pending" and status["message"] == stalled["message"]
    assert status["startTime"] and status["stages"][0]["attempts"] == 0
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "False"
    assert health.convention_problems(obj) == [] and health.kstatus(obj).status == "Failed"
    assert kubectl.pods("nosa") == []

    def rejected_events() -> list[dict[str, Any]]:
        return [
            e
            for e in kubectl.events()
            if e["involvedObject"].get("name") == "nosa" and e["reason"] == "PodRejected"
        ]

    # Tried three times, one event: it says the same each time.
    events = rejected_events()
    assert len(events) == 1 and events[0]["type"] == "Warning" and api_says in events[0]["message"]

    kubectl.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
    obj = wait_terminal(kubectl, operator, "nosa")
    status = obj["status"]
    assert status["phase"] == "Succeeded", status["message"]
    assert _stalled(obj)["status"] == "False" and health.convention_problems(obj) == []
    assert status["stages"][0]["attempts"] == 1 and "rejections" not in status["stages"][0]
    assert [p["spec"]["serviceAccountName"] for p in kubectl.pods("nosa")] == [sa]
    assert len(rejected_events()) == 1


def test_refused_pods_still_time_out(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    """spec.timeout counts from the first pass, although no pod was ever created."""
    dockerfile = f"FROM {base_image}\nRUN echo ok > /ok\n"
    kubectl.apply(inline_manifest("nosa", dockerfile, registry.host, serviceAccountName="nope", timeout="5s"))
    obj = wait_terminal(kubectl, operator, "nosa")
    status = obj["status"]
    assert status["phase"] == "Cancelled", status
    assert status["message"].startswith("timed out after 5s (spec.timeout); group g1 ")
    assert 'serviceaccount "nope" not found' in status["message"]
    assert next(c for c in status["conditions"] if c["type"] == "Stalled")["reason"] == "Timeout"
    assert health.convention_problems(obj) == [] and health.kstatus(obj).status == "Failed"
    assert kubectl.pods("nosa") == []


def test_an_exhausted_quota_is_a_wait_not_a_failure(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    """Under a ResourceQuota of one pod, the seed's two parallel groups cannot both start: the refused
    one waits for the quota (Reconciling, reason WaitingForQuota, the API's words, one Normal event,
    never Stalled) and starts once the first pod has ended; the build succeeds."""
    kubectl.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "builds"},
                   "spec": {"hard": {"pods": "1"}}})
    kubectl.apply(seed_manifest("quota", base_image, registry.host, sleep=2))
    waiting = wait_for(
        kubectl, operator, "quota",
        lambda o: next((c for c in (o.get("status") or {}).get("conditions") or ()
                        if c["type"] == "Reconciling" and c.get("reason") == "WaitingForQuota"), None)
        is not None,
        "Reconciling, WaitingForQuota",
    )
    status = waiting["status"]
    assert "waiting for the namespace's ResourceQuota: group g" in status["message"], status["message"]
    assert "exceeded quota: builds, requested: pods=1, used: pods=1, limited: pods=1" in status["message"]
    assert _stalled(waiting)["status"] == "False" and health.kstatus(waiting).status == "InProgress"
    assert health.convention_problems(waiting) == []

    obj = wait_terminal(kubectl, operator, "quota")
    status = obj["status"]
    assert status["phase"] == "Succeeded", status["message"]
    assert all(s.get("attempts") == 1 and "rejections" not in s for s in status["stages"]), status["stages"]
    mine = [e for e in kubectl.events() if e["involvedObject"].get("name") == "quota"]
    assert [e["type"] for e in mine if e["reason"] == "WaitingForQuota"][:1] == ["Normal"], mine
    assert not [e for e in mine if e["reason"] == "PodRejected"], mine


def test_worker_pods_carry_the_priority_class_the_admission_resolves(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    """`--worker-priority-class` (chart: worker.priorityClassName) names every worker pod's PriorityClass.
    While the class does not exist, the API refuses the pods in its words (PodRejected); once it exists,
    the build goes on and its pods run at the class's priority."""
    pc = f"builds-{kubectl.namespace[-5:]}"
    operator.stop()
    operator.extra = ["--worker-priority-class", pc]
    operator.start()
    kubectl.apply(inline_manifest("prio", f"FROM {base_image}\nRUN echo ok > /ok\n", registry.host))
    obj = wait_for(kubectl, operator, "prio", lambda o: _rejections(o) >= 1, "the pod refused")
    assert f"no PriorityClass with name {pc} was found" in _stalled(obj)["message"], _stalled(obj)
    try:
        kubectl.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                       "metadata": {"name": pc}, "value": 1000, "description": "test builds"})
        obj = wait_terminal(kubectl, operator, "prio")
        assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
        [pod] = kubectl.pods("prio")
        spec = pod["spec"]
        assert (spec["priorityClassName"], spec["priority"], spec["preemptionPolicy"]) == (
            pc, 1000, "PreemptLowerPriority")
    finally:
        kubectl.run("delete", "priorityclass", pc, "--wait=false", check=False)
