"""The dev cluster's minimal Deployment/ReplicaSet controller (`devcluster/deployments.py`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from stagefleet.devcluster.deployments import (
    HASH_LABEL,
    deployment_status,
    pod_for,
    replicaset_for,
    template_hash,
)

DEPLOY: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "ns", "uid": "u-1", "generation": 3},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "x", "command": ["sleep", "300"]}]},
        },
    },
}


def test_replicaset_and_pod_manifests() -> None:
    rs = replicaset_for(DEPLOY)
    h = template_hash(DEPLOY["spec"]["template"])
    assert rs["metadata"]["name"] == f"web-{h}"
    assert rs["metadata"]["ownerReferences"][0] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert rs["spec"]["replicas"] == 2
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", HASH_LABEL: h}
    assert rs["spec"]["template"]["metadata"]["labels"] == {"app": "web", HASH_LABEL: h}
    assert DEPLOY["spec"]["template"]["metadata"]["labels"] == {"app": "web"}  # not mutated
    rs["metadata"]["uid"] = "u-rs"
    pod = pod_for(rs)
    assert pod["metadata"]["generateName"] == f"web-{h}-"
    assert pod["metadata"]["labels"][HASH_LABEL] == h and pod["metadata"]["annotations"] == {"a": "1"}
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "u-rs"
    assert pod["spec"]["containers"][0]["command"] == ["sleep", "300"]
    changed = json.loads(json.dumps(DEPLOY))
    changed["spec"]["template"]["metadata"]["annotations"]["a"] = "2"
    assert replicaset_for(changed)["metadata"]["name"] != rs["metadata"]["name"]


def test_deployment_status_conditions() -> None:
    rs: dict[str, Any] = {
        "metadata": {"name": "web-abc"},
        "status": {"replicas": 2, "readyReplicas": 1, "availableReplicas": 1},
    }
    st = deployment_status(DEPLOY, rs, [rs], "2026-01-01T00:00:00Z")
    counts = (st["replicas"], st["updatedReplicas"], st["readyReplicas"], st["availableReplicas"])
    assert counts == (2, 2, 1, 1)
    assert st["observedGeneration"] == 3 and st["unavailableReplicas"] == 1
    avail = next(c for c in st["conditions"] if c["type"] == "Available")
    assert avail["status"] == "False" and avail["reason"] == "MinimumReplicasUnavailable"
    rs["status"] = {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}
    st = deployment_status({**DEPLOY, "status": st}, rs, [rs], "2026-01-01T00:01:00Z")
    avail = next(c for c in st["conditions"] if c["type"] == "Available")
    prog = next(c for c in st["conditions"] if c["type"] == "Progressing")
    assert avail["status"] == "True" and avail["lastTransitionTime"] == "2026-01-01T00:01:00Z"
    assert prog["reason"] == "NewReplicaSetAvailable" and "unavailableReplicas" not in st


@pytest.mark.cluster
@pytest.mark.skipif(os.geteuid() != 0, reason="pods run in private mount namespaces (root)")
def test_deployment_pods_scale_roll_and_delete(
    make_cluster: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    k = make_cluster(nodes=1, pods_per_node=8)  # on a real cluster: its own controllers, same outcome
    manifest = json.loads(json.dumps(DEPLOY))
    manifest["metadata"] = {"name": "web"}
    k.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def pods() -> list[dict[str, Any]]:
        items = json.loads(k.kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def running(n: int) -> Callable[[], bool]:
        return lambda: len(ps := pods()) == n and all(p["status"].get("phase") == "Running" for p in ps)

    wait_until(running(2), "2 running pods", timeout=60)
    rs_list = json.loads(k.kubectl("get", "replicasets", "-o", "json").stdout)["items"]
    assert len(rs_list) == 1
    rs = rs_list[0]
    for p in pods():
        assert p["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
        assert p["metadata"]["labels"][HASH_LABEL] == rs["metadata"]["labels"][HASH_LABEL]

    def deploy_status() -> dict[str, Any]:
        out: dict[str, Any] = json.loads(k.kubectl("get", "deployment", "web", "-o", "json").stdout)["status"]
        return out

    wait_until(lambda: deploy_status().get("availableReplicas") == 2, "availableReplicas 2", timeout=60)
    st = deploy_status()
    assert st["readyReplicas"] == 2 and st["replicas"] == 2
    assert any(c["type"] == "Available" and c["status"] == "True" for c in st["conditions"])
    k.kubectl("rollout", "status", "deployment/web", "--timeout=60s")

    k.kubectl("scale", "deployment/web", "--replicas=1")
    wait_until(running(1), "scaled down to 1 pod", timeout=60)
    wait_until(lambda: deploy_status().get("replicas") == 1, "status replicas 1", timeout=60)

    # a new template: a new ReplicaSet, the old one and its pod go
    k.kubectl("patch", "deployment/web", "--type=merge", "-p",
              '{"spec":{"template":{"metadata":{"annotations":{"a":"2"}}}}}')

    def rolled() -> bool:
        ps = pods()
        return (
            len(ps) == 1
            and ps[0]["metadata"]["labels"][HASH_LABEL] != rs["metadata"]["labels"][HASH_LABEL]
            and ps[0]["status"].get("phase") == "Running"
        )

    wait_until(rolled, "the pod of the new template", timeout=60)
    wait_until(
        lambda: len(json.loads(k.kubectl("get", "replicasets", "-o", "json").stdout)["items"]) == 1,
        "the old ReplicaSet deleted",
        timeout=60,
    )

    k.kubectl("delete", "deployment", "web")
    wait_until(lambda: not pods(), "pods removed with the Deployment", timeout=60)
