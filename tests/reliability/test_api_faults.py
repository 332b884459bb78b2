"""The API emulator answers 429/500/503 to a share of all requests and drops every watch after a few
seconds (on the real tier: the fault proxy in front of the real API server does, for the operator's
requests), while three 4-group builds run (SIMULATED worker): no status update is lost (every build ends
Succeeded with every result recorded and passed on), no pod is created twice, and no handler or reconcile
pass dies on an exception."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    Api,
    OperatorFactory,
    RCluster,
    assert_clean_success,
    fake_manifest,
    operator_crashes,
    terminal,
)

pytestmark = [pytest.mark.cluster]


@pytest.fixture
def faults(rcluster: RCluster) -> Iterator[object]:
    f = rcluster.faults
    yield f
    f.update({"error_rate": 0.0, "watch_drop_seconds": None, "latency_seconds": 0.0})


def test_api_errors_and_dropped_watches_lose_nothing(
    api: Api, make_operator: OperatorFactory, rcluster: RCluster, records: Path, faults: object
) -> None:
    op = make_operator(sleep=1.0, slow={"g3": 2.0})
    injected, dropped = rcluster.faults.injected, rcluster.faults.watches_dropped
    rcluster.faults.update(
        {"error_rate": 0.25, "codes": [429, 500, 503], "watch_drop_seconds": 2.0, "seed": 7}
    )
    names = ["fa", "fb", "fc"]
    for n in names:
        api.create(fake_manifest(n, maxParallelPods=4))
    objs = [terminal(api, n, op) for n in names]
    rcluster.faults.update({"error_rate": 0.0, "watch_drop_seconds": None})
    # the operator did meet the faults (on the real tier only its requests pass the fault proxy)
    assert rcluster.faults.injected > injected and rcluster.faults.watches_dropped > dropped
    for obj in objs:
        assert_clean_success(obj, api, rcluster.ledger, records)
        st = obj["status"]
        assert st["stagesDone"] == st["stagesTotal"] == 4 and st["progress"] == "4/4", st
        assert {c["type"]: c["status"] for c in st["conditions"]}.get("Ready") == "True"
    assert op.alive()
    assert operator_crashes(op.log) == []
