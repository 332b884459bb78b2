"""metrics.py: counters and gauges follow status transitions, once per transition."""

from __future__ import annotations

from datetime import UTC, datetime

from stagefleet.controller.metrics import Metrics
from stagefleet.controller.report import planned_status

from .helpers import SEED_PLAN, pod, result_json
from .test_status import D1, D2, D3, run


def _value(m: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    v = m.registry.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def test_metrics_follow_a_build() -> None:
    m = Metrics()
    s0 = planned_status(generation=1, plan=SEED_PLAN, source={}, old={}, now=datetime(2026, 1, 1, tzinfo=UTC))
    m.record("ns/seed", {}, s0)
    assert _value(m, "stagefleet_queue_depth") == 2  # g1 and g2 are ready, g3 waits for them
    s1 = run(s0, []).status
    m.record("ns/seed", s0, s1)
    assert _value(m, "stagefleet_worker_pods_running") == 2 and _value(m, "stagefleet_queue_depth") == 0
    done = [
        pod("g1", phase="Succeeded", message=result_json("g1", "build1", D1, cached=2)),
        pod("g2", phase="Succeeded", message=result_json("g2", "build2", D2)),
    ]
    s2 = run(s1, done).status
    m.record("ns/seed", s1, s2)
    assert _value(m, "stagefleet_cache_hits_total") == 2 and _value(m, "stagefleet_build_steps_total") == 4
    assert _value(m, "stagefleet_stage_duration_seconds_count") == 2
    s3 = run(s2, [*done, pod("g3", phase="Succeeded", message=result_json("g3", "final", D3))]).status
    m.record("ns/seed", s2, s3)
    m.record("ns/seed", s3, s3)  # a repeated write of the same status counts nothing twice
    assert _value(m, "stagefleet_builds_total", {"result": "Succeeded"}) == 1
    assert _value(m, "stagefleet_stage_duration_seconds_count") == 3
    assert _value(m, "stagefleet_worker_pods_running") == 0
    m.forget("ns/seed")
    assert _value(m, "stagefleet_queue_depth") == 0
