"""Pure: what happened to each group (`GroupOutcome`) and the build's summary table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stagefleet.local.events import short_digest
from stagefleet.local.shapes import GroupLike, PlanLike
from stagefleet.local.workerargs import Stored


@dataclass
class GroupOutcome:
    """What happened to one group: its run window, the worker's exit status and result JSON."""

    group: str
    stages: tuple[str, ...]
    started: float
    finished: float
    exit_code: int | None
    result: Mapping[str, Any] | None = None
    error: str | None = None          # our message when the worker gave none (or was stopped)
    cancelled: bool = False
    reused: bool = False              # a stored result (`Stored`): no worker ran

    @classmethod
    def from_stored(cls, group: GroupLike, stored: Stored, when: float) -> GroupOutcome:
        result = {"ok": True, "group": group.id, "target": group.stages[-1], "image": stored.image,
                  "digest": stored.digest}
        return cls(group.id, tuple(group.stages), when, when, 0, result, reused=True)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and bool(self.result and self.result.get("ok")) and not self.cancelled

    @property
    def seconds(self) -> float:
        return max(self.finished - self.started, 0.0)

    @property
    def digest(self) -> str | None:
        d = self.result.get("digest") if self.result else None
        return d if isinstance(d, str) else None

    def message(self) -> str:
        """The failure in one line, preferring the worker's own words."""
        err = self.result.get("error") if self.result else None
        if isinstance(err, Mapping) and err.get("message"):
            where = ""
            if err.get("stage"):
                where = f" (stage {err['stage']}" + (f", line {err['line']}" if err.get("line") else "") + ")"
            return f"{err.get('kind', 'error')}{where}: {err['message']}"
        if self.error:
            return self.error
        return f"worker exited with status {self.exit_code}"


@dataclass(frozen=True)
class StageRow:
    stage: str
    group: str
    seconds: float | None
    cached_steps: int | None
    steps: int | None
    digest: str | None
    status: str            # done | reused | failed | cancelled | not run
    critical: bool


@dataclass(frozen=True)
class Summary:
    rows: tuple[StageRow, ...]
    critical_path: tuple[str, ...]
    critical_seconds: float
    wall_seconds: float
    group_seconds: float      # sum of the groups' working windows: one worker after another
    stage_seconds: float      # sum of the stages' build times as the workers measured them

    @property
    def speedup(self) -> float:
        """Sum of group run times over wall time: how much running groups side by side bought."""
        return self.group_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


def summarize(plan: PlanLike, outcomes: Mapping[str, GroupOutcome], wall_seconds: float) -> Summary:
    """Per-stage rows (plan order), the critical path's measured time, and the parallel speed-up.

    A stage's time is the worker's own per-stage measurement; when the worker reported none (it
    failed or was stopped), a single-stage group's run window stands in for it.
    """
    rows: list[StageRow] = []
    stage_secs: dict[str, float] = {}
    critical = set(plan.critical_path)
    for g in plan.groups:
        o = outcomes.get(g.id)
        per_stage: dict[str, Mapping[str, Any]] = {}
        if o and o.result:
            for s in o.result.get("stages") or []:
                if isinstance(s, Mapping) and isinstance(s.get("name"), str):
                    per_stage[s["name"]] = s
        for name in g.stages:
            info = per_stage.get(name, {})
            secs: float | None = None
            if isinstance(info.get("seconds"), int | float):
                secs = float(info["seconds"])
            elif o is not None and len(g.stages) == 1 and not o.reused:
                secs = o.seconds
            if secs is not None:
                stage_secs[name] = secs
            if o is None:
                status = "not run"
            elif o.reused:
                status = "reused"
            elif o.ok:
                status = "done"
            elif o.cancelled:
                status = "cancelled"
            else:
                status = "failed"
            cached = info.get("cachedSteps")
            steps = info.get("steps")
            rows.append(StageRow(
                stage=name, group=g.id, seconds=secs,
                cached_steps=int(cached) if isinstance(cached, int) else None,
                steps=int(steps) if isinstance(steps, int) else None,
                digest=o.digest if o and o.ok and name == g.stages[-1] else None,
                status=status, critical=name in critical))
    return Summary(
        rows=tuple(rows),
        critical_path=tuple(plan.critical_path),
        critical_seconds=sum(stage_secs.get(s, 0.0) for s in plan.critical_path),
        wall_seconds=wall_seconds,
        group_seconds=sum(_working_seconds(g, outcomes) for g in plan.groups if g.id in outcomes),
        stage_seconds=sum(stage_secs.values()),
    )


def _working_seconds(group: GroupLike, outcomes: Mapping[str, GroupOutcome]) -> float:
    """A group's run window from when it could work: a worker started early spends its first seconds
    waiting for its upstreams' results, which one builder running the groups in turn would not."""
    o = outcomes[group.id]
    ready = max((outcomes[a].finished for a in group.after if a in outcomes), default=o.started)
    return max(o.finished - max(o.started, ready), 0.0)


def summary_table(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table (shared by the plain and the rich renderers)."""
    header = ["STAGE", "GROUP", "STATUS", "DURATION", "CACHED", "DIGEST"]
    cells = []
    for r in summary.rows:
        cached = "-" if r.cached_steps is None else (
            f"{r.cached_steps}/{r.steps}" if r.steps is not None else str(r.cached_steps))
        cells.append([r.stage + (" *" if r.critical else ""), r.group, r.status,
                      "-" if r.seconds is None else f"{r.seconds:.1f}s", cached, short_digest(r.digest)])
    return header, cells


def summary_footer(summary: Summary) -> list[str]:
    """The lines under the table: critical path, wall time against summed times, speed-up."""
    return [
        f"critical path (*): {' -> '.join(summary.critical_path) or '-'} ({summary.critical_seconds:.1f}s)",
        f"wall time {summary.wall_seconds:.1f}s; groups one after another {summary.group_seconds:.1f}s "
        f"(stages {summary.stage_seconds:.1f}s); parallel speed-up {summary.speedup:.2f}x",
    ]


def format_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    """kubectl-style columns: left-aligned, three spaces apart."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *cells, strict=False)]
    return ["   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
            for row in [list(header), *cells]]


def format_summary(summary: Summary) -> list[str]:
    header, cells = summary_table(summary)
    return format_table(header, cells) + summary_footer(summary)
