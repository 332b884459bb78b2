"""Pure: progress events, which stage a worker's output line belongs to, the worker's result line, and
`--progress plain`."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUP_STARTED = "group-started"
LOG = "log"
GROUP_FINISHED = "group-finished"
GROUP_RETRYING = "group-retrying"  # an attempt failed through no fault of the build: another one follows
GROUP_REUSED = "group-reused"   # a stored result stands for the group: no worker
NOTE = "note"                   # something the user may want to know, not tied to a group
BUILD_STARTED = "build-started"
BUILD_FINISHED = "build-finished"


@dataclass(frozen=True)
class Event:
    """One progress event; `time` is Unix time in seconds, comparable across groups."""

    kind: str
    time: float
    group: str | None = None
    stage: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind, "time": round(self.time, 6)}
        if self.group is not None:
            out["group"] = self.group
        if self.stage is not None:
            out["stage"] = self.stage
        out.update(self.data)
        return out


_STEP_FROM = re.compile(r"STEP \d+(?:/\d+)?: FROM \S+(?: AS (\S+))?", re.IGNORECASE)
_PREFIX = re.compile(r"^\[([a-z0-9][a-z0-9_.-]*)\] ?")


class StageTracker:
    """Works out which stage of a group a worker output line belongs to.

    The worker prefixes lines with `[stage]`; buildah's own `STEP n/m: FROM base AS stage` lines mark
    where a stage begins. Lines with neither belong to the stage seen last (at first, the first one).
    """

    def __init__(self, stages: Sequence[str]) -> None:
        self.stages = list(stages)
        self.current = self.stages[0] if self.stages else ""

    def feed(self, line: str) -> tuple[str, str]:
        """(stage, line without a recognised stage prefix)."""
        m = _PREFIX.match(line)
        if m and m.group(1) in self.stages:
            self.current = m.group(1)
            line = line[m.end():]
        fm = _STEP_FROM.search(line)
        if fm and fm.group(1) and fm.group(1).lower() in self.stages:
            self.current = fm.group(1).lower()
        return self.current, line


def short_digest(digest: str | None) -> str:
    if not digest:
        return "-"
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest


def format_plain(event: Event, start: float) -> str | None:
    """One `--progress plain` line: seconds since the build started, the stage, the text."""
    t = f"{max(event.time - start, 0.0):7.2f}"
    d = event.data
    label = event.stage or event.group or "build"
    if event.kind == BUILD_STARTED:
        return f"{t} [build] plan: {d.get('groups', '?')} groups, target {d.get('target', '?')}, " \
               f"registry {d.get('registry', '?')}, parallel {d.get('parallel', '?')}"
    if event.kind == GROUP_STARTED:
        attempt = f", attempt {d['attempt']}" if (d.get("attempt") or 1) > 1 else ""
        early = f"; early: waits for {', '.join(d['waitsFor'])}" if d.get("waitsFor") else ""
        return (f"{t} [{label}] ==> group {event.group} started (stages: {', '.join(d.get('stages', []))}"
                f"{attempt}{early})")
    if event.kind == GROUP_RETRYING:
        return (f"{t} [{label}] ==> group {event.group} {d.get('message', '')}; "
                f"retrying in {d.get('retryIn', 0):.1f}s")
    if event.kind == LOG:
        return f"{t} [{label}] {d.get('line', '')}"
    if event.kind == GROUP_REUSED:
        return (f"{t} [{label}] ==> group {event.group} reused: {short_digest(d.get('digest'))} "
                f"(stored result, no worker)")
    if event.kind == NOTE:
        return f"{t} [build] {d.get('message', '')}"
    if event.kind == GROUP_FINISHED:
        if d.get("ok"):
            return (f"{t} [{label}] ==> group {event.group} done in {d.get('seconds', 0):.2f}s "
                    f"({d.get('cachedSteps', 0)}/{d.get('steps', 0)} steps cached) {d.get('digest', '')}")
        return f"{t} [{label}] ==> group {event.group} FAILED: {d.get('message', '')}"
    if event.kind == BUILD_FINISHED:
        if d.get("ok"):
            return f"{t} [build] done: {d.get('image', '')}@{d.get('digest', '')}"
        return f"{t} [build] FAILED: {d.get('message', '')}"
    return None


def parse_result(stdout_last: str | None, result_file: Path | None) -> dict[str, Any] | None:
    """The worker's result JSON: the result file if it was written, else its last stdout line."""
    candidates: list[str] = []
    if result_file is not None:
        with contextlib.suppress(OSError):
            candidates.append(result_file.read_text())
    if stdout_last:
        candidates.append(stdout_last)
    for text in candidates:
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, dict) and "ok" in data:
                return data
    return None


def looks_like_result(line: str) -> bool:
    """The worker's result line (kept out of the log stream; it is shown as the group's outcome)."""
    if not line.startswith("{") or '"ok"' not in line:
        return False
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and "ok" in data and ("digest" in data or "error" in data)
