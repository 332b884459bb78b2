"""The dev cluster's minimal Deployment/ReplicaSet controller (`devcluster/deployments.py`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from stagefleet.devcluster.deployments import (
    HASH_LABEL,
    REVISION,
    REVISION_HISTORY,
    deployment_status,
    history_to_delete,
    pod_for,
    replicaset_for,
    revision_bump,
    rollout_complete,
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


def old_rs(name: str, rev: int, replicas: int = 0, pods: int | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "annotations": {REVISION: str(rev)},
            "creationTimestamp": f"2026-01-01T00:00:{rev:02d}Z",
            "generation": 2,
        },
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas if pods is None else pods, "observedGeneration": 2},
    }


def test_revisions_count_up_and_come_back_with_history() -> None:
    assert replicaset_for(DEPLOY, 7)["metadata"]["annotations"] == {REVISION: "7"}
    current = old_rs("web-new", 3)
    assert revision_bump(current, [old_rs("a", 1), old_rs("b", 2)]) == {}  # already the newest
    # its template is back (kubectl rollout undo): the newest number, the old one remembered
    assert revision_bump(old_rs("a", 1), [old_rs("b", 2), current]) == {REVISION: "4", REVISION_HISTORY: "1"}
    again = old_rs("a", 4)
    again["metadata"]["annotations"][REVISION_HISTORY] = "1"
    assert revision_bump(again, [old_rs("b", 5)]) == {REVISION: "6", REVISION_HISTORY: "1,4"}
    assert revision_bump({"metadata": {"name": "fresh"}}, []) == {REVISION: "1"}


def test_history_beyond_the_limit_goes_oldest_first_once_scaled_down() -> None:
    limited = {**DEPLOY, "spec": {**DEPLOY["spec"], "revisionHistoryLimit": 2}}
    owned = [old_rs("r3", 3), old_rs("r1", 1), old_rs("cur", 5, 2), old_rs("r4", 4), old_rs("r2", 2)]
    assert history_to_delete(limited, "cur", owned) == ["r1", "r2"]
    assert history_to_delete(DEPLOY, "cur", owned) == []  # default limit 10
    # not deleted while it still has (or is to have) pods, or its controller has not caught up
    owned[1] = old_rs("r1", 1, 0, pods=1)
    owned[4]["metadata"]["generation"] = 3
    assert history_to_delete(limited, "cur", owned) == []
    zero = {**DEPLOY, "spec": {**DEPLOY["spec"], "revisionHistoryLimit": 0}}
    assert history_to_delete(zero, "cur", [old_rs("r1", 1), old_rs("cur", 2, 2)]) == ["r1"]


def test_rollout_complete_needs_every_replica_updated_and_available() -> None:
    done = {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2, "observedGeneration": 3}
    assert rollout_complete(DEPLOY, done)
    assert not rollout_complete(DEPLOY, {**done, "replicas": 3})  # old pods still counted
    assert not rollout_complete(DEPLOY, {**done, "availableReplicas": 1})
    assert not rollout_complete(DEPLOY, {**done, "observedGeneration": 2})


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

    def replicasets() -> dict[str, dict[str, Any]]:
        items = json.loads(k.kubectl("get", "replicasets", "-o", "json").stdout)["items"]
        return {r["metadata"]["name"]: r for r in items}

    # the old ReplicaSet stays, scaled to 0, as revision history
    wait_until(
        lambda: (rss := replicasets()).get(rs["metadata"]["name"], {}).get("status", {}).get("replicas") == 0
        and len(rss) == 2,
        "the old ReplicaSet scaled to 0",
        timeout=60,
    )
    assert replicasets()[rs["metadata"]["name"]]["spec"]["replicas"] == 0

    k.kubectl("delete", "deployment", "web")
    wait_until(lambda: not pods(), "pods removed with the Deployment", timeout=60)


@pytest.mark.cluster
@pytest.mark.skipif(os.geteuid() != 0, reason="pods run in private mount namespaces (root)")
def test_rollout_history_is_kept_to_the_limit_and_undo_works(
    make_cluster: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    k = make_cluster(nodes=1, pods_per_node=8)
    manifest = json.loads(json.dumps(DEPLOY))
    manifest["metadata"] = {"name": "web"}
    manifest["spec"].update(replicas=1, revisionHistoryLimit=2, strategy={"type": "Recreate"})

    def replicasets() -> dict[str, dict[str, Any]]:
        items = json.loads(k.kubectl("get", "replicasets", "-l", "app=web", "-o", "json").stdout)["items"]
        return {r["metadata"]["annotations"][REVISION]: r for r in items}

    def revisions(*revs: str) -> Callable[[], dict[str, dict[str, Any]] | None]:
        return lambda: rss if set(rss := replicasets()) == set(revs) else None

    def rolled_out(rev: str) -> Callable[[], bool]:
        def check() -> bool:
            d = json.loads(k.kubectl("get", "deployment", "web", "-o", "json").stdout)
            st = d.get("status") or {}
            return (
                d["metadata"].get("annotations", {}).get(REVISION) == rev
                and st.get("observedGeneration") == d["metadata"]["generation"]
                and st.get("updatedReplicas") == st.get("replicas") == st.get("availableReplicas") == 1
            )

        return check

    for n in range(1, 6):  # five templates: revisions 1..5
        manifest["spec"]["template"]["metadata"]["annotations"]["a"] = str(n)
        k.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        wait_until(rolled_out(str(n)), f"revision {n} rolled out", timeout=90)
    # the current one plus two old ones at 0 replicas; 1 and 2 deleted
    rss = wait_until(revisions("3", "4", "5"), "a history of 2", timeout=60)
    assert [rss[r]["spec"]["replicas"] for r in ("3", "4", "5")] == [0, 0, 1]
    history = k.kubectl("rollout", "history", "deployment/web").stdout.split()
    assert [w for w in history if w.isdigit()] == ["3", "4", "5"]

    # undo: the previous template's ReplicaSet is scaled up again as revision 6
    k.kubectl("rollout", "undo", "deployment/web")
    wait_until(rolled_out("6"), "revision 6 (the undo) rolled out", timeout=90)
    rss = wait_until(revisions("3", "5", "6"), "revisions 3, 5, 6", timeout=60)
    assert rss["6"]["metadata"]["annotations"][REVISION_HISTORY] == "4"
    assert rss["6"]["spec"]["template"]["metadata"]["annotations"]["a"] == "4"
    assert [rss[r]["spec"]["replicas"] for r in ("3", "5", "6")] == [0, 0, 1]
