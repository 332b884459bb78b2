"""How a local build shows its progress: plain lines, JSON lines, or a live table on a terminal."""

from __future__ import annotations

import json
import time
from typing import Any, Protocol, TextIO

from stagefleet.local.events import (
    GROUP_FINISHED,
    GROUP_RETRYING,
    GROUP_REUSED,
    GROUP_STARTED,
    LOG,
    Event,
    format_plain,
    short_digest,
)
from stagefleet.local.shapes import PlanLike


class Progress(Protocol):
    def handle(self, event: Event) -> None: ...
    def close(self) -> None: ...


class PlainProgress:
    """`--progress plain`: one timestamped, stage-prefixed line per event."""

    def __init__(self, out: TextIO, start: float) -> None:
        self.out, self.start = out, start

    def handle(self, event: Event) -> None:
        line = format_plain(event, self.start)
        if line is not None:
            self.out.write(line + "\n")
            self.out.flush()

    def close(self) -> None:
        self.out.flush()


class JsonProgress:
    """`--progress json`: one JSON object per line, for machines."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def handle(self, event: Event) -> None:
        self.out.write(json.dumps(event.to_json(), sort_keys=False) + "\n")
        self.out.flush()

    def close(self) -> None:
        self.out.flush()


class RichProgress:
    """`--progress auto` on a terminal: a live table, one row per stage with its latest output line."""

    def __init__(self, plan: PlanLike, start: float, console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console()
        self.start = start
        self.state: dict[str, dict[str, Any]] = {}
        for g in plan.groups:
            for s in g.stages:
                self.state[s] = {"group": g.id, "status": "waiting", "t0": None, "t1": None, "last": ""}
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=8,
                         transient=False)
        self.live.start()

    def _render(self) -> Any:
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        now = time.time()
        icons = {"waiting": Text("·", style="dim"), "done": Text("✔", style="green"),
                 "reused": Text("↺", style="green"), "failed": Text("✖", style="bold red"),
                 "cancelled": Text("■", style="yellow")}
        for name, st in self.state.items():
            icon: Any = Spinner("dots", style="cyan") if st["status"] == "running" else icons[st["status"]]
            elapsed = ""
            if st["t0"] is not None:
                elapsed = f"{(st['t1'] or now) - st['t0']:6.1f}s"
            table.add_row(icon, Text(name, style="bold"), Text(st["group"], style="dim"), elapsed,
                          Text(st["last"][-100:], style="dim", no_wrap=True, overflow="ellipsis"))
        return table

    def handle(self, event: Event) -> None:
        d = event.data
        stages = [s for s, st in self.state.items() if st["group"] == event.group]
        if event.kind == GROUP_STARTED:
            for s in stages:
                self.state[s].update(status="running", t0=event.time)
        elif event.kind == LOG and event.stage in self.state:
            self.state[event.stage]["last"] = str(d.get("line", ""))
        elif event.kind == GROUP_RETRYING:
            for s in stages:
                self.state[s].update(status="waiting", last=str(d.get("message", "")))
        elif event.kind == GROUP_REUSED:
            for s in stages:
                self.state[s].update(status="reused", last=f"reused {short_digest(d.get('digest'))}")
        elif event.kind == GROUP_FINISHED:
            status = "done" if d.get("ok") else ("cancelled" if d.get("cancelled") else "failed")
            for s in stages:
                self.state[s].update(status=status, t1=event.time)
                if status == "done":
                    self.state[s]["last"] = short_digest(d.get("digest"))
                elif status == "failed":
                    self.state[s]["last"] = str(d.get("message", ""))

    def close(self) -> None:
        self.live.stop()
