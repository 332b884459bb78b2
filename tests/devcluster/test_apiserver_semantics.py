"""Emulator semantics at the Python level (no HTTP): admission, patches, selectors, deletion, GC."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagefleet.devcluster.apiserver.api import Core, DeleteOptions, WriteOptions
from stagefleet.devcluster.apiserver.errors import ApiError
from stagefleet.devcluster.apiserver.gc import GarbageCollector
from stagefleet.devcluster.apiserver.patching import json_patch, merge_patch, strategic_merge
from stagefleet.devcluster.apiserver.selectors import parse_field_selector, parse_label_selector

ROOT = Path(__file__).resolve().parents[2]

SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["image"],
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                    "message": "min must not exceed max",
                    "fieldPath": ".min",  # 1.28+: a 1.24 server drops it, and so does the emulator
                },
            ],
            "properties": {
                "image": {"type": "string", "pattern": "^[a-z0-9./:-]+$", "minLength": 3, "maxLength": 20},
                "min": {"type": "integer", "minimum": 0},
                "max": {"type": "integer", "maximum": 100},
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
                "port": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "nested": {"type": "object", "properties": {"depth": {"type": "integer", "default": 2}}},
                "frozen": {
                    "type": "string",
                    "x-kubernetes-validations": [
                        {"rule": "self == oldSelf", "message": "frozen is immutable"}
                    ],
                },
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}


def crd(
    name: str = "things",
    schema: dict[str, Any] | None = None,
    group: str = "unit.stagefleet.dev",
    status: bool = True,
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{name}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": name, "kind": name.capitalize()[:-1]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}} if status else {},
                    "schema": {"openAPIV3Schema": schema or SCHEMA},
                }
            ],
        },
    }


@pytest.fixture
def core() -> Core:
    c = Core()
    c.create(c.rt("apiextensions.k8s.io", "v1", "customresourcedefinitions"), "", crd())
    return c


def thing(spec: dict[str, Any], name: str = "t") -> dict[str, Any]:
    return {"apiVersion": "unit.stagefleet.dev/v1", "kind": "Thing", "metadata": {"name": name}, "spec": spec}


def invalid(core: Core, spec: dict[str, Any]) -> list[tuple[str, str]]:
    rt = core.rt("unit.stagefleet.dev", "v1", "things")
    with pytest.raises(ApiError) as err:
        core.create(rt, "default", thing(spec))
    assert err.value.code == 422 and err.value.reason == "Invalid"
    assert err.value.details is not None
    return [(c["field"], c["message"]) for c in err.value.details["causes"]]


def test_defaults_and_pruning(core: Core) -> None:
    """Unknown fields are pruned silently: 1.24 has no server-side field validation (kubectl checks)."""
    rt = core.rt("unit.stagefleet.dev", "v1", "things")
    made = core.create(
        rt,
        "default",
        thing({"image": "busybox", "nested": {}, "extra": {"any": {"x": 1}}, "bogus": 1, "note": None}),
    )
    assert made["spec"] == {
        "image": "busybox",
        "mode": "fast",
        "nested": {"depth": 2},
        "extra": {"any": {"x": 1}},
        "note": None,
    }
    plain = core.create(rt, "default", thing({"image": "busybox", "bogus": 1, "min": None}, "plain"))
    assert plain["spec"] == {"image": "busybox", "mode": "fast"}  # a null of a non-nullable field: pruned


def test_validation_messages_and_paths(core: Core) -> None:
    assert invalid(core, {}) == [("spec.image", "Required value")]
    causes = dict(
        invalid(
            core,
            {
                "image": "UPPER",
                "min": -1,
                "max": 101,
                "mode": "medium",
                "tags": [],
                "port": 1.5,
                "note": None,
            },
        )
    )
    assert (
        causes["spec.image"] == "Invalid value: \"UPPER\": spec.image in body should match '^[a-z0-9./:-]+$'"
    )
    assert causes["spec.min"] == "Invalid value: -1: spec.min in body should be greater than or equal to 0"
    assert causes["spec.max"] == "Invalid value: 101: spec.max in body should be less than or equal to 100"
    assert causes["spec.mode"] == 'Unsupported value: "medium": supported values: "fast", "slow"'
    assert causes["spec.tags"] == "Invalid value: 0: spec.tags in body should have at least 1 items"
    assert causes["spec.port"] == (
        'Invalid value: "number": spec.port in body must be of type integer,string: "number"'
    )
    assert "spec.note" not in causes  # nullable
    assert invalid(core, {"image": "a" * 21}) == [
        ("spec.image", f'Invalid value: "{"a" * 21}": spec.image in body should be at most 20 chars long')
    ]
    # a string reports its first failing check only (maxLength, minLength, pattern)
    assert invalid(core, {"image": "AB"}) == [
        ("spec.image", 'Invalid value: "AB": spec.image in body should be at least 3 chars long')
    ]
    assert invalid(core, {"image": 5}) == [
        ("spec.image", 'Invalid value: "integer": spec.image in body must be of type string: "integer"')
    ]
    # list items: the list's path, no index; one error for the same fault in two items
    assert invalid(core, {"image": "abc", "tags": [5, 6]}) == [
        ("spec.tags", 'Invalid value: "integer": spec.tags in body must be of type string: "integer"')
    ]
    # CEL: at the rule's node (1.24 has no fieldPath), the value printed as Go prints it
    assert invalid(core, {"image": "abc", "min": 5, "max": 1}) == [
        (
            "spec",
            'Invalid value: map[string]interface {}{"image":"abc", "max":1, "min":5, "mode":"fast"}: '
            "min must not exceed max",
        )
    ]


def test_transition_rule_uses_old_object(core: Core) -> None:
    rt = core.rt("unit.stagefleet.dev", "v1", "things")
    made = core.create(rt, "default", thing({"image": "abc", "frozen": "x"}))
    made["spec"]["frozen"] = "y"
    with pytest.raises(ApiError) as err:
        core.update(rt, "default", "t", made)
    assert "frozen is immutable" in err.value.message


def test_status_subresource_split_and_generation(core: Core) -> None:
    rt = core.rt("unit.stagefleet.dev", "v1", "things")
    made = core.create(rt, "default", {**thing({"image": "abc"}), "status": {"phase": "ignored"}})
    assert "status" not in made and made["metadata"]["generation"] == 1
    st = core.patch(
        rt,
        "default",
        "t",
        "application/merge-patch+json",
        b'{"status":{"phase":"Done"},"spec":{"image":"zzz"}}',
        subresource="status",
    )
    assert st["status"] == {"phase": "Done"} and st["spec"]["image"] == "abc"
    assert st["metadata"]["generation"] == 1
    labeled = core.patch(
        rt, "default", "t", "application/merge-patch+json", b'{"metadata":{"labels":{"a":"b"}}}'
    )
    assert labeled["metadata"]["generation"] == 1
    changed = core.patch(rt, "default", "t", "application/merge-patch+json", b'{"spec":{"image":"xyz"}}')
    assert changed["metadata"]["generation"] == 2 and changed["status"] == {"phase": "Done"}
    assert int(changed["metadata"]["resourceVersion"]) > int(labeled["metadata"]["resourceVersion"])
    with pytest.raises(ApiError) as err:
        core.patch(rt, "default", "t", "application/strategic-merge-patch+json", b"{}")
    assert err.value.code == 415


def test_no_op_update_keeps_resource_version(core: Core) -> None:
    rt = core.rt("", "v1", "configmaps")
    made = core.create(rt, "default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    same = core.patch(rt, "default", "c", "application/merge-patch+json", b'{"data":{"a":"1"}}')
    assert same["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]


def test_project_crd_admits_every_example() -> None:
    c = Core()
    c.create(
        c.rt("apiextensions.k8s.io", "v1", "customresourcedefinitions"),
        "",
        yaml.safe_load((ROOT / "crds" / "imagebuild.yaml").read_text()),
    )
    rt = c.rt("stagefleet.io", "v1alpha1", "imagebuilds")
    examples = sorted((ROOT / "examples").glob("*/imagebuild.yaml"))
    assert examples
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ImageBuild":
                c.create(rt, "default", doc, WriteOptions(dry_run=True))
        bad = copy.deepcopy(doc)
        bad["spec"]["source"] = {}
        with pytest.raises(ApiError) as err:
            c.create(rt, "default", bad, WriteOptions(dry_run=True))
        assert ("exactly one of spec.source.git, spec.source.inline and spec.source.oci must be set"
                in err.value.message)


# -- patches and selectors -----------------------------------------------------------------------------------


def test_merge_and_json_patch() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}
    doc = {"l": [1, 2], "m": {"k": "v"}}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/l/-", "value": 3},
            {"op": "move", "from": "/m/k", "path": "/n"},
            {"op": "replace", "path": "/l/0", "value": 0},
            {"op": "copy", "from": "/n", "path": "/o"},
        ],
    )
    assert out == {"l": [0, 2, 3], "m": {}, "n": "v", "o": "v"}
    assert doc == {"l": [1, 2], "m": {"k": "v"}}


def test_strategic_merge_directives() -> None:
    pod = {
        "spec": {
            "containers": [
                {"name": "a", "image": "1", "env": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": "1"},
            ],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
        "metadata": {"finalizers": ["f1"]},
    }
    patch = {
        "spec": {
            "containers": [
                {"name": "a", "env": [{"name": "Y", "value": "2"}]},
                {"name": "b", "$patch": "delete"},
            ],
            "$setElementOrder/containers": [{"name": "a"}],
            "volumes": [{"name": "v", "$patch": "replace"}],
        },
        "metadata": {"finalizers": ["f2"], "$deleteFromPrimitiveList/finalizers": ["f1"]},
    }
    out = strategic_merge(pod, patch)
    assert out["spec"]["containers"] == [
        {"name": "a", "image": "1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}
    ]
    assert out["metadata"]["finalizers"] == ["f2"]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1", {"a": "2"}, False),
        ("a!=1", {}, True),
        ("a in (1, 2)", {"a": "2"}, True),
        ("a notin (1)", {}, True),
        ("a", {"a": ""}, True),
        ("!a", {"a": "x"}, False),
        ("a=1,b", {"a": "1"}, False),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector)({"metadata": {"labels": labels}}) is expected


def test_field_selectors() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "n"},
        "spec": {"nodeName": "node1"},
        "status": {"phase": "Running"},
    }
    assert parse_field_selector("spec.nodeName=node1,status.phase!=Failed")(pod)
    assert not parse_field_selector("spec.nodeName=")(pod)
    assert parse_field_selector("spec.nodeName=")({"metadata": {}, "spec": {}})
    ev = {"involvedObject": {"kind": "Pod", "name": "p"}}
    assert parse_field_selector("involvedObject.kind=Pod,involvedObject.name=p")(ev)


# -- deletion ------------------------------------------------------------------------------------------------


def pod(name: str, node: str | None = None, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
            }
        ]
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec}


def test_bound_pod_deletion_waits_for_the_kubelet() -> None:
    c = Core()
    rt = c.rt("", "v1", "pods")
    c.create(rt, "default", pod("bound", node="n1"))
    c.create(rt, "default", pod("free"))
    held = c.delete(rt, "default", "bound", DeleteOptions(grace_period=7))
    assert held["metadata"]["deletionGracePeriodSeconds"] == 7 and held["metadata"]["deletionTimestamp"]
    assert c.store.get(rt.key, "default", "bound") is not None
    c.delete(rt, "default", "bound", DeleteOptions(grace_period=0))
    assert c.store.get(rt.key, "default", "bound") is None
    c.delete(rt, "default", "free")
    assert c.store.get(rt.key, "default", "free") is None


def test_pod_main_resource_ignores_status_and_status_ignores_spec() -> None:
    c = Core()
    rt = c.rt("", "v1", "pods")
    c.create(rt, "default", pod("p"))
    c.patch(rt, "default", "p", "application/merge-patch+json", b'{"status":{"phase":"Running"}}')
    assert c.get(rt, "default", "p")["status"]["phase"] == "Pending"
    c.patch(
        rt,
        "default",
        "p",
        "application/merge-patch+json",
        b'{"status":{"phase":"Running"}}',
        subresource="status",
    )
    assert c.get(rt, "default", "p")["status"]["phase"] == "Running"


def test_gc_background_orphan_and_namespace_termination() -> None:
    c = Core()
    gc = GarbageCollector.__new__(GarbageCollector)
    gc.core = c
    cms = c.rt("", "v1", "configmaps")
    pods = c.rt("", "v1", "pods")
    ns_rt = c.rt("", "v1", "namespaces")
    c.create(ns_rt, "", {"metadata": {"name": "work"}})
    owner = c.create(cms, "work", {"metadata": {"name": "owner"}})
    c.create(pods, "work", pod("child", owner=owner))
    c.create(pods, "work", pod("bound-child", node="n1", owner=owner))
    c.delete(cms, "work", "owner")
    gc.run_once()
    assert c.store.get(pods.key, "work", "child") is None
    bound = c.store.get(pods.key, "work", "bound-child")
    assert bound is not None and bound["metadata"]["deletionTimestamp"]  # left for the kubelet

    keep = c.create(cms, "work", {"metadata": {"name": "keeper"}})
    c.create(pods, "work", pod("orphan", owner=keep))
    c.delete(cms, "work", "keeper", DeleteOptions(propagation="Orphan"))
    gc.run_once()
    assert c.store.get(cms.key, "work", "keeper") is None
    orphan = c.store.get(pods.key, "work", "orphan")
    assert orphan is not None and "ownerReferences" not in orphan["metadata"]

    c.delete(ns_rt, "", "work")
    assert c.get(ns_rt, "", "work")["status"]["phase"] == "Terminating"
    with pytest.raises(ApiError) as err:
        c.create(cms, "work", {"metadata": {"name": "late"}})
    assert err.value.code == 403
    gc.run_once()
    assert c.store.get(ns_rt.key, "", "work") is not None  # bound pod still terminating
    c.delete(pods, "work", "bound-child", DeleteOptions(grace_period=0))
    gc.run_once()
    assert c.store.get(ns_rt.key, "", "work") is None
    assert json.dumps(c.store.list(cms.key, "work")) == "[]"


def test_crd_deletion_removes_instances_and_the_served_type(core: Core) -> None:
    gc = GarbageCollector.__new__(GarbageCollector)
    gc.core = core
    rt = core.rt("unit.stagefleet.dev", "v1", "things")
    core.create(rt, "default", thing({"image": "abc"}))
    core.delete(
        core.rt("apiextensions.k8s.io", "v1", "customresourcedefinitions"), "", "things.unit.stagefleet.dev"
    )
    gc.run_once()
    gc.run_once()
    with pytest.raises(ApiError) as err:
        core.rt("unit.stagefleet.dev", "v1", "things")
    assert err.value.code == 404


def test_builtin_validation_catches_what_a_real_apiserver_rejects() -> None:
    c = Core()
    pods, cms = c.rt("", "v1", "pods"), c.rt("", "v1", "configmaps")

    def causes(rt: Any, body: dict[str, Any]) -> dict[str, str]:
        with pytest.raises(ApiError) as err:
            c.create(rt, "default", body)
        assert err.value.code == 422 and err.value.details is not None
        return {x["field"]: x["message"] for x in err.value.details["causes"]}

    assert "metadata.labels" in causes(cms, {"metadata": {"name": "c", "labels": {"a": "has space"}}})
    assert "data[bad/key]" in causes(cms, {"metadata": {"name": "c"}, "data": {"bad/key": "v"}})
    bad = pod("p")
    bad["spec"]["containers"][0].pop("image")
    bad["spec"]["containers"][0]["volumeMounts"] = [{"name": "missing", "mountPath": "/x"}]
    found = causes(pods, bad)
    assert found["spec.containers[0].image"] == "Required value"
    assert found["spec.containers[0].volumeMounts[0].name"] == 'Not found: "missing"'

    c.create(pods, "default", pod("p"))
    c.patch(
        pods,
        "default",
        "p",
        "application/strategic-merge-patch+json",
        b'{"spec":{"containers":[{"name":"c","image":"busybox:2"}]}}',
    )
    with pytest.raises(ApiError) as err:
        c.patch(
            pods,
            "default",
            "p",
            "application/strategic-merge-patch+json",
            b'{"spec":{"containers":[{"name":"c","command":["sh"]}]}}',
        )
    assert err.value.code == 422 and "pod updates may not change fields" in err.value.message
    bound = c.patch(pods, "default", "p", "application/merge-patch+json", b'{"spec":{"nodeName":"n1"}}')
    assert bound["spec"]["nodeName"] == "n1"
    with pytest.raises(ApiError):
        c.patch(pods, "default", "p", "application/merge-patch+json", b'{"spec":{"nodeName":"n2"}}')


def test_decode_errors_and_cross_namespace_owners() -> None:
    c = Core()
    cms, secrets = c.rt("", "v1", "configmaps"), c.rt("", "v1", "secrets")
    with pytest.raises(ApiError) as err:
        c.create(cms, "default", {"metadata": {"name": "n"}, "data": {"count": 3}})
    assert err.value.code == 400
    with pytest.raises(ApiError) as err:
        c.create(secrets, "default", {"metadata": {"name": "s"}, "data": {"k": "not base64!"}})
    assert err.value.code == 400 and "base64" in err.value.message

    gc = GarbageCollector.__new__(GarbageCollector)
    gc.core = c
    c.create(c.rt("", "v1", "namespaces"), "", {"metadata": {"name": "other"}})
    owner = c.create(cms, "other", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    c.create(cms, "default", {"metadata": {"name": "stray", "ownerReferences": [ref]}})
    c.create(cms, "other", {"metadata": {"name": "proper", "ownerReferences": [ref]}})
    gc.run_once()
    assert c.store.get(cms.key, "default", "stray") is None  # owner not in its namespace: collected
    assert c.store.get(cms.key, "other", "proper") is not None


def test_old_events_expire() -> None:
    c = Core()
    events = c.rt("", "v1", "events")
    ref = {"kind": "Pod", "name": "p", "namespace": "default"}
    c.create(
        events,
        "default",
        {"metadata": {"name": "old"}, "involvedObject": ref, "lastTimestamp": "2020-01-01T00:00:00Z"},
    )
    c.create(events, "default", {"metadata": {"name": "new"}, "involvedObject": ref})
    gc = GarbageCollector.__new__(GarbageCollector)
    gc.core = c
    gc.expire_events()
    assert [e["metadata"]["name"] for e in c.store.list(events.key, "default")] == ["new"]


def test_strategic_merge_keys_service_ports_by_port() -> None:
    svc = {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    out = strategic_merge(svc, {"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}})
    assert out["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 9090}, {"port": 443}]


def test_list_type_map_and_set_keys_must_be_unique() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "secrets": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["id"],
                        "items": {
                            "type": "object",
                            "properties": {"id": {"type": "string"}, "v": {"type": "string"}},
                        },
                    },
                    "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                },
            }
        },
    }
    c = Core()
    c.create(c.rt("apiextensions.k8s.io", "v1", "customresourcedefinitions"), "", crd("lists", schema))
    rt = c.rt("unit.stagefleet.dev", "v1", "lists")
    body = {
        "apiVersion": "unit.stagefleet.dev/v1",
        "kind": "List",
        "metadata": {"name": "l"},
        "spec": {"secrets": [{"id": "a", "v": "1"}, {"id": "a", "v": "2"}], "tags": ["x", "x"]},
    }
    with pytest.raises(ApiError) as err:
        c.create(rt, "default", body)
    causes = {x["field"]: x["message"] for x in (err.value.details or {})["causes"]}
    assert causes == {
        "spec.secrets[1]": 'Duplicate value: map[string]interface {}{"id":"a"}',
        "spec.tags[1]": 'Duplicate value: "x"',
    }


def test_server_side_apply_of_custom_resource_lists_replaces_them() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "secrets": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["id"],
                        "items": {"type": "object", "properties": {"id": {"type": "string"}}},
                    },
                    "keep": {"type": "string"},
                },
            }
        },
    }
    c = Core()
    c.create(c.rt("apiextensions.k8s.io", "v1", "customresourcedefinitions"), "", crd("lists", schema))
    rt = c.rt("unit.stagefleet.dev", "v1", "lists")
    opts = WriteOptions(field_manager="me")

    def ssa(spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "unit.stagefleet.dev/v1",
            "kind": "List",
            "metadata": {"name": "l"},
            "spec": spec,
        }
        return c.patch(
            rt, "default", "l", "application/apply-patch+yaml", json.dumps(body).encode(), opts=opts
        )

    ssa({"secrets": [{"id": "a"}, {"id": "b"}], "keep": "x"})
    assert ssa({"secrets": [{"id": "b"}, {"id": "c"}], "keep": "x"})["spec"]["secrets"] == [
        {"id": "b"},
        {"id": "c"},
    ]
    assert ssa({"secrets": [{"id": "c"}]})["spec"] == {"secrets": [{"id": "c"}]}  # keep no longer applied
