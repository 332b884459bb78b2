"""Pod subresources: binding (both tiers); log and status over the emulator's HTTP with the files the dev
kubelet would write (emulator-only: a real kubelet writes its own, see test_apiserver_kubectl.py's logs test);
ServiceAccount admission (the Status body on the emulator, kubectl's words on both tiers)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any


def call(
    url: str, method: str = "GET", body: Any = None, ctype: str = "application/json"
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# for the emulator-only tests: the emulator stores the image name, nothing pulls it
POD = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "main", "image": "busybox"}]}}


def test_binding_sets_node_once(kube: Any, test_image: str) -> None:
    """A pod no scheduler takes is bound through its binding subresource, once; binding it again is a
    conflict in kube-apiserver's words."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "schedulerName": "nobody",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": test_image, "command": ["sleep", "3600"]}],
        },
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(pod))
    nodes = kube.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    node = nodes[0] if nodes else "node-1"  # the emulator alone has no nodes: it does not check the name
    path = f"/api/v1/namespaces/{kube.namespace}/pods/p/binding"

    def bind(target: str, check: bool = True) -> Any:
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "p"},
            "target": {"name": target},
        }
        return kube.kubectl("create", "--raw", path, "-f", "-", input=json.dumps(binding), check=check)

    bind(node)
    assert kube.kubectl("get", "pod", "p", "-o", "jsonpath={.spec.nodeName}").stdout == node
    again = bind("elsewhere", check=False)
    assert again.returncode != 0
    assert (
        f'Operation cannot be fulfilled on pods/binding "p": pod p is already assigned to node "{node}"'
        in (again.stderr)
    )


def test_log_serves_the_kubelet_file_with_tail(apiserver: Any) -> None:
    """Emulator-only: the test writes the log file the dev kubelet would."""
    base = f"{apiserver.url}/api/v1/namespaces/default/pods"
    call(base, "POST", POD)
    code, body = call(f"{base}/p/log")
    assert code == 400 and b"waiting to start" in body
    logfile = apiserver.logs_dir / "default" / "p" / "main.log"
    logfile.parent.mkdir(parents=True)
    logfile.write_bytes(b"one\ntwo\nthree\n")
    assert call(f"{base}/p/log")[1] == b"one\ntwo\nthree\n"
    assert call(f"{base}/p/log?container=main&tailLines=2")[1] == b"two\nthree\n"
    assert call(f"{base}/p/log?limitBytes=3")[1] == b"one"
    stamped = call(f"{base}/p/log?timestamps=true&tailLines=1")[1].decode()
    assert stamped.endswith(" three\n") and stamped[:4].isdigit()
    assert call(f"{base}/p/log?container=nope")[0] == 400


def test_follow_streams_until_the_container_terminates(apiserver: Any) -> None:
    """Emulator-only: the test writes the log file and posts the container's end as the dev kubelet would."""
    base = f"{apiserver.url}/api/v1/namespaces/default/pods"
    call(base, "POST", POD)
    logfile = apiserver.logs_dir / "default" / "p" / "main.log"
    logfile.parent.mkdir(parents=True)
    logfile.write_bytes(b"first\n")
    received: list[bytes] = []
    got_first = threading.Event()

    def follow() -> None:
        with urllib.request.urlopen(f"{base}/p/log?follow=true", timeout=60) as resp:
            for line in resp:
                received.append(line)
                got_first.set()

    reader = threading.Thread(target=follow)
    reader.start()
    assert got_first.wait(30)
    with logfile.open("ab") as f:
        f.write(b"second\n")
    status = {
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 0}}}],
        }
    }
    code, _ = call(f"{base}/p/status", "PATCH", status, "application/merge-patch+json")
    assert code == 200
    reader.join(60)
    assert not reader.is_alive()
    assert b"".join(received) == b"first\nsecond\n"


def test_a_pod_naming_a_missing_service_account_is_refused_as_kube_apiserver_does(apiserver: Any) -> None:
    """ServiceAccount admission: 403 Forbidden, with kube-apiserver's Status (reason, message, details).
    Emulator-only for the whole Status body over plain HTTP; on both tiers: test_kubectl_shows_the_refusal."""
    base = f"{apiserver.url}/api/v1/namespaces/default/pods"
    nope = {**POD, "spec": {**POD["spec"], "serviceAccountName": "nope"}}
    code, body = call(base, "POST", nope)
    assert code == 403
    assert json.loads(body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "p" is forbidden: error looking up service account default/nope: '
        'serviceaccount "nope" not found',
        "reason": "Forbidden",
        "details": {"name": "p", "kind": "pods"},
        "code": 403,
    }
    assert call(f"{base}/p")[0] == 404  # nothing stored
    # The deprecated field names the ServiceAccount just the same.
    old_style = {**POD, "spec": {**POD["spec"], "serviceAccount": "nope"}}
    code, body = call(base, "POST", old_style)
    assert code == 403 and b"default/nope" in body

    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nope"}}
    assert call(f"{apiserver.url}/api/v1/namespaces/default/serviceaccounts", "POST", sa)[0] == 201
    code, body = call(base, "POST", nope)
    assert code == 201 and json.loads(body)["spec"]["serviceAccountName"] == "nope"


def test_a_new_namespace_gets_a_default_service_account_that_pods_run_as(apiserver: Any) -> None:
    """Emulator-only: at once, with the namespace (a real cluster's controller adds it a moment later; the
    `kube` fixture waits for it on both tiers and test_apiserver_admission.py checks what pods get)."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fresh"}}
    assert call(f"{apiserver.url}/api/v1/namespaces", "POST", ns)[0] == 201
    code, body = call(f"{apiserver.url}/api/v1/namespaces/fresh/serviceaccounts/default")
    assert code == 200 and json.loads(body)["metadata"]["namespace"] == "fresh"
    code, body = call(f"{apiserver.url}/api/v1/namespaces/fresh/pods", "POST", POD)
    assert code == 201 and json.loads(body)["spec"]["serviceAccountName"] == "default"


def test_kubectl_shows_the_refusal(kube: Any, test_image: str) -> None:
    """The same words through the real kubectl, on both tiers."""
    spec = {"containers": [{"name": "main", "image": test_image}], "serviceAccountName": "nope"}
    nope = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
    proc = kube.kubectl("apply", "-f", "-", input=json.dumps(nope), check=False)
    assert proc.returncode != 0
    assert (
        f'Error from server (Forbidden): error when creating "STDIN": pods "p" is forbidden: '
        f'error looking up service account {kube.namespace}/nope: serviceaccount "nope" not found'
    ) in proc.stderr
    assert kube.kubectl("get", "pod", "p", "--ignore-not-found", "-o", "name").stdout == ""
