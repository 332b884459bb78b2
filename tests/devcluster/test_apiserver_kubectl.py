"""The real kubectl (v1.34) on both tiers (the emulator and a real 1.24 API server): the same assertions."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.kubectltest.stagefleet.dev
spec:
  group: kubectltest.stagefleet.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the widget should look like.
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10, description: Number of parts.}
              color: {type: string, enum: [red, blue], default: red}
              tags:
                type: array
                items: {type: string, pattern: '^[a-z]+$'}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""


def apply(kube: Any, manifest: str | dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return kube.kubectl("apply", "-f", "-", *args, input=text)


def get(kube: Any, *args: str) -> Any:
    proc = kube.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


@pytest.fixture
def widgets(kube: Any) -> Any:
    """The Widget CRD, Established and its schema published: kubectl validates against the published
    schema (OpenAPI v2 on a 1.24 server), which appears a moment after Established."""
    apply(kube, WIDGET_CRD)
    kube.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.kubectltest.stagefleet.dev", "--timeout=30s"
    )
    explain(kube, "widget.spec")
    yield kube
    # waited for: on a real cluster the CRD outlives the test's namespace, and the next test applies it again
    kube.kubectl(
        "delete", "crd", "widgets.kubectltest.stagefleet.dev", "--timeout=60s", check=False, timeout=90
    )


def cm(name: str, data: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}, "data": data}


def test_client_side_apply_creates_then_updates_and_prunes_keys(kube: Any) -> None:
    assert "created" in apply(kube, cm("c1", {"a": "1", "b": "2"}, labels={"app": "x"})).stdout
    assert "configured" in apply(kube, cm("c1", {"a": "3"}, labels={"app": "x"})).stdout
    got = get(kube, "configmap", "c1")
    assert got["data"] == {"a": "3"}
    assert "unchanged" in apply(kube, cm("c1", {"a": "3"}, labels={"app": "x"})).stdout


def test_get_yaml_shows_server_populated_metadata(kube: Any) -> None:
    apply(kube, cm("c2", {"k": "v"}))
    out = yaml.safe_load(kube.kubectl("get", "cm", "c2", "-o", "yaml").stdout)
    meta = out["metadata"]
    assert out["kind"] == "ConfigMap" and out["apiVersion"] == "v1"
    assert meta["namespace"] == kube.namespace
    assert meta["uid"] and meta["creationTimestamp"] and int(meta["resourceVersion"]) > 0


def test_pod_strategic_merge_apply_keeps_containers_merged_by_name(kube: Any, test_image: str) -> None:
    other = test_image.rsplit(":", 1)[0] + ":2"  # a tag nobody pulls: only the spec matters here
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p1", "labels": {"tier": "web"}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": test_image,
                    "command": ["sleep", "1"],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                }
            ]
        },
    }
    apply(kube, pod)
    patch = {"spec": {"containers": [{"name": "main", "image": other}]}}
    kube.kubectl("patch", "pod", "p1", "-p", json.dumps(patch))
    got = get(kube, "pod", "p1")
    main = got["spec"]["containers"][0]
    assert main["image"] == other
    assert main["command"] == ["sleep", "1"]
    assert [e["name"] for e in main["env"]] == ["A", "B"]
    assert got["status"]["phase"] in ("Pending", "Running", "Succeeded")  # a real node may run it
    assert got["spec"]["restartPolicy"] == "Always"
    assert main["terminationMessagePath"] == "/dev/termination-log"


def test_patch_merge_and_json(kube: Any) -> None:
    apply(kube, cm("c3", {"a": "1", "b": "2"}))
    kube.kubectl("patch", "cm", "c3", "--type=merge", "-p", '{"data":{"a":null,"c":"3"}}')
    assert get(kube, "cm", "c3")["data"] == {"b": "2", "c": "3"}
    kube.kubectl(
        "patch",
        "cm",
        "c3",
        "--type=json",
        "-p",
        '[{"op":"add","path":"/data/d","value":"4"},{"op":"remove","path":"/data/b"}]',
    )
    assert get(kube, "cm", "c3")["data"] == {"c": "3", "d": "4"}
    failed = kube.kubectl(
        "patch",
        "cm",
        "c3",
        "--type=json",
        "-p",
        '[{"op":"test","path":"/data/c","value":"nope"}]',
        check=False,
    )
    assert failed.returncode != 0


def test_label_and_field_selectors(kube: Any) -> None:
    apply(kube, cm("red", {}, labels={"color": "red", "size": "s"}))
    apply(kube, cm("blue", {}, labels={"color": "blue"}))
    apply(kube, cm("plain", {}))

    def names(*args: str) -> list[str]:
        return sorted(
            i["metadata"]["name"]
            for i in get(kube, "cm", *args)["items"]
            if i["metadata"]["name"] in ("red", "blue", "plain")
        )

    assert names("-l", "color=red") == ["red"]
    assert names("-l", "color!=red") == ["blue", "plain"]
    assert names("-l", "color in (red,blue)") == ["blue", "red"]
    assert names("-l", "color notin (red)") == ["blue", "plain"]
    assert names("-l", "!color") == ["plain"]
    assert names("-l", "color,size") == ["red"]
    assert names("--field-selector", "metadata.name=blue") == ["blue"]
    assert names("--field-selector", "metadata.name!=blue") == ["plain", "red"]


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubectltest.stagefleet.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_custom_resource_defaulting_validation_status_and_generation(widgets: Any) -> None:
    """Validation in kube-apiserver 1.24's and kubectl's words. 1.24 has no server-side field validation,
    so kubectl checks required fields, unknown fields and types itself against the published OpenAPI v2
    schema; the server checks values (enum, bounds, patterns) and silently prunes unknown fields."""
    kube = widgets
    apply(kube, widget("w1", size=2))
    w = get(kube, "widget", "w1")
    assert w["spec"] == {"size": 2, "color": "red"}
    assert w["metadata"]["generation"] == 1

    def refused(doc: dict[str, Any], *args: str) -> str:
        proc = kube.kubectl("apply", "-f", "-", *args, check=False, input=json.dumps(doc))
        assert proc.returncode != 0, proc.stdout
        assert get(kube, "widget", doc["metadata"]["name"]) is None
        return str(proc.stderr)

    bad = refused(widget("w2", size=11, color="green"))
    assert 'spec.color: Unsupported value: "green": supported values: "red", "blue"' in bad
    assert "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10" in bad
    # an item of a list is reported at the list's path, and two bad items as one error
    tags = refused(widget("w2", size=1, tags=["ok", "Not OK", "Also Bad"]))
    assert "spec.tags: Invalid value: \"Not OK\": spec.tags in body should match '^[a-z]+$'" in tags
    assert "[1]" not in tags and "Also Bad" not in tags

    schema = "dev.stagefleet.kubectltest.v1.Widget.spec"
    missing = refused(widget("w3"))
    assert f'ValidationError(Widget.spec): missing required field "size" in {schema}' in missing
    assert "spec.size: Required value" in refused(widget("w3"), "--validate=false")
    unknown = refused(widget("w4", size=1, shape="round"))
    assert f'ValidationError(Widget.spec): unknown field "shape" in {schema}' in unknown
    wrong = refused(widget("w4", size="two"))
    expected = f'invalid type for {schema}.size: got "string", expected "integer"'
    assert f"ValidationError(Widget.spec.size): {expected}" in wrong
    assert (
        'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"'
        in refused(widget("w4", size="two"), "--validate=false")
    )
    # unvalidated, an unknown field is pruned: the server does not refuse it
    apply(kube, widget("w4", size=1, shape="round"), "--validate=false")
    assert get(kube, "widget", "w4")["spec"] == {"size": 1, "color": "red"}

    kube.kubectl(
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"conditions":[{"type":"Ready","status":"True"}]}}',
    )
    kube.kubectl(
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        '{"status":{"ignored":true},"metadata":{"labels":{"l":"1"}}}',
    )
    w = get(kube, "widget", "w1")
    assert w["status"] == {"conditions": [{"type": "Ready", "status": "True"}]}
    assert w["metadata"]["generation"] == 1  # status and metadata changes do not bump it
    kube.kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"spec":{"size":3}}')
    assert get(kube, "widget", "w1")["metadata"]["generation"] == 2

    table = kube.kubectl("get", "wdg").stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "SIZE"]
    assert table[1].split()[:2] == ["w1", "3"]


def test_wait_for_condition_and_jsonpath(widgets: Any) -> None:
    kube = widgets
    apply(
        kube,
        {
            "apiVersion": "kubectltest.stagefleet.dev/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 1},
        },
    )
    waiter = subprocess.Popen(
        [
            str(_kubectl_path()),
            "-n",
            kube.namespace,
            "wait",
            "--for=condition=Ready",
            "widget/w",
            "--timeout=60s",
        ],
        env=kube.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        kube.kubectl(
            "patch",
            "widget",
            "w",
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status":{"conditions":[{"type":"Ready","status":"True"}]}}',
        )
        out, err = waiter.communicate(timeout=90)
    finally:
        waiter.kill()
        waiter.wait()
    assert waiter.returncode == 0, err
    assert "condition met" in out
    jp = kube.kubectl("wait", "--for=jsonpath={.spec.size}=1", "widget/w", "--timeout=30s")
    assert "condition met" in jp.stdout


def _kubectl_path() -> Any:
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / ".tools" / "bin" / "kubectl"


def test_server_side_apply_owns_and_removes_fields(kube: Any) -> None:
    out = apply(kube, cm("ssa", {"a": "1", "b": "2"}), "--server-side", "--field-manager=tester")
    assert "serverside-applied" in out.stdout
    apply(kube, cm("ssa", {"a": "1"}), "--server-side", "--field-manager=tester")
    got = get(kube, "cm", "ssa", "--show-managed-fields")
    assert got["data"] == {"a": "1"}
    managers = [m["manager"] for m in got["metadata"]["managedFields"] if m["operation"] == "Apply"]
    assert "tester" in managers


def test_dry_run_server_does_not_persist(kube: Any) -> None:
    out = apply(kube, cm("dry", {"a": "1"}), "--dry-run=server")
    assert "server dry run" in out.stdout
    assert get(kube, "cm", "dry") is None


def test_replace_with_stale_resource_version_conflicts(kube: Any) -> None:
    apply(kube, cm("occ", {"a": "1"}))
    stale = get(kube, "cm", "occ")
    kube.kubectl("patch", "cm", "occ", "--type=merge", "-p", '{"data":{"a":"2"}}')
    stale["data"]["a"] = "3"
    proc = kube.kubectl("replace", "-f", "-", input=json.dumps(stale), check=False)
    assert proc.returncode != 0
    assert "the object has been modified" in proc.stderr
    assert get(kube, "cm", "occ")["data"] == {"a": "2"}


@pytest.mark.parametrize("cascade", ["background", "foreground", "orphan"])
def test_delete_cascades_like_the_garbage_collector(
    kube: Any, cascade: str, wait_until: Callable[..., Any]
) -> None:
    apply(kube, cm("owner", {}))
    owner = get(kube, "cm", "owner")
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": True,
    }
    apply(kube, cm("dependent", {}, ownerReferences=[ref]))
    kube.kubectl("delete", "cm", "owner", f"--cascade={cascade}")
    assert get(kube, "cm", "owner") is None
    if cascade == "orphan":
        dep = get(kube, "cm", "dependent")
        assert dep is not None and not dep["metadata"].get("ownerReferences")
    elif cascade == "foreground":
        assert get(kube, "cm", "dependent") is None  # gone before the owner was
    else:
        wait_until(lambda: get(kube, "cm", "dependent") is None, "the dependent to be collected")


def test_finalizers_hold_deletion_until_removed(kube: Any) -> None:
    apply(kube, cm("fin", {}, finalizers=["stagefleet.dev/test"]))
    kube.kubectl("delete", "cm", "fin", "--wait=false")
    held = get(kube, "cm", "fin")
    assert held["metadata"]["deletionTimestamp"]
    kube.kubectl("patch", "cm", "fin", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    assert get(kube, "cm", "fin") is None


def test_get_watch_streams_changes(kube: Any) -> None:
    apply(kube, cm("w0", {}))
    proc = subprocess.Popen(
        [
            str(_kubectl_path()),
            "-n",
            kube.namespace,
            "get",
            "cm",
            "-w",
            "--output-watch-events",
        ],
        env=kube.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(" ".join(line.split()[:2])) for line in proc.stdout or []], daemon=True
    )
    reader.start()
    seen: list[str] = []

    def until(expected: str) -> None:
        while expected not in seen:
            seen.append(lines.get(timeout=60))

    try:
        until("ADDED w0")
        apply(kube, cm("w1", {}))
        until("ADDED w1")
        kube.kubectl("patch", "cm", "w1", "--type=merge", "-p", '{"data":{"x":"y"}}')
        until("MODIFIED w1")
        kube.kubectl("delete", "cm", "w1")
        until("DELETED w1")
    finally:
        proc.kill()
        proc.wait()
        reader.join(10)


def explain(kube: Any, *args: str, timeout: float = 30.0) -> str:
    """`kubectl explain`, retried: the API server publishes a new CRD's schema a moment after the CRD is
    Established (asynchronously, ~1 s on a real server and on the emulator), so it fails until then."""
    deadline = time.monotonic() + timeout
    while True:
        proc = kube.kubectl("explain", *args, check=False)
        if proc.returncode == 0:
            return str(proc.stdout)
        if time.monotonic() > deadline:
            raise AssertionError(f"kubectl explain {' '.join(args)} kept failing: {proc.stderr}")
        time.sleep(0.2)


def test_explain_uses_the_crd_schema(widgets: Any) -> None:
    out = explain(widgets, "widget.spec")
    assert "What the widget should look like." in out
    assert "size" in out and "-required-" in out
    assert "Number of parts." in explain(widgets, "widgets.spec.size")


def test_field_validation_is_checked_but_not_done_by_the_server(widgets: Any) -> None:
    """1.24 knows the fieldValidation values (and refuses others, naming the options kind), but has no
    server-side field validation: an unknown field is dropped whatever the value says."""
    kube = widgets
    path = f"/apis/kubectltest.stagefleet.dev/v1/namespaces/{kube.namespace}/widgets"
    body = json.dumps(widget("fv", size=1, shape="round"))
    bad = kube.kubectl("create", "--raw", f"{path}?fieldValidation=Nope", "-f", "-", input=body, check=False)
    assert bad.returncode != 0
    assert (
        'The CreateOptions "" is invalid: fieldValidation: Unsupported value: "Nope": supported values: '
        '"", "Ignore", "Strict", "Warn"'
    ) in bad.stderr
    created = kube.kubectl("create", "--raw", f"{path}?fieldValidation=Strict", "-f", "-", input=body)
    assert json.loads(created.stdout)["spec"] == {"size": 1, "color": "red"}


def test_not_found_and_already_exists_are_reported(kube: Any) -> None:
    missing = kube.kubectl("get", "cm", "nope", check=False)
    assert missing.returncode != 0 and 'configmaps "nope" not found' in missing.stderr
    apply(kube, cm("dup", {}))
    dup = kube.kubectl("create", "-f", "-", "-o", "name", input=json.dumps(cm("dup", {})), check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr


def test_server_side_apply_conflicts_between_managers_unless_forced(kube: Any) -> None:
    apply(kube, cm("shared", {"a": "1"}), "--server-side", "--field-manager=alice")
    clash = kube.kubectl(
        "apply",
        "-f",
        "-",
        "--server-side",
        "--field-manager=bob",
        input=json.dumps(cm("shared", {"a": "2"})),
        check=False,
    )
    assert clash.returncode != 0
    assert 'conflict with "alice"' in clash.stderr and ".data.a" in clash.stderr
    assert get(kube, "cm", "shared")["data"] == {"a": "1"}
    apply(
        kube, cm("shared", {"a": "1", "b": "x"}), "--server-side", "--field-manager=bob"
    )  # same value: shared
    apply(kube, cm("shared", {"a": "2"}), "--server-side", "--field-manager=bob", "--force-conflicts")
    assert get(kube, "cm", "shared")["data"] == {"a": "2"}


def test_scale_subresource(kube: Any, test_image: str) -> None:
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": test_image, "command": ["sleep", "3600"]}]},
            },
        },
    }
    apply(kube, deploy)
    kube.kubectl("scale", "deployment", "web", "--replicas=3")
    got = get(kube, "deployment", "web")
    assert got["spec"]["replicas"] == 3
    assert got["metadata"]["generation"] == 2
    stale = kube.kubectl("scale", "deployment", "web", "--replicas=4", "--resource-version=1", check=False)
    assert stale.returncode != 0 and get(kube, "deployment", "web")["spec"]["replicas"] == 3


def test_kubectl_create_generators_and_namespace_deletion(kube: Any) -> None:
    """`kubectl create cm/secret/ns/sa` send protobuf bodies; deleting a namespace removes its contents."""
    ns = f"{kube.namespace}-x"
    kube.kubectl("create", "namespace", ns)
    kube.kubectl("-n", ns, "create", "configmap", "cfg", "--from-literal=k=v")
    kube.kubectl("-n", ns, "create", "secret", "generic", "sec", "--from-literal=p=s3cret")
    kube.kubectl("-n", ns, "create", "serviceaccount", "robot")
    assert get(kube, "-n", ns, "configmap", "cfg")["data"] == {"k": "v"}
    secret = get(kube, "-n", ns, "secret", "sec")
    assert secret["type"] == "Opaque" and secret["data"] == {"p": "czNjcmV0"}
    assert get(kube, "-n", ns, "serviceaccount", "robot")["metadata"]["name"] == "robot"
    kube.kubectl("delete", "namespace", ns, "--timeout=60s")
    assert get(kube, "namespace", ns) is None
    assert kube.kubectl("-n", ns, "get", "configmap", "cfg", check=False).returncode != 0


def test_kubectl_logs_shows_what_the_container_wrote(
    kube: Any, test_image: str, wait_until: Callable[..., Any]
) -> None:
    """On the real tier the pod prints its lines and finishes; the emulator alone has no kubelet, so the
    test writes the log file the dev kubelet would and marks the pod Succeeded, as the kubelet would."""
    lines = "line 1\nline 2\nline 3\n"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "talker"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": test_image, "command": ["sh", "-c", f"printf '{lines}'"]}
            ],
        },
    }
    apply(kube, pod)
    if kube.emulator is not None:
        logfile = kube.emulator.logs_dir / kube.namespace / "talker" / "main.log"
        logfile.parent.mkdir(parents=True)
        logfile.write_text(lines)
        kube.kubectl(
            "patch",
            "pod",
            "talker",
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status":{"phase":"Succeeded"}}',
        )
    wait_until(
        lambda: get(kube, "pod", "talker")["status"].get("phase") == "Succeeded", "talker done", timeout=120
    )
    assert kube.kubectl("logs", "talker").stdout == lines
    assert kube.kubectl("logs", "talker", "--tail=1").stdout == "line 3\n"
    assert kube.kubectl("logs", "-f", "talker").stdout == lines  # follow ends: the pod is done
