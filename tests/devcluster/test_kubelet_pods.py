"""Evidence: pods run by the local kubelet report exactly what Kubernetes reports.

Written against the public API through the real kubectl, so with STAGEFLEET_TEST_KUBECONFIG set they
run against a real cluster too (the images are real busybox images there; here the commands run from the
host). Tests of dev-cluster internals (node loss, capacity of simulated nodes) skip on a real cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import KUBECTL, ClusterKube, wait_until
from hostprocs import processes_with

pytestmark = pytest.mark.cluster

IMAGE = "busybox:1.36"


def pod_manifest(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": IMAGE, "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "evidence"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            **spec,
        },
    }


def finished(k: ClusterKube, name: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        pod = k.pod(name)
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    result: dict[str, Any] = wait_until(done, f"pod {name} to finish", timeout=60)
    return result


def terminated(pod: dict[str, Any], container: str = "main", init: bool = False) -> dict[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    status = next(s for s in pod["status"][key] if s["name"] == container)
    return dict(status["state"]["terminated"])


def conditions(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in pod["status"].get("conditions") or []}


def test_secret_volume_env_configmap_items_downward_api_and_termination_message(cluster: ClusterKube) -> None:
    k = cluster
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"password": "hunter2", "token": "t0k3n"},
        }
    )
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"mode": "fast", "app.conf": "level=3\n", "unused": "x"},
        }
    )
    script = (
        '{ echo "pw-file=$(cat /etc/creds/password)"; '
        'echo "pw-mode=$(stat -L -c %a /etc/creds/password)"; '
        "echo \"conf=$(cat /etc/app/sub/app.conf)\"; ls /etc/app/sub | tr '\\n' ' '; echo; "
        'echo "ro=$(touch /etc/creds/x 2>/dev/null && echo no || echo yes)"; '
        'echo "labels=$(cat /etc/podinfo/labels)"; echo "podname=$(cat /etc/podinfo/name)"; '
        'echo "env=$PW $MODE $POD_NAME $POD_NS $NODE $mode"; '
        'echo "arg=$0"; } > /dev/termination-log'
    )
    k.apply(
        pod_manifest(
            "evidence",
            script,
            container={
                "args": ["$(POD_NAME)-$(MODE)"],
                "env": [
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                ],
                "envFrom": [{"configMapRef": {"name": "settings"}}],
                "volumeMounts": [
                    {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                    {"name": "app", "mountPath": "/etc/app"},
                    {"name": "podinfo", "mountPath": "/etc/podinfo"},
                ],
            },
            volumes=[
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {
                    "name": "app",
                    "configMap": {"name": "settings", "items": [{"key": "app.conf", "path": "sub/app.conf"}]},
                },
                {
                    "name": "podinfo",
                    "downwardAPI": {
                        "items": [
                            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        ]
                    },
                },
            ],
        )
    )
    pod = finished(k, "evidence")
    node = pod["spec"]["nodeName"]
    assert pod["status"]["phase"] == "Succeeded"
    t = terminated(pod)
    assert (t["exitCode"], t["reason"]) == (0, "Completed")
    assert t["message"] == (
        'pw-file=hunter2\npw-mode=400\nconf=level=3\napp.conf \nro=yes\nlabels=app="evidence"\n'
        f"podname=evidence\nenv=hunter2 fast evidence {k.namespace} {node} fast\narg=evidence-fast\n"
    )
    assert t["startedAt"] <= t["finishedAt"]
    cs = pod["status"]["containerStatuses"][0]
    assert (cs["ready"], cs["restartCount"], cs["image"].endswith(IMAGE)) == (False, 0, True)
    conds = conditions(pod)
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "PodCompleted"
    assert conds["PodScheduled"]["status"] == "True" and conds["Initialized"]["status"] == "True"
    assert pod["status"]["startTime"] and pod["status"]["hostIP"] and pod["status"]["podIP"]


def test_init_containers_run_in_order_before_the_main_container(cluster: ClusterKube) -> None:
    k = cluster
    shared = [{"name": "work", "mountPath": "/work"}]
    manifest = pod_manifest(
        "ordered",
        "cat /work/order > /dev/termination-log; echo main >> /dev/termination-log",
        container={"volumeMounts": shared},
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    manifest["spec"]["initContainers"] = [
        {
            "name": f"init{i}",
            "image": IMAGE,
            "command": ["sh", "-c", f"sleep 0.{3 - i}; echo init{i} >> /work/order"],
            "volumeMounts": shared,
        }
        for i in (1, 2)
    ]
    k.apply(manifest)
    pod = finished(k, "ordered")
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod)["message"] == "init1\ninit2\nmain\n"
    for name in ("init1", "init2"):
        assert terminated(pod, name, init=True)["reason"] == "Completed"
    first, second = (terminated(pod, n, init=True) for n in ("init1", "init2"))
    assert first["finishedAt"] <= second["startedAt"]


def test_failing_container_fails_the_pod_with_its_exit_code(cluster: ClusterKube) -> None:
    k = cluster
    k.apply(
        pod_manifest(
            "fails",
            "echo first line; echo 'it broke' >&2; exit 3",
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        )
    )
    pod = finished(k, "fails")
    assert pod["status"]["phase"] == "Failed"
    t = terminated(pod)
    assert (t["exitCode"], t["reason"], t["message"]) == (3, "Error", "first line\nit broke\n")
    assert conditions(pod)["Ready"]["reason"] == "PodFailed"


def test_failed_init_container_fails_the_pod_and_main_never_starts(cluster: ClusterKube) -> None:
    k = cluster
    manifest = pod_manifest("init-fails", "echo should-not-run")
    manifest["spec"]["initContainers"] = [
        {"name": "setup", "image": IMAGE, "command": ["sh", "-c", "exit 4"]}
    ]
    k.apply(manifest)
    pod = finished(k, "init-fails")
    assert pod["status"]["phase"] == "Failed"
    assert terminated(pod, "setup", init=True)["exitCode"] == 4
    assert "waiting" in pod["status"]["containerStatuses"][0]["state"]
    assert conditions(pod)["Initialized"]["status"] == "False"


def test_restart_policy_on_failure_restarts_until_success(cluster: ClusterKube) -> None:
    k = cluster
    script = "if [ -f /work/tried ]; then exit 0; fi; touch /work/tried; exit 1"
    k.apply(
        pod_manifest(
            "retry",
            script,
            restartPolicy="OnFailure",
            container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            volumes=[{"name": "work", "emptyDir": {}}],
        )
    )
    pod = finished(k, "retry")
    cs = pod["status"]["containerStatuses"][0]
    assert pod["status"]["phase"] == "Succeeded"
    assert cs["restartCount"] == 1
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert cs["state"]["terminated"]["exitCode"] == 0


def test_active_deadline_seconds_fails_the_pod_with_deadline_exceeded(cluster: ClusterKube) -> None:
    k = cluster
    k.apply(pod_manifest("deadline", "sleep 600", activeDeadlineSeconds=1))
    pod = finished(k, "deadline")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["message"] == "Pod was active on the node longer than the specified deadline"


def test_missing_secret_is_a_config_error_until_it_exists(cluster: ClusterKube) -> None:
    k = cluster
    k.apply(
        pod_manifest(
            "later",
            "echo -n $PW > /dev/termination-log",
            container={"env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "late", "key": "pw"}}}]},
        )
    )

    def waiting_reason() -> str | None:
        statuses = k.pod("later")["status"].get("containerStatuses") or []
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    wait_until(lambda: waiting_reason() == "CreateContainerConfigError", "CreateContainerConfigError")
    k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late"}, "stringData": {"pw": "now"}})
    pod = finished(k, "later")
    assert terminated(pod)["message"] == "now"


def watch_events(k: ClusterKube, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(KUBECTL), "-n", k.namespace, "get", "pod", name, "-w", "-o", "json", "--output-watch-events"],
        stdout=subprocess.PIPE,
        text=True,
        env=k.env(),
    )


def watch_events_iter(proc: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    """Decoded watch events (kubectl -w -o json --output-watch-events) as they arrive."""
    assert proc.stdout is not None
    decoder = json.JSONDecoder()
    buf = ""
    for line in proc.stdout:
        buf += line
        try:
            ev, _ = decoder.raw_decode(buf.strip())
        except ValueError:
            continue
        buf = ""
        yield ev


def delete_and_watch(k: ClusterKube, name: str, *delete_args: str) -> list[dict[str, Any]]:
    """Delete the pod while watching it; the events from the deletion up to and including DELETED."""
    proc = watch_events(k, name)
    try:
        events = watch_events_iter(proc)
        first = next(events)  # the watch is established (initial ADDED) before we delete
        assert first["type"] == "ADDED"
        k.kubectl("delete", "pod", name, "--wait=false", *delete_args)
        seen = []
        for ev in events:
            seen.append(ev)
            if ev["type"] == "DELETED":
                break
        return seen
    finally:
        proc.kill()
        proc.wait()


def test_graceful_delete_sends_sigterm_then_removes_the_pod(cluster: ClusterKube) -> None:
    k = cluster
    script = (
        "trap 'echo got SIGTERM > /dev/termination-log; exit 0' TERM; echo ready; "
        "while true; do sleep 0.1; done"
    )
    k.apply(pod_manifest("graceful", script, terminationGracePeriodSeconds=30))
    wait_until(lambda: "ready" in k.kubectl("logs", "graceful", check=False).stdout, "the container to start")
    events = delete_and_watch(k, "graceful")
    assert events[-1]["type"] == "DELETED"
    last = events[-1]["object"]
    assert last["metadata"]["deletionTimestamp"]
    t = terminated(last)
    assert (t["exitCode"], t["message"]) == (0, "got SIGTERM\n")
    assert k.kubectl("get", "pod", "graceful", check=False).returncode != 0


def test_graceful_delete_kills_after_the_grace_period(cluster: ClusterKube) -> None:
    k = cluster
    k.apply(pod_manifest("stubborn", "trap '' TERM; echo ready; while true; do sleep 0.1; done"))
    wait_until(lambda: "ready" in k.kubectl("logs", "stubborn", check=False).stdout, "the container to start")
    events = delete_and_watch(k, "stubborn", "--grace-period=1")
    t = terminated(events[-1]["object"])
    assert t["exitCode"] == 137


def test_logs_through_kubectl(cluster: ClusterKube) -> None:
    k = cluster
    manifest = pod_manifest("chatty", "echo out-line; echo err-line >&2; echo second")
    manifest["spec"]["initContainers"] = [
        {"name": "prep", "image": IMAGE, "command": ["sh", "-c", "echo prepping"]}
    ]
    manifest["spec"]["containers"].append(
        {"name": "side", "image": IMAGE, "command": ["sh", "-c", "echo from side"]}
    )
    k.apply(manifest)
    finished(k, "chatty")
    assert k.kubectl("logs", "chatty", "-c", "main").stdout == "out-line\nerr-line\nsecond\n"
    assert k.kubectl("logs", "chatty", "-c", "side").stdout == "from side\n"
    assert k.kubectl("logs", "chatty", "-c", "prep").stdout == "prepping\n"
    assert k.kubectl("logs", "chatty", "-c", "main", "--tail=1").stdout == "second\n"


def test_node_selector_is_honoured_and_unschedulable_pods_stay_pending(cluster: ClusterKube) -> None:
    k = cluster
    k.require_devcluster()  # labels nodes: not something to do to a real cluster
    k.kubectl("label", "node", "devnode-2", "disk=ssd")
    k.apply(pod_manifest("picky", "true", nodeSelector={"disk": "ssd"}))
    assert finished(k, "picky")["spec"]["nodeName"] == "devnode-2"

    k.apply(pod_manifest("nowhere", "true", nodeSelector={"disk": "tape"}))

    def unschedulable() -> dict[str, Any] | None:
        return conditions(k.pod("nowhere")).get("PodScheduled")

    cond = wait_until(unschedulable, "PodScheduled condition")
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert cond["message"].startswith(
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector"
    )
    pod = k.pod("nowhere")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    k.kubectl("label", "node", "devnode-1", "disk=tape")
    assert finished(k, "nowhere")["spec"]["nodeName"] == "devnode-1"


def test_unschedulable_on_a_real_cluster_too(cluster: ClusterKube) -> None:
    k = cluster
    k.apply(pod_manifest("never", "true", nodeSelector={"stagefleet.io/no-such-label": uuid.uuid4().hex[:8]}))
    cond = wait_until(lambda: conditions(k.pod("never")).get("PodScheduled"), "PodScheduled condition")
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert "didn't match Pod's node affinity/selector" in cond["message"]


def test_pods_per_node_capacity(make_cluster: Any) -> None:
    k: ClusterKube = make_cluster(nodes=1, pods_per_node=1)
    k.require_devcluster()
    k.apply(pod_manifest("first", "trap 'exit 0' TERM; while [ ! -f /tmp/never ]; do sleep 0.1; done"))
    wait_until(lambda: k.pod("first")["status"].get("phase") == "Running", "first pod running")
    k.apply(pod_manifest("second", "true"))
    cond = wait_until(lambda: conditions(k.pod("second")).get("PodScheduled"), "PodScheduled condition")
    assert cond["status"] == "False" and "1 Too many pods" in cond["message"]
    k.kubectl("delete", "pod", "first", "--wait=false")
    assert finished(k, "second")["status"]["phase"] == "Succeeded"


# Node loss with heartbeats and the control plane's reaction sped up (real: a Lease renewed every 10 s,
# --node-monitor-grace-period 40 s, --node-monitor-period 5 s).
FAST_NODE_LOSS = {"lease_seconds": 0.5, "node_monitor_grace_seconds": 3.0, "node_monitor_period": 0.5}


def ready_condition(k: ClusterKube, node: str) -> dict[str, Any]:
    return next(c for c in k.get("node", node)["status"]["conditions"] if c["type"] == "Ready")


def taints(k: ClusterKube, node: str) -> set[tuple[str, str]]:
    return {(t["key"], t["effect"]) for t in k.get("node", node)["spec"].get("taints") or []}


def test_a_lost_nodes_pods_run_on_until_the_control_plane_evicts_them(make_cluster: Any) -> None:
    """As on a real cluster: the kubelet is gone, not the machine. The pod stays Running (Ready=False once
    the node is Unknown), its process runs on; after its NoExecute toleration it is deleted and stays
    Terminating; only the kubelet's return ends it."""
    k: ClusterKube = make_cluster(nodes=2, **FAST_NODE_LOSS)
    dev = k.require_devcluster()
    token = f"marker-{uuid.uuid4().hex}"
    manifest = pod_manifest(
        "doomed",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        nodeSelector={"kubernetes.io/hostname": "devnode-1"},
        tolerations=[
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 2,
            },
        ],
    )
    manifest["spec"]["containers"][0]["command"].append(token)  # becomes $0: visible in the cmdline
    k.apply(manifest)
    wait_until(lambda: k.pod("doomed")["status"].get("phase") == "Running", "pod running")
    dev.lose_node("devnode-1")
    assert k.pod("doomed")["status"]["phase"] == "Running" and processes_with(token)
    wait_until(lambda: ready_condition(k, "devnode-1")["status"] == "Unknown", "devnode-1 Ready=Unknown")
    ready = ready_condition(k, "devnode-1")
    assert (ready["reason"], ready["message"]) == (
        "NodeStatusUnknown",
        "Kubelet stopped posting node status.",
    )
    # Another node is Ready: NoExecute too, so pods past their toleration are evicted.
    wait_until(
        lambda: (
            taints(k, "devnode-1")
            == {
                ("node.kubernetes.io/unreachable", "NoSchedule"),
                ("node.kubernetes.io/unreachable", "NoExecute"),
            }
        ),
        "the unreachable taints",
    )
    pod = k.pod("doomed")
    assert pod["status"]["phase"] == "Running" and conditions(pod)["Ready"]["status"] == "False"
    pod = wait_until(
        lambda: (p := k.pod("doomed"))["metadata"].get("deletionTimestamp") and p,
        "the taint manager's delete",
    )
    events = json.loads(k.kubectl("get", "events", "-o", "json").stdout)["items"]
    assert any(
        e["reason"] == "TaintManagerEviction" and e["involvedObject"]["name"] == "doomed" for e in events
    )
    # Nobody finishes the deletion: the pod stays Terminating, its process runs on.
    k.apply(pod_manifest("survivor", "true"))
    assert finished(k, "survivor")["spec"]["nodeName"] == "devnode-2"  # new pods avoid the tainted node
    assert k.pod("doomed")["status"]["phase"] == "Running" and processes_with(token)
    # The kubelet comes back: it stops the pod and removes it; the taints go.
    dev.recover_node("devnode-1")
    wait_until(lambda: k.kubectl("get", "pod", "doomed", check=False).returncode != 0, "doomed removed")
    assert not processes_with(token)
    wait_until(lambda: not taints(k, "devnode-1"), "the taints removed")
    assert ready_condition(k, "devnode-1")["status"] == "True"


def test_a_pod_force_deleted_while_its_node_is_lost_is_killed_when_the_kubelet_returns(
    make_cluster: Any,
) -> None:
    k: ClusterKube = make_cluster(nodes=2, **FAST_NODE_LOSS)
    dev = k.require_devcluster()
    token = f"marker-{uuid.uuid4().hex}"
    manifest = pod_manifest(
        "zombie", "while true; do sleep 0.1; done", nodeSelector={"kubernetes.io/hostname": "devnode-1"}
    )
    manifest["spec"]["containers"][0]["command"].append(token)
    k.apply(manifest)
    wait_until(lambda: k.pod("zombie")["status"].get("phase") == "Running", "pod running")
    dev.lose_node("devnode-1")
    k.kubectl("delete", "pod", "zombie", "--grace-period=0", "--force")
    assert k.kubectl("get", "pod", "zombie", check=False).returncode != 0
    assert processes_with(token)  # the kubelet that would kill it is gone
    dev.recover_node("devnode-1")
    wait_until(lambda: not processes_with(token), "the process killed by the returning kubelet")


def test_project_venv_comes_first_on_the_pod_path(cluster: ClusterKube) -> None:
    """`stagefleet-worker` (the operator's worker command) resolves without an image."""
    k = cluster
    k.require_devcluster()
    k.apply(
        pod_manifest("worker-help", "stagefleet-worker --help > /dev/null && command -v stagefleet-worker")
    )
    pod = finished(k, "worker-help")
    assert pod["status"]["phase"] == "Succeeded", k.kubectl("logs", "worker-help").stdout
    assert k.kubectl("logs", "worker-help").stdout.strip() == os.path.join(
        os.path.dirname(sys.executable), "stagefleet-worker"
    )


def test_a_live_kubelet_reports_its_node_ready_again_when_marked_unknown(make_cluster: Any) -> None:
    """Heartbeats can be late (a busy machine): the control plane marks the node Unknown, and a kubelet that
    is alive puts its own status back at once (a real one with its next status update, every 10 s), not
    only with its 5-minute status report."""
    k: ClusterKube = make_cluster(nodes=1, node_lifecycle=False)
    k.require_devcluster()
    marker = "2000-01-01T00:00:00Z"
    unknown = {
        "type": "Ready",
        "status": "Unknown",
        "reason": "NodeStatusUnknown",
        "message": "Kubelet stopped posting node status.",
        "lastHeartbeatTime": marker,
        "lastTransitionTime": marker,
    }
    k.kubectl(
        "patch",
        "node",
        "devnode-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"conditions": [unknown]}}),
    )
    ready = wait_until(
        lambda: (c := ready_condition(k, "devnode-1"))["status"] == "True" and c, "devnode-1 Ready again"
    )
    assert ready["lastHeartbeatTime"] != marker and ready["reason"] == "KubeletReady"


def test_recovered_node_takes_new_pods_again(make_cluster: Any) -> None:
    k: ClusterKube = make_cluster(nodes=1, **FAST_NODE_LOSS)
    dev = k.require_devcluster()
    dev.lose_node("devnode-1")
    # With no node Ready at all ("full disruption") the control plane evicts nothing: NoSchedule only.
    wait_until(
        lambda: taints(k, "devnode-1") == {("node.kubernetes.io/unreachable", "NoSchedule")},
        "the unreachable NoSchedule taint",
    )
    k.apply(pod_manifest("waits", "true"))
    cond = wait_until(lambda: conditions(k.pod("waits")).get("PodScheduled"), "PodScheduled condition")
    assert "untolerated taint {node.kubernetes.io/unreachable: }" in cond["message"]
    assert taints(k, "devnode-1") == {("node.kubernetes.io/unreachable", "NoSchedule")}
    dev.recover_node("devnode-1")
    assert finished(k, "waits")["status"]["phase"] == "Succeeded"


def test_termination_message_is_capped_at_4096_bytes_and_path_is_configurable(cluster: ClusterKube) -> None:
    k = cluster
    script = "head -c 5000 /dev/zero | tr '\\0' x > /tmp/stagefleet-result/msg"
    k.apply(
        pod_manifest("capped", script, container={"terminationMessagePath": "/tmp/stagefleet-result/msg"})
    )
    t = terminated(finished(k, "capped"))
    assert t["message"] == "x" * 4096
    assert not os.path.exists("/tmp/stagefleet-result/msg") or k.cluster is None


def test_unknown_command_is_a_start_error(cluster: ClusterKube) -> None:
    k = cluster
    manifest = pod_manifest("nocmd", "unused")
    manifest["spec"]["containers"][0]["command"] = ["no-such-command-stagefleet"]
    k.apply(manifest)
    pod = finished(k, "nocmd")
    t = terminated(pod)
    assert pod["status"]["phase"] == "Failed"
    assert (t["exitCode"], t["reason"]) == (128, "StartError")
    assert 'exec: "no-such-command-stagefleet": executable file not found in $PATH' in t["message"]


def test_pod_path_env_and_working_dir(cluster: ClusterKube) -> None:
    k = cluster
    manifest = pod_manifest(
        "cwd",
        "pwd > /dev/termination-log; echo $PATH >> /dev/termination-log",
        container={
            "workingDir": "/tmp/stagefleet-wd/sub",
            "env": [{"name": "PATH", "value": "/bin:/usr/bin"}],
        },
    )
    manifest["spec"]["containers"][0]["command"] = [
        "/bin/sh",
        "-c",
        manifest["spec"]["containers"][0]["command"][2],
    ]
    k.apply(manifest)
    t = terminated(finished(k, "cwd"))
    assert t["message"] == "/tmp/stagefleet-wd/sub\n/bin:/usr/bin\n"


def test_projected_volume_and_subpath_file_mount(cluster: ClusterKube) -> None:
    k = cluster
    k.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "p-sec"}, "stringData": {"token": "T"}}
    )
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "p-cm"},
            "data": {"app.conf": "conf-body", "other": "o"},
        }
    )
    script = (
        "{ cat /etc/stagefleet-test.conf; echo; ls /opt/stagefleet-projected | sort | tr '\\n' ' '; echo; "
        "cat /opt/stagefleet-projected/token /opt/stagefleet-projected/ns; } > /dev/termination-log"
    )
    k.apply(
        pod_manifest(
            "projected",
            script,
            container={
                "volumeMounts": [
                    {"name": "proj", "mountPath": "/opt/stagefleet-projected"},
                    {"name": "cm", "mountPath": "/etc/stagefleet-test.conf", "subPath": "app.conf"},
                ]
            },
            volumes=[
                {"name": "cm", "configMap": {"name": "p-cm"}},
                {
                    "name": "proj",
                    "projected": {
                        "sources": [
                            {"secret": {"name": "p-sec", "items": [{"key": "token", "path": "token"}]}},
                            {"configMap": {"name": "p-cm", "items": [{"key": "other", "path": "other"}]}},
                            {
                                "downwardAPI": {
                                    "items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                                }
                            },
                        ]
                    },
                },
            ],
        )
    )
    t = terminated(finished(k, "projected"))
    assert t["message"] == f"conf-body\nns other token \nT{k.namespace}"


def test_taints_keep_pods_away_unless_tolerated(make_cluster: Any) -> None:
    from stagefleet.devcluster.kubelet import NodeConfig

    taint = {"key": "dedicated", "value": "builds", "effect": "NoSchedule"}
    k: ClusterKube = make_cluster(
        node_specs=[
            NodeConfig("devnode-1", {"role": "builds"}, taints=(taint,)),
            NodeConfig("devnode-2", {"role": "general"}),
        ]
    )
    k.require_devcluster()
    k.apply(pod_manifest("plain", "true"))
    assert finished(k, "plain")["spec"]["nodeName"] == "devnode-2"
    k.apply(pod_manifest("intolerant", "true", nodeSelector={"role": "builds"}))
    cond = wait_until(lambda: conditions(k.pod("intolerant")).get("PodScheduled"), "PodScheduled condition")
    assert "1 node(s) had untolerated taint {dedicated: builds}" in cond["message"]
    k.apply(
        pod_manifest(
            "tolerant",
            "true",
            nodeSelector={"role": "builds"},
            tolerations=[
                {"key": "dedicated", "operator": "Equal", "value": "builds", "effect": "NoSchedule"}
            ],
        )
    )
    assert finished(k, "tolerant")["spec"]["nodeName"] == "devnode-1"
