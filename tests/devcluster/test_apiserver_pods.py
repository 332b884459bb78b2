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
