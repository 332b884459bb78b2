"""The critical path from measured stage durations (controller/history.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from stagefleet.controller import buildphase, history, report
from stagefleet.controller.model import plan_dockerfile

NOW = datetime(2026, 12, 5, tzinfo=UTC)
# By instruction count `long` (four RUNs) is the critical branch; measured, `slow` (one RUN) takes longer.
DOCKERFILE = """FROM scratch AS long
RUN a
RUN b
RUN c
RUN d
FROM scratch AS slow
RUN make
FROM scratch AS final
COPY --from=long /a /a
COPY --from=slow /b /b
"""


def test_instruction_counts_first_then_what_was_measured() -> None:
    plan = plan_dockerfile(DOCKERFILE, target=None, build_args={})
    assert plan.critical_path == ("long", "final")
    measured = {"long": 2.0, "slow": 40.0, "final": 0.5}
    again = history.prioritise(plan, measured)
    assert again.critical_path == ("slow", "final")
    assert {g.stages[-1]: g.critical for g in again.groups} == {"long": False, "slow": True, "final": True}
    assert history.prioritise(plan, {}) is plan  # nothing measured: as planned


def test_unmeasured_stages_are_estimated_at_the_measured_rate() -> None:
    plan = plan_dockerfile(DOCKERFILE, target=None, build_args={})
    # only `long` measured (1 s per instruction): `slow` is estimated at 1 s, `long` stays critical
    assert history.prioritise(plan, {"long": 4.0}).critical_path == ("long", "final")
    # `long` fast (0.1 s per instruction): the one-instruction estimate of `slow` (0.1 s) is shorter still
    assert history.prioritise(plan, {"long": 0.4, "slow": 9.0}).critical_path == ("slow", "final")


def test_durations_survive_the_planning_status_of_a_new_generation() -> None:
    plan = plan_dockerfile(DOCKERFILE, target=None, build_args={})
    done = report.planned_status(generation=1, plan=plan, source={"inline": True}, old={}, now=NOW)
    for e in done["stages"]:
        e.update({"phase": "Succeeded", "duration": {"long": 2.0, "slow": 40.0, "final": 0.5}[e["name"]]})
    done["stages"][0]["reused"] = "sha256:" + "1" * 64  # a reused stage ran nothing: no measurement
    planning = report.progress_status(generation=2, phase=buildphase.PLANNING, reason="Planning",
                                      message="resolving", old=done, now=NOW)
    assert planning["stages"] == [] and history.measured(planning) == {"slow": 40.0, "final": 0.5}
