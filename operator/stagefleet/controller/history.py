"""Order by what took time last time: the critical path from the stage durations a build recorded.

The planner knows only instruction counts, and a one-line `RUN make` can outlast twenty `COPY`s. When a
build is planned again (a new generation of the same ImageBuild), the previous generation's status holds
each stage's measured duration; the critical path is recomputed from those, so the groups on the path
that really is longest start first when slots are short. Stages without a measurement (new ones, reused
ones) are estimated from their instruction count at the measured seconds per instruction. Pure.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from typing import Any

from stagefleet.controller.model import PlanView


def measured(status: Mapping[str, Any]) -> dict[str, float]:
    """Stage name → seconds it took, for the stages a recorded status ran and measured; while a new
    generation's source is resolved (its status lists no stages yet), what `status.progress_status` kept of
    them in ``lastDurations``."""
    out: dict[str, float] = {}
    for e in status.get("stages") or ():
        if isinstance(e, Mapping) and not e.get("reused") and isinstance(e.get("duration"), int | float):
            out[str(e.get("name"))] = float(e["duration"])
    kept = status.get("lastDurations")
    if not out and isinstance(kept, Mapping):
        out = {str(k): float(v) for k, v in kept.items() if isinstance(v, int | float)}
    return out


def prioritise(plan: PlanView, durations: Mapping[str, float]) -> PlanView:
    """``plan`` with its critical path (and the groups' ``critical`` flags) from ``durations``; unchanged
    when nothing of it was measured or its stages are not at hand."""
    graph = plan.graph
    if graph is None or not any(s.name in durations for s in graph.built):
        return plan
    rates = [durations[s.name] / s.instructions
             for s in graph.built if s.name in durations and s.instructions]
    per_instruction = statistics.median(rates) if rates else 1.0
    best: dict[str, float] = {}
    via: dict[str, str | None] = {}
    index = {s.name: s.index for s in graph.built}
    for s in graph.built:  # file order is a topological order
        prev = max(s.depends_on, key=lambda d: (best[d], -index[d]), default=None)
        own = durations.get(s.name, s.instructions * per_instruction)
        best[s.name] = own + (best[prev] if prev else 0.0)
        via[s.name] = prev
    path: list[str] = []
    node: str | None = plan.target
    while node is not None:
        path.append(node)
        node = via.get(node)
    on_path = set(path)
    groups = tuple(dataclasses.replace(g, critical=any(n in on_path for n in g.stages)) for g in plan.groups)
    return dataclasses.replace(plan, groups=groups, critical_path=tuple(reversed(path)))
