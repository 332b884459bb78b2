"""kube.Kube.create against a server answering like kube-apiserver: a refusal (400, 403, 422) surfaces as
`Refused` with the API's reason and message; AlreadyExists is success (None); a 409 that is not AlreadyExists
and 5xx answers are retried; nothing else is swallowed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from stagefleet.controller import kube

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "b-1-g1-a1", "namespace": "ns"},
    "spec": {"containers": [{"name": "worker", "image": "x"}]},
}
CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "b-1-dockerfile", "namespace": "ns"},
}
SA_MESSAGE = (
    'pods "b-1-g1-a1" is forbidden: error looking up service account ns/nope: serviceaccount "nope" not found'
)


def status(code: int, reason: str, message: str) -> tuple[int, bytes]:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    return code, json.dumps({**body, "message": message, "reason": reason, "code": code}).encode()


class Canned:
    """A loopback HTTP server that answers each POST with the next canned (code, body) and records paths."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self.posts: list[str] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                canned.posts.append(self.path)
                code, body = canned.answers.pop(0)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def kube(self) -> kube.Kube:
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return kube.Kube(kube._TimeoutApiClient(cfg))


@pytest.fixture
def canned() -> Iterator[Canned]:
    c = Canned()
    yield c
    c.server.shutdown()
    c.server.server_close()


@pytest.mark.parametrize(
    ("code", "reason", "message"),
    [
        (403, "Forbidden", SA_MESSAGE),
        (
            403,
            "Forbidden",
            'pods "b-1-g1-a1" is forbidden: violates PodSecurity "restricted:latest": '
            'allowPrivilegeEscalation != false (container "worker" must set '
            "securityContext.allowPrivilegeEscalation=false)",
        ),
        (
            403,
            "Forbidden",
            'pods "b-1-g1-a1" is forbidden: exceeded quota: pods, '
            "requested: pods=1, used: pods=2, limited: pods=2",
        ),
        (
            400,
            "BadRequest",
            'admission webhook "deny.example.com" denied the request: pods must carry a team label',
        ),
        (
            422,
            "Invalid",
            'Pod "b-1-g1-a1" is invalid: spec.containers[0].image: Required value',
        ),
    ],
    ids=["service-account", "pod-security", "quota", "webhook", "invalid"],
)
def test_a_refusal_carries_the_apis_code_reason_and_message(
    canned: Canned, code: int, reason: str, message: str
) -> None:
    canned.answers = [status(code, reason, message)]
    with pytest.raises(kube.Refused) as err:
        canned.kube().create(POD)
    e = err.value
    assert (e.kind, e.name, e.code, e.reason, e.message) == ("Pod", "b-1-g1-a1", code, reason, message)
    assert canned.posts == ["/api/v1/namespaces/ns/pods"]  # not retried: the same request would fail again


def test_a_refused_configmap_too(canned: Canned) -> None:
    canned.answers = [status(403, "Forbidden", 'configmaps "b-1-dockerfile" is forbidden: exceeded quota')]
    with pytest.raises(kube.Refused) as err:
        canned.kube().create(CONFIGMAP)
    assert (err.value.kind, err.value.name, err.value.code) == ("ConfigMap", "b-1-dockerfile", 403)
    assert canned.posts == ["/api/v1/namespaces/ns/configmaps"]


def test_a_refusal_without_a_status_body_keeps_the_http_reason_and_body(canned: Canned) -> None:
    canned.answers = [(403, b"forbidden by the proxy\n")]
    with pytest.raises(kube.Refused) as err:
        canned.kube().create(POD)
    assert (err.value.code, err.value.reason, err.value.message) == (
        403,
        "Forbidden",
        "forbidden by the proxy",
    )


def test_already_exists_is_success(canned: Canned) -> None:
    canned.answers = [status(409, "AlreadyExists", 'pods "b-1-g1-a1" already exists')]
    assert canned.kube().create(POD) is None
    assert len(canned.posts) == 1


def test_a_conflict_that_is_not_already_exists_is_tried_again(canned: Canned) -> None:
    conflict = status(
        409,
        "Conflict",
        'Operation cannot be fulfilled on resourcequotas "pods": the object has been modified; '
        "please apply your changes to the latest version and try again",
    )
    canned.answers = [
        conflict,
        (201, json.dumps({**POD, "metadata": {**POD["metadata"], "uid": "u1"}}).encode()),
    ]
    created = canned.kube().create(POD)
    assert created is not None and created["metadata"]["uid"] == "u1"
    assert len(canned.posts) == 2


def test_server_errors_are_retried_as_before(canned: Canned) -> None:
    canned.answers = [status(500, "InternalError", "etcdserver: request timed out")] + [
        (201, json.dumps(POD).encode())
    ]
    assert canned.kube().create(POD) is not None and len(canned.posts) == 2


def test_other_errors_are_not_refusals(canned: Canned) -> None:
    canned.answers = [status(404, "NotFound", 'namespaces "ns" not found')]
    with pytest.raises(ApiException) as err:
        canned.kube().create(POD)
    assert err.value.status == 404 and len(canned.posts) == 1
