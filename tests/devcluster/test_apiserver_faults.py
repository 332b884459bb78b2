"""Fault injection (emulator-only): injected error codes, runtime control over HTTP, watch drops."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from stagefleet.devcluster.apiserver import Faults


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_faults_are_off_by_default(apiserver: Any) -> None:
    assert call(f"{apiserver.url}/_emulator/faults")[1]["error_rate"] == 0
    assert all(call(f"{apiserver.url}/api/v1/namespaces")[0] == 200 for _ in range(20))


def test_error_rate_answers_status_with_the_configured_codes(apiserver: Any) -> None:
    code, shown = call(f"{apiserver.url}/_emulator/faults", "POST", {"error_rate": 1.0, "codes": [503]})
    assert code == 200 and shown["codes"] == [503]
    code, status = call(f"{apiserver.url}/api/v1/namespaces")
    assert code == 503
    assert status["kind"] == "Status" and status["reason"] == "ServiceUnavailable"
    call(f"{apiserver.url}/_emulator/faults", "POST", {"error_rate": 0.0})
    assert call(f"{apiserver.url}/api/v1/namespaces")[0] == 200


def test_partial_error_rate_with_seed_fails_some_requests(apiserver: Any) -> None:
    apiserver.server.faults.update({"error_rate": 0.5, "codes": [429, 500], "seed": 7})
    codes = {call(f"{apiserver.url}/api/v1/namespaces/default")[0] for _ in range(60)}
    assert codes == {200, 429, 500}


def test_unknown_fault_setting_is_rejected(apiserver: Any) -> None:
    code, status = call(f"{apiserver.url}/_emulator/faults", "POST", {"eror_rate": 1})
    assert code == 400 and "eror_rate" in status["message"]


def test_watch_drop_closes_streams(apiserver: Any) -> None:
    apiserver.server.faults.update({"watch_drop_seconds": 0.2})
    url = f"{apiserver.url}/api/v1/namespaces/default/secrets?watch=true&resourceVersion=0"  # none there
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()  # returns because the server ends the stream, not because of the client timeout
    assert body == b""
    assert apiserver.server.faults.watches_dropped == 1


def test_faults_object_defaults() -> None:
    f = Faults()
    assert f.pick_error() is None
    assert Faults(error_rate=1.0, codes=(500,)).pick_error() == 500
