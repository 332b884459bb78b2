"""The operator's health endpoint (`--health-port`, what the chart's liveness and readiness probes call).

It is served from the operator's event loop (kopf's liveness endpoint), unlike /metrics (a thread), so a
wedged operator fails it; its answer counts the builds the operator is still driving.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry, free_port

from .conftest import Kubectl, Operator, inline_manifest, wait_for


def _healthz(port: int, deadline: float) -> dict[str, Any]:
    """GET /healthz until it answers 200 (the operator is starting); its JSON body."""
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert resp.status == 200
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.tiers("real")
def test_healthz_answers_and_counts_builds_in_flight(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry
) -> None:
    port = free_port()
    operator.stop()
    operator.extra = ["--health-port", str(port), "--metrics-address", "127.0.0.1"]
    operator.start()
    assert _healthz(port, time.monotonic() + 60) == {"buildsInFlight": 0}

    # A build that waits for its Secret stays in flight (the operator looks at it again on its own).
    dockerfile = "FROM scratch AS a\nRUN --mount=type=secret,id=token,required=true true\n"
    kubectl.apply(
        inline_manifest(
            "probe",
            dockerfile,
            registry.host,
            secrets=[{"id": "token", "secretRef": {"name": "absent", "key": "token"}}],
        )
    )
    wait_for(
        kubectl,
        operator,
        "probe",
        lambda o: any(c["type"] == "Stalled" for c in (o.get("status") or {}).get("conditions") or ()),
        "Stalled",
    )
    _wait_count(port, 1)
    kubectl.run("delete", "imagebuild", "probe")
    _wait_count(port, 0)
    log = operator.log.read_text(errors="replace")
    assert "GET /healthz" not in log and "Activity 'buildsInFlight'" not in log  # probes stay out of the log


def _wait_count(port: int, expected: int) -> None:
    """kopf reruns probe handlers at most every 10 s (it caches their answer): poll past that."""
    deadline = time.monotonic() + 30
    while (seen := _healthz(port, deadline)["buildsInFlight"]) != expected:
        assert time.monotonic() < deadline, f"buildsInFlight stayed {seen}, expected {expected}"
        time.sleep(0.5)
