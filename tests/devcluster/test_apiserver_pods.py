"""Pod subresources over HTTP (emulator + files the kubelet would write): log, binding, status."""

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


POD = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "main", "image": "busybox"}]}}


def test_binding_sets_node_once(apiserver: Any) -> None:
    base = f"{apiserver.url}/api/v1/namespaces/default/pods"
    assert call(base, "POST", POD)[0] == 201
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"name": "node-1"}}
    assert call(f"{base}/p/binding", "POST", binding)[0] == 201
    assert json.loads(call(f"{base}/p")[1])["spec"]["nodeName"] == "node-1"
    code, body = call(f"{base}/p/binding", "POST", {**binding, "target": {"name": "node-2"}})
    assert code == 409 and b"already assigned" in body


def test_log_serves_the_kubelet_file_with_tail(apiserver: Any) -> None:
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
    """ServiceAccount admission: 403 Forbidden, with kube-apiserver's Status (reason, message, details)."""
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
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fresh"}}
    assert call(f"{apiserver.url}/api/v1/namespaces", "POST", ns)[0] == 201
    code, body = call(f"{apiserver.url}/api/v1/namespaces/fresh/serviceaccounts/default")
    assert code == 200 and json.loads(body)["metadata"]["namespace"] == "fresh"
    code, body = call(f"{apiserver.url}/api/v1/namespaces/fresh/pods", "POST", POD)
    assert code == 201 and json.loads(body)["spec"]["serviceAccountName"] == "default"


def test_kubectl_shows_the_refusal(kube: Any) -> None:
    """The same words through the real kubectl (and on STAGEFLEET_TEST_KUBECONFIG's real cluster)."""
    nope = {"apiVersion": "v1", "kind": "Pod", **POD, "spec": {**POD["spec"], "serviceAccountName": "nope"}}
    proc = kube.kubectl("apply", "-f", "-", input=json.dumps(nope), check=False)
    assert proc.returncode != 0
    assert (
        f'Error from server (Forbidden): error when creating "STDIN": pods "p" is forbidden: '
        f'error looking up service account {kube.namespace}/nope: serviceaccount "nope" not found'
    ) in proc.stderr
    assert kube.kubectl("get", "pod", "p", "--ignore-not-found", "-o", "name").stdout == ""
