"""Unit tests of the kubelet's pure decisions (`stagefleet.devcluster.podruntime`)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from stagefleet.devcluster import podruntime as pr


def pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "x", "tier": "b"},
            "annotations": {"note": 'say "hi"'},
        },
        "spec": {"nodeName": "devnode-1", "serviceAccountName": "default", "containers": [{"name": "c"}]},
        "status": {"podIP": "127.0.0.1", "hostIP": "127.0.0.1"},
    }
    base["spec"].update(spec)
    return base


NODES = [
    pr.NodeView("devnode-1", {"zone": "a"}, max_pods=2),
    pr.NodeView("devnode-2", {"zone": "b"}, max_pods=2),
]


# ------------------------------------------------------------------------------------------ scheduling


def test_preferred_anti_affinity_beats_load_and_is_only_a_preference() -> None:
    """Worker pods ask to avoid nodes running their build's other pods (controller/podspec.py): a node
    with a sibling loses to one without, even a more loaded one; when only that node fits, it still wins."""
    spread = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {"labelSelector": {"matchLabels": {"build": "b1"}},
                            "topologyKey": "kubernetes.io/hostname"},
    }]}}
    p = pod(affinity=spread)
    assert pr.preferred_anti_affinity(p) == [(100, {"build": "b1"})]
    assert pr.schedule(p, NODES, {"devnode-2": 1}, {"devnode-1": 100}) == ("devnode-2", "")
    assert pr.schedule(p, NODES, {"devnode-2": 2}, {"devnode-1": 100}) == ("devnode-1", "")  # 2 is full
    other_zone = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 1, "podAffinityTerm": {"labelSelector": {"matchLabels": {"build": "b1"}},
                                         "topologyKey": "topology.kubernetes.io/zone"}}]}}
    assert pr.preferred_anti_affinity(pod(affinity=other_zone)) == []


def test_schedule_prefers_least_loaded_node() -> None:
    assert pr.schedule(pod(), NODES, {"devnode-1": 1}) == ("devnode-2", "")
    assert pr.schedule(pod(), NODES, {}) == ("devnode-1", "")


def test_schedule_honours_node_selector() -> None:
    assert pr.schedule(pod(nodeSelector={"zone": "b"}), NODES, {})[0] == "devnode-2"
    node, msg = pr.schedule(pod(nodeSelector={"zone": "c"}), NODES, {})
    assert node is None
    assert msg.startswith("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.")


def test_schedule_honours_required_node_affinity() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b", "c"]}]}
                ]
            }
        }
    }
    assert pr.schedule(pod(affinity=affinity), NODES, {})[0] == "devnode-2"
    not_in = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}
                ]
            }
        }
    }
    assert pr.schedule(pod(affinity=not_in), NODES, {})[0] == "devnode-2"


def test_schedule_capacity() -> None:
    node, msg = pr.schedule(pod(), NODES, {"devnode-1": 2, "devnode-2": 2})
    assert node is None and "0/2 nodes are available: 2 Too many pods." in msg


def test_schedule_taints_and_tolerations() -> None:
    taint = {"key": "dedicated", "value": "build", "effect": "NoSchedule"}
    nodes = [pr.NodeView("devnode-1", {}, taints=(taint,))]
    node, msg = pr.schedule(pod(), nodes, {})
    assert node is None and "1 node(s) had untolerated taint {dedicated: build}" in msg
    tol = [{"key": "dedicated", "operator": "Equal", "value": "build", "effect": "NoSchedule"}]
    assert pr.schedule(pod(tolerations=tol), nodes, {})[0] == "devnode-1"
    assert pr.schedule(pod(tolerations=[{"operator": "Exists"}]), nodes, {})[0] == "devnode-1"
    wrong = [{"key": "dedicated", "operator": "Equal", "value": "other"}]
    assert pr.schedule(pod(tolerations=wrong), nodes, {})[0] is None
    soft = [pr.NodeView("n", {}, taints=({"key": "k", "effect": "PreferNoSchedule"},))]
    assert pr.schedule(pod(), soft, {})[0] == "n"


def test_schedule_mixed_reasons_are_counted_and_sorted() -> None:
    nodes = [
        pr.NodeView("a", {"zone": "a"}, unschedulable=True),
        pr.NodeView("b", {"zone": "b"}, max_pods=1),
        pr.NodeView("c", {"zone": "c"}),
    ]
    node, msg = pr.schedule(pod(nodeSelector={"zone": "b"}), nodes, {"b": 1})
    assert node is None
    assert msg.startswith(
        "0/3 nodes are available: 1 Too many pods, 1 node(s) didn't match Pod's node "
        "affinity/selector, 1 node(s) were unschedulable."
    )


# ------------------------------------------------------------------------------------------ env


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert pr.expand("$(A)-$(B)", env) == "1-two"
    assert pr.expand("$(MISSING)", env) == "$(MISSING)"
    assert pr.expand("$$(A)", env) == "$(A)"
    assert pr.expand("cost: $$5", env) == "cost: $5"


def test_resolve_env_all_sources() -> None:
    data = pr.ObjectData(
        "ns",
        secrets={"s": {"password": b"hunter2", "USER": b"bob"}},
        configmaps={"cm": {"mode": b"fast", "bad key": b"x"}},
    )
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}, {"secretRef": {"name": "s"}}],
        "env": [
            {"name": "PLAIN", "value": "v-$(USER)"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}},
            },
        ],
        "resources": {"requests": {"memory": "64Mi"}},
    }
    env = pr.resolve_env(container, pod(), data, {"cpu": "2", "memory": "8Gi"})
    assert env == {
        "CM_mode": "fast",
        "password": "hunter2",
        "USER": "bob",
        "PLAIN": "v-bob",
        "PW": "hunter2",
        "MODE": "fast",
        "POD": "p",
        "NS": "ns",
        "UID": "u-1",
        "NODE": "devnode-1",
        "IP": "127.0.0.1",
        "APP": "x",
        "CPU": "2",
        "MEM": "64",
    }


def test_resolve_env_missing_sources_are_config_errors() -> None:
    data = pr.ObjectData("ns", secrets={"s": {"a": b"1"}})
    with pytest.raises(pr.ConfigError, match='secret "missing" not found'):
        pr.resolve_env(
            {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "a"}}}]},
            pod(),
            data,
        )
    with pytest.raises(pr.ConfigError, match="couldn't find key b in Secret ns/s"):
        pr.resolve_env(
            {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "b"}}}]}, pod(), data
        )
    with pytest.raises(pr.ConfigError, match='configmap "cm" not found'):
        pr.resolve_env({"envFrom": [{"configMapRef": {"name": "cm"}}]}, pod(), data)
    assert (
        pr.resolve_env({"envFrom": [{"configMapRef": {"name": "cm", "optional": True}}]}, pod(), data) == {}
    )


def test_container_argv_expands_and_requires_a_command() -> None:
    c = {"name": "c", "command": ["sh", "-c"], "args": ["echo $(GREETING) $(NOPE)"]}
    assert pr.container_argv(c, {"GREETING": "hi"}) == ["sh", "-c", "echo hi $(NOPE)"]
    with pytest.raises(pr.ConfigError, match="does not pull images"):
        pr.container_argv({"name": "c"}, {})


def test_downward_labels_format() -> None:
    assert pr.field_ref_value(pod(), "metadata.labels") == 'app="x"\ntier="b"'
    assert pr.field_ref_value(pod(), "metadata.annotations") == 'note="say \\"hi\\""'


# ------------------------------------------------------------------------------------------ volumes


def test_secret_volume_items_and_modes() -> None:
    data = pr.ObjectData("ns", secrets={"s": {"a": b"A", "b": b"B"}})
    vol = {
        "name": "v",
        "secret": {
            "secretName": "s",
            "defaultMode": 0o400,
            "items": [{"key": "a", "path": "dir/a.txt"}, {"key": "b", "path": "b", "mode": 0o600}],
        },
    }
    lay = pr.volume_layout(vol, pod(), data)
    assert lay.read_only and lay.kind == "files"
    assert lay.files == (pr.FileEntry("dir/a.txt", b"A", 0o400), pr.FileEntry("b", b"B", 0o600))
    all_keys = pr.volume_layout({"name": "v", "secret": {"secretName": "s"}}, pod(), data)
    assert [(f.path, f.mode) for f in all_keys.files] == [("a", 0o644), ("b", 0o644)]


def test_volume_missing_sources() -> None:
    data = pr.ObjectData("ns")
    with pytest.raises(pr.MountError, match='MountVolume.SetUp failed for volume "v" : secret "s" not found'):
        pr.volume_layout({"name": "v", "secret": {"secretName": "s"}}, pod(), data)
    optional = pr.volume_layout({"name": "v", "secret": {"secretName": "s", "optional": True}}, pod(), data)
    assert optional.files == ()
    data = pr.ObjectData("ns", configmaps={"cm": {"a": b"1"}})
    with pytest.raises(pr.MountError, match="non-existent config key: zz"):
        pr.volume_layout(
            {"name": "v", "configMap": {"name": "cm", "items": [{"key": "zz", "path": "z"}]}}, pod(), data
        )
    with pytest.raises(pr.MountError, match="must be relative"):
        pr.volume_layout(
            {"name": "v", "configMap": {"name": "cm", "items": [{"key": "a", "path": "../a"}]}}, pod(), data
        )


def test_downward_and_projected_volumes() -> None:
    data = pr.ObjectData("ns", secrets={"s": {"k": b"S"}}, configmaps={"cm": {"k": b"C"}})
    dw = pr.volume_layout(
        {
            "name": "d",
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                ]
            },
        },
        pod(),
        data,
    )
    assert dw.files == (
        pr.FileEntry("labels", b'app="x"\ntier="b"', 0o644),
        pr.FileEntry("name", b"p", 0o644),
    )
    pj = pr.volume_layout(
        {
            "name": "p",
            "projected": {
                "defaultMode": 0o440,
                "sources": [
                    {"secret": {"name": "s", "items": [{"key": "k", "path": "sec"}]}},
                    {"configMap": {"name": "cm"}},
                    {
                        "downwardAPI": {
                            "items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                        }
                    },
                ],
            },
        },
        pod(),
        data,
    )
    assert pj.files == (
        pr.FileEntry("sec", b"S", 0o440),
        pr.FileEntry("k", b"C", 0o440),
        pr.FileEntry("ns", b"ns", 0o440),
    )
    assert pr.volume_layout({"name": "e", "emptyDir": {}}, pod(), data).kind == "emptyDir"


def test_secret_and_configmap_decoding() -> None:
    s = {"data": {"a": base64.b64encode(b"\x00bin").decode()}, "stringData": {"b": "text"}}
    assert pr.secret_data(s) == {"a": b"\x00bin", "b": b"text"}
    cm = {"data": {"a": "x"}, "binaryData": {"b": base64.b64encode(b"\x01").decode()}}
    assert pr.configmap_data(cm) == {"a": b"x", "b": b"\x01"}


def test_mount_plan_orders_parents_first_and_resolves_subpaths() -> None:
    c = {
        "name": "c",
        "volumeMounts": [
            {"name": "work", "mountPath": "/workspace/cache", "subPathExpr": "$(POD)/cache"},
            {"name": "work", "mountPath": "/workspace/"},
            {"name": "sec", "mountPath": "/etc/creds/token", "subPath": "token"},
            {"name": "work", "mountPath": "/data", "readOnly": True},
        ],
        "terminationMessagePath": "/tmp/term",
    }
    plan = pr.mount_plan(
        c,
        {"work": "/pods/u/volumes/work", "sec": "/pods/u/volumes/sec"},
        {"sec"},
        {"POD": "p"},
        "/pods/u/term/c",
    )
    assert plan == [
        pr.Mount("/pods/u/volumes/work", "/workspace", False),
        pr.Mount("/pods/u/volumes/work", "/data", True),
        pr.Mount("/pods/u/volumes/work/p/cache", "/workspace/cache", False),
        pr.Mount("/pods/u/volumes/sec/token", "/etc/creds/token", True),
        pr.Mount("/pods/u/term/c", "/tmp/term", False, is_file=True),
    ]
    with pytest.raises(pr.ConfigError, match='unable to find volume "nope"'):
        pr.mount_plan({"name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, {}, (), {}, "/t")


# ------------------------------------------------------------------------------------------ status


def run(name: str, state: str, code: int = 0, **kw: Any) -> pr.ContainerRun:
    return pr.ContainerRun(name, "img", state=state, exit_code=code, **kw)


def test_pod_phase() -> None:
    assert pr.pod_phase("Never", [run("i", "running")], [run("c", "waiting")], False) == "Pending"
    assert pr.pod_phase("Never", [run("i", "terminated", 1)], [run("c", "waiting")], False) == "Failed"
    assert pr.pod_phase("OnFailure", [run("i", "terminated", 1)], [run("c", "waiting")], False) == "Pending"
    assert pr.pod_phase("Never", [], [run("c", "running"), run("d", "terminated")], True) == "Running"
    assert pr.pod_phase("Never", [], [run("c", "terminated"), run("d", "terminated")], True) == "Succeeded"
    assert pr.pod_phase("Never", [], [run("c", "terminated", 2), run("d", "terminated")], True) == "Failed"
    assert pr.pod_phase("Always", [], [run("c", "terminated")], True) == "Running"
    assert pr.pod_phase("OnFailure", [], [run("c", "terminated")], True) == "Succeeded"
    backoff = run("c", "waiting", last_state={"terminated": {"exitCode": 1}}, restart_count=1)
    assert pr.pod_phase("OnFailure", [], [backoff], True) == "Running"
    assert pr.pod_phase("Never", [], [run("c", "waiting")], True) == "Pending"


def test_pod_conditions_keep_transition_times() -> None:
    first = pr.pod_conditions("Running", [], [run("c", "running")], True, [], "T1")
    by_type = {c["type"]: c for c in first}
    assert by_type["Ready"]["status"] == "True" and by_type["Initialized"]["status"] == "True"
    done = pr.pod_conditions("Succeeded", [], [run("c", "terminated")], True, first, "T2")
    by_type = {c["type"]: c for c in done}
    assert by_type["Ready"] == {
        "type": "Ready",
        "status": "False",
        "reason": "PodCompleted",
        "lastProbeTime": None,
        "lastTransitionTime": "T2",
    }
    assert by_type["Initialized"]["lastTransitionTime"] == "T1"
    assert by_type["Initialized"]["reason"] == "PodCompleted"
    failed = {
        c["type"]: c for c in pr.pod_conditions("Failed", [], [run("c", "terminated", 1)], True, [], "T")
    }
    assert failed["ContainersReady"]["reason"] == failed["Ready"]["reason"] == "PodFailed"
    assert "reason" not in failed["Initialized"]
    assert by_type["PodScheduled"]["lastTransitionTime"] == "T1"
    waiting = pr.pod_conditions(
        "Pending", [run("i1", "terminated"), run("i2", "running")], [run("c", "waiting")], False, [], "T"
    )
    by_type = {c["type"]: c for c in waiting}
    assert by_type["Initialized"]["message"] == "containers with incomplete status: [i2]"
    assert by_type["ContainersReady"]["message"] == "containers with unready status: [c]"


def test_container_status_shapes() -> None:
    t = run("c", "terminated", 3, reason="Error", message="boom", started_at="S", finished_at="F")
    assert t.status_dict() == {
        "name": "c",
        "image": "img",
        "imageID": "img",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": {
            "terminated": {
                "exitCode": 3,
                "reason": "Error",
                "message": "boom",
                "startedAt": "S",
                "finishedAt": "F",
            }
        },
        "lastState": {},
    }
    assert run("i", "terminated", 0).status_dict(init=True)["ready"] is True
    assert run("c", "running", started_at="S").state_dict() == {"running": {"startedAt": "S"}}
    assert pr.terminated_reason(0) == "Completed" and pr.terminated_reason(137) == "Error"


def test_termination_message_cap_and_log_fallback() -> None:
    assert pr.termination_message(b"x" * 5000, None, 0, "File") == "x" * 4096
    logs = b"".join(b"line %d\n" % i for i in range(200))
    fallback = pr.termination_message(b"", lambda: logs, 1, "FallbackToLogsOnError")
    assert fallback.endswith("line 199\n") and len(fallback.encode()) <= 2048
    assert fallback.count("\n") <= 80
    assert pr.termination_message(b"", lambda: logs, 0, "FallbackToLogsOnError") == ""
    assert pr.termination_message(b"", lambda: logs, 1, "File") == ""
    assert pr.termination_message(b"msg", lambda: logs, 1, "FallbackToLogsOnError") == "msg"


def test_parse_quantity() -> None:
    assert pr.parse_quantity("500m") == pr.Decimal("0.5")
    assert pr.parse_quantity("2Gi") == 2 * 2**30
    assert pr.parse_quantity("1e3") == 1000
    with pytest.raises(ValueError):
        pr.parse_quantity("lots")
