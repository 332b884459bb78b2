"""Local mode: run a build plan as local `stagefleet-worker` processes, one per group.

The same plan and the same worker as the operator, minus Kubernetes: each group gets its own fresh
storage root (a stand-in for a fresh pod), starts as soon as the groups it waits for have succeeded,
and hands its result to its consumers through the registry by digest.

Layout: pure pieces first (scheduling, references, worker arguments, events, formatting, summary), so
they are unit-tested without buildah; the asyncio runner at the bottom only moves bytes between them and
the worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import os
import re
import secrets as _secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from stagefleet.buildstate import outcome as buildoutcome
from stagefleet.buildstate import phases, ready, retries

# --------------------------------------------------------------------------------------------------
# Plan shapes (structural, so tests can use small fakes and the real `stagefleet.plan.Group` fits)
# --------------------------------------------------------------------------------------------------


class GroupLike(Protocol):
    """What local mode needs of a `stagefleet.plan.Group`."""

    @property
    def id(self) -> str: ...
    @property
    def stages(self) -> tuple[str, ...]: ...
    @property
    def after(self) -> tuple[str, ...]: ...
    @property
    def consumes(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def secrets(self) -> tuple[str, ...]: ...
    @property
    def ssh(self) -> tuple[str, ...]: ...
    @property
    def critical(self) -> bool: ...
    @property
    def weight(self) -> int: ...
    @property
    def wave(self) -> int: ...


class PlanLike(Protocol):
    """What local mode needs of a `stagefleet.plan.Plan`."""

    @property
    def groups(self) -> Sequence[GroupLike]: ...
    @property
    def critical_path(self) -> tuple[str, ...]: ...
    @property
    def final_group(self) -> str: ...


# --------------------------------------------------------------------------------------------------
# Scheduling (pure)
# --------------------------------------------------------------------------------------------------


def needed_groups(groups: Sequence[GroupLike], final_group: str, stored: Set[str]) -> set[str]:
    """The groups to build: the final one and what it waits for, transitively, except stored results
    (`Stored`), which need nothing built. A stored final group needs nothing at all."""
    by_id = {g.id: g for g in groups}
    needed: set[str] = set()
    pending = [final_group]
    while pending:
        gid = pending.pop()
        if gid in needed or gid in stored or gid not in by_id:
            continue
        needed.add(gid)
        pending.extend(by_id[gid].after)
    return needed


def unschedulable(groups: Sequence[GroupLike], succeeded: Set[str]) -> list[str]:
    """Groups that can never start because something they wait for is not in the plan."""
    ids = {g.id for g in groups}
    return [g.id for g in groups if g.id not in succeeded and any(a not in ids for a in g.after)]


# --------------------------------------------------------------------------------------------------
# References and worker arguments (pure)
# --------------------------------------------------------------------------------------------------

_LOOPBACK = ("127.", "localhost", "[::1]")


def new_build_id(now: float | None = None) -> str:
    """A sortable, registry-safe id: UTC time plus randomness (`20261127-215800-a1b2c3`)."""
    stamp = _dt.datetime.fromtimestamp(time.time() if now is None else now, tz=_dt.UTC)
    return f"{stamp:%Y%m%d-%H%M%S}-{_secrets.token_hex(3)}"


def stage_repo(registry: str, build_id: str) -> str:
    """Where intermediate group results go: one repository per build, one tag per group."""
    return f"{registry}/stagefleet/{build_id}/stages"


def default_tag(registry: str, build_id: str) -> str:
    """The final image reference when the user names none."""
    return f"{registry}/stagefleet/local:{build_id}"


def ref_host(ref: str) -> str | None:
    """The registry host of a reference, or None for a Docker Hub short name."""
    first, sep, _ = ref.partition("/")
    if not sep:
        return None
    if "." in first or ":" in first or first == "localhost":
        return first
    return None


def repository_of(ref: str) -> str:
    """A reference without its tag and digest (`host:5000/a/b:t@sha256:..` → `host:5000/a/b`)."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def is_loopback(host: str) -> bool:
    return host.startswith(_LOOPBACK)


def insecure_hosts(refs: Iterable[str | None]) -> list[str]:
    """Loopback registries among `refs`: plain HTTP, as the throwaway registry and tests use."""
    hosts = set()
    for r in refs:
        host = (r if "/" not in r else ref_host(r)) if r else None
        if host and is_loopback(host):
            hosts.add(host)
    return sorted(hosts)


def parse_kv(spec: str, what: str) -> tuple[str, str]:
    """`K=V` → (K, V); the key must not be empty."""
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise ValueError(f"{what} must look like KEY=VALUE, got {spec!r}")
    return key, value


def parse_secret(spec: str) -> tuple[str, str]:
    """`id=ID,src=FILE` (also `source=`, `type=file`; a bare `ID` means the file `ID`) → (ID, FILE)."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        k, sep, v = part.partition("=")
        if not sep:
            if len(spec.split(",")) == 1:
                return k, k
            raise ValueError(f"--secret: expected id=ID,src=FILE, got {spec!r}")
        fields[k.strip()] = v
    if fields.get("type", "file") != "file":
        raise ValueError(f"--secret: only type=file is supported, got {spec!r}")
    sid = fields.get("id")
    src = fields.get("src", fields.get("source"))
    if not sid or not src:
        raise ValueError(f"--secret: expected id=ID,src=FILE, got {spec!r}")
    return sid, src


@dataclass(frozen=True)
class BuildSettings:
    """Everything about one local build that does not change while it runs."""

    context: Path
    dockerfile: Path
    registry: str
    build_id: str
    tags: tuple[str, ...]
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)      # id → file
    ssh: Mapping[str, str] = field(default_factory=dict)          # id → key file
    cache_repo: str | None = None
    insecure: tuple[str, ...] = ()
    parallel: int = 1
    worker: Sequence[str] = ("stagefleet-worker",)
    platform: str | None = None
    no_cache: bool = False
    keys: Mapping[str, str] = field(default_factory=dict)   # stage → content key (`stagekey`)
    pins: Mapping[str, str] = field(default_factory=dict)   # image → digest the keys were computed from
    retries: int = 2              # more attempts for a group that failed through no fault of the build
    backoff_base: float = 2.0     # seconds before the first retry (doubling, `buildstate.retries`)
    early_start: bool = True      # with workers to spare, start the next wave while its upstreams build

    def push_refs(self, group: GroupLike, final_group: str) -> list[str]:
        """The final group goes to every tag; any other to the build's stage repository."""
        if group.id == final_group:
            return list(self.tags)
        return [result_tag(self, group.id)]


def result_tag(settings: BuildSettings, group_id: str) -> str:
    """Where a (non-final) group pushes its result, and where a consumer started early waits for it. Every
    attempt pushes there: a consumer waiting for a retried group takes the attempt that succeeded."""
    return f"{stage_repo(settings.registry, settings.build_id)}:{group_id}"


def worker_argv(settings: BuildSettings, group: GroupLike, *, final_group: str,
                upstream: Mapping[str, str], storage_root: Path, result_file: Path) -> list[str]:
    """The `stagefleet-worker` command line for one group (see docs/contracts.md).

    `upstream` maps a producing group id to the `REPO@sha256:..` it pushed; a producer missing from it is
    still building (the group starts early): its worker waits for the producer's result tag
    (``--upstream-wait``). Only the secrets and ssh ids the group's own stages use are passed, as the
    operator mounts only those into a pod.
    """
    argv = [*settings.worker, "--context", str(settings.context)]
    try:
        rel = settings.dockerfile.resolve().relative_to(settings.context.resolve())
        argv += ["--dockerfile", str(rel)]
    except ValueError:
        argv += ["--inline-dockerfile", str(settings.dockerfile)]
    argv += ["--group", group.id, "--target", group.stages[-1]]
    for s in group.stages:
        argv += ["--stage", s]
    for stage_name, producer in group.consumes:
        if producer in upstream:
            argv += ["--upstream", f"{stage_name}={upstream[producer]}"]
        else:
            argv += ["--upstream-wait", f"{stage_name}={result_tag(settings, producer)}"]
    for sid in group.secrets:
        if sid in settings.secrets:
            argv += ["--secret", f"id={sid},src={settings.secrets[sid]}"]
    for sid in group.ssh:
        if sid in settings.ssh:
            argv += ["--ssh", f"{sid}={settings.ssh[sid]}"]
    for k, v in settings.build_args.items():
        argv += ["--build-arg", f"{k}={v}"]
    if settings.platform:
        argv += ["--platform", settings.platform]
    if settings.cache_repo:
        argv += ["--cache-repo", settings.cache_repo, "--mount-cache-repo", settings.cache_repo]
    if settings.no_cache:
        argv.append("--no-cache")
    for ref in settings.push_refs(group, final_group):
        argv += ["--push", ref]
    argv += key_args(settings, group.stages[-1])
    for host in settings.insecure:
        argv += ["--insecure-registry", host]
    argv += ["--storage-root", str(storage_root), "--result-file", str(result_file)]
    return argv


def key_args(settings: BuildSettings, target: str) -> list[str]:
    """``--stage-key`` and ``--pin-image`` for a keyed group, as the operator's pods get them: the worker
    stores its result under the key in the cache repository, built from the digests the key was
    computed from (an image the Dockerfile names by digest pins itself)."""
    from stagefleet.stagekey import worker_args  # (here: stagekey imports the Dockerfile parser)

    key = settings.keys.get(target)
    if not key or not settings.cache_repo:
        return []
    return worker_args(key, settings.pins)


@dataclass(frozen=True)
class Stored:
    """A group's result found under its key tag at plan time: no worker runs for it, its consumers build
    from ``image`` by ``digest``."""

    image: str   # CACHE-REPO:stage-KEY
    digest: str

    @property
    def ref(self) -> str:
        """What consumers get as ``--upstream STAGE=REF``: the repository by digest."""
        return f"{repository_of(self.image)}@{self.digest}"


# --------------------------------------------------------------------------------------------------
# Secrets in output (pure)
# --------------------------------------------------------------------------------------------------


class Masker:
    """Replaces secret values in text before anything is printed — defence in depth on top of the
    worker's own scrubbing, so a `RUN cat /run/secrets/x` never reaches the terminal or a CI log."""

    MASK = "****"

    def __init__(self, values: Iterable[str]) -> None:
        needles: set[str] = set()
        for v in values:
            if v.strip():
                needles.add(v.strip())
            needles.update(line.strip() for line in v.splitlines() if len(line.strip()) >= 4)
        self._needles = sorted(needles, key=len, reverse=True)

    @classmethod
    def from_files(cls, files: Iterable[str | Path]) -> Masker:
        values = []
        for f in files:
            with contextlib.suppress(OSError):
                values.append(Path(f).read_text(errors="replace"))
        return cls(values)

    def __call__(self, text: str) -> str:
        for n in self._needles:
            if n in text:
                text = text.replace(n, self.MASK)
        return text


# --------------------------------------------------------------------------------------------------
# Events and their formatting (pure)
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Outcomes and the summary (pure)
# --------------------------------------------------------------------------------------------------


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
    group_seconds: float      # sum of the groups' run windows: what one worker after another would take
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
        group_seconds=sum(o.seconds for o in outcomes.values()),
        stage_seconds=sum(stage_secs.values()),
    )


def short_digest(digest: str | None) -> str:
    if not digest:
        return "-"
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest


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


# --------------------------------------------------------------------------------------------------
# Progress renderers
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# The runner (thin: processes and pipes)
# --------------------------------------------------------------------------------------------------

STOP_GRACE_SECONDS = 10.0


@dataclass
class BuildResult:
    ok: bool
    outcomes: dict[str, GroupOutcome]
    summary: Summary
    image: str | None = None
    digest: str | None = None
    failed_group: str | None = None
    message: str | None = None
    exit_code: int = 0


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    """TERM the worker's whole process group (buildah and its children), KILL after a grace period."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def _run_group(settings: BuildSettings, plan: PlanLike, group: GroupLike, upstream: Mapping[str, str],
                     emit: Callable[[Event], None], mask: Masker, workdir: Path,
                     attempt: int = 1) -> GroupOutcome:
    """Run one worker process for `group` in a fresh storage root and collect its outcome."""
    root = Path(tempfile.mkdtemp(prefix=f"{group.id}-{attempt}-", dir=workdir))
    storage, result_file = root / "storage", root / "result.json"
    argv = worker_argv(settings, group, final_group=plan.final_group, upstream=upstream,
                       storage_root=storage, result_file=result_file)
    tracker = StageTracker(group.stages)
    last_stdout: list[str] = []
    stderr_tail: list[str] = []
    started = time.time()
    waits = [stage for stage, producer in group.consumes if producer not in upstream]
    emit(Event(GROUP_STARTED, started, group.id, group.stages[0],
               {"stages": list(group.stages), "after": list(group.after), "attempt": attempt,
                "waitsFor": waits}))
    proc: asyncio.subprocess.Process | None = None

    async def pump(stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        while True:
            raw = await stream.readline()
            if not raw:
                return
            for piece in raw.decode(errors="replace").rstrip("\r\n").split("\r"):
                text = mask(piece.rstrip())
                if not text:
                    continue
                if name == "stdout" and looks_like_result(text):
                    last_stdout[:] = [text]
                    continue
                if name == "stderr":
                    stderr_tail[:] = [*stderr_tail[-19:], text]
                stage, shown = tracker.feed(text)
                emit(Event(LOG, time.time(), group.id, stage, {"stream": name, "line": shown}))

    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=1 << 20)
        except OSError as e:
            return GroupOutcome(group.id, tuple(group.stages), started, time.time(), None,
                                error=f"cannot start {argv[0]}: {e}")
        await asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
        code = await proc.wait()
        result = parse_result(last_stdout[0] if last_stdout else None, result_file)
        if result is not None:
            result = json.loads(mask(json.dumps(result)))
        outcome = GroupOutcome(group.id, tuple(group.stages), started, time.time(), code, result)
        if code != 0 and result is None:
            outcome.error = f"worker exited with status {code}" + (
                f": {stderr_tail[-1]}" if stderr_tail else "")
        elif code == 0 and not outcome.ok:
            outcome.error = "worker exited 0 without a successful result"
        return outcome
    except asyncio.CancelledError:
        if proc is not None:
            await asyncio.shield(_stop_process(proc))
        raise
    finally:
        await asyncio.to_thread(_cleanup_root, root, storage)


def _cleanup_root(root: Path, storage: Path) -> None:
    """Remove a group's storage root the way a pod's emptyDir goes: containers, mounts, then files."""
    from stagefleet import buildenv

    if storage.exists():
        env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(buildenv.BuildPaths(storage).storage_conf))
        buildenv.cleanup(storage, env)
    shutil.rmtree(root, ignore_errors=True)


async def run_plan(plan: PlanLike, settings: BuildSettings, emit: Callable[[Event], None],
                   mask: Masker | None = None, workdir: Path | None = None, *,
                   stored: Mapping[str, Stored] | None = None, notes: Sequence[str] = ()) -> BuildResult:
    """Run every group of `plan` that is needed, each as soon as the build-state core (`buildstate`) says,
    at most `settings.parallel` at once: ready groups first, then (``early_start``) the next wave, whose
    workers wait for their upstreams' result tags.

    A group with a `stored` result runs no worker (nor do the groups only it needed); a stored final
    group (its output tags already written) runs none at all. `notes` are shown once the build started.
    An attempt that fails through no fault of the build is retried (`retries.judge`). A group that fails
    for good stops the workers still running (their groups are reported as cancelled) and fails the build
    with that group's message.
    """
    mask = mask or Masker([])
    stored = stored or {}
    own_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix=f"stagefleet-{settings.build_id}-")) if workdir is None else workdir
    by_id = {g.id: g for g in plan.groups}
    needed = needed_groups(plan.groups, plan.final_group, set(stored))
    todo = [g for g in plan.groups if g.id in needed]
    run = _Run(todo)
    tasks: dict[str, asyncio.Task[GroupOutcome]] = {}
    stage_ref_repo = stage_repo(settings.registry, settings.build_id)
    t0 = time.time()
    emit(Event(BUILD_STARTED, t0, data={
        "buildId": settings.build_id, "groups": len(plan.groups), "target": by_id[plan.final_group].stages[-1]
        if plan.final_group in by_id else None, "registry": settings.registry, "parallel": settings.parallel,
        "tags": list(settings.tags), "criticalPath": list(plan.critical_path),
        "plan": [{"group": g.id, "stages": list(g.stages), "after": list(g.after)} for g in plan.groups],
        "reused": sorted(stored), "cacheRepo": settings.cache_repo}))
    for note in notes:
        emit(Event(NOTE, time.time(), data={"message": mask(note)}))
    run.outcomes.update(_take_stored(plan, stored, emit))
    for gid, s in stored.items():
        run.succeed(gid, s.ref)
    try:
        while True:
            # (again after starting: a started worker is Running at once, which may let the next wave start)
            while starts := run.to_start(settings, len(tasks)):
                for g in starts:
                    tasks[g.id] = asyncio.create_task(_run_group(
                        settings, plan, g, dict(run.upstream), emit, mask, work, run.attempts[g.id]))
            if not tasks and run.next_retry() is None:
                break
            wait = run.next_retry()
            if not tasks:
                await asyncio.sleep(max(0.0, wait or 0.0))
                continue
            done, _ = await asyncio.wait(tasks.values(), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for gid in [g for g, t in tasks.items() if t in done]:
                outcome = tasks.pop(gid).result()
                for event in run.finished(by_id[gid], outcome, stage_ref_repo, settings):
                    emit(event)
            if run.failed_group is not None and (tasks or run.held):
                for t in tasks.values():
                    t.cancel()
                for gid, t in list(tasks.items()):
                    try:
                        run.outcomes[gid] = await t  # it finished just before it could be stopped
                    except asyncio.CancelledError:
                        run.outcomes[gid] = _stopped(by_id[gid], run.started.get(gid, time.time()))
                    _emit_finished(emit, run.outcomes[gid])
                for gid in list(run.held):
                    run.outcomes[gid] = _stopped(by_id[gid], run.held.pop(gid).started)
                    _emit_finished(emit, run.outcomes[gid])
                tasks.clear()
            if run.failed_group is not None:
                break
    finally:
        for t in tasks.values():
            t.cancel()
        for t in tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)
    return _finish(plan, settings, run, emit, mask, time.time() - t0)


def _stopped(group: GroupLike, started: float) -> GroupOutcome:
    return GroupOutcome(group.id, tuple(group.stages), started, time.time(), None,
                        error="stopped: another group failed", cancelled=True)


class _Run:
    """Local mode's observations of one run, in the core's terms: each group's phase, attempts and retry
    time; what `buildstate` decides from them is applied here and nothing else is."""

    def __init__(self, todo: Sequence[GroupLike]) -> None:
        self.todo = list(todo)
        self.phases: dict[str, str] = {g.id: phases.WAITING for g in todo}
        self.attempts: dict[str, int] = {g.id: 0 for g in todo}
        self.retry_at: dict[str, _dt.datetime] = {}
        self.started: dict[str, float] = {}
        self.outcomes: dict[str, GroupOutcome] = {}
        self.upstream: dict[str, str] = {}       # group id → REPO@DIGEST of its accepted result
        self.held: dict[str, GroupOutcome] = {}  # built, but an upstream it consumed is not accepted yet
        self.failed_group: str | None = None

    def succeed(self, gid: str, ref: str | None) -> None:
        self.phases[gid] = phases.SUCCEEDED
        if ref:
            self.upstream[gid] = ref

    def to_start(self, settings: BuildSettings, running: int) -> list[GroupLike]:
        if self.failed_group is not None:
            return []
        now = _dt.datetime.now(_dt.UTC)
        due = {gid for gid, phase in self.phases.items()
               if ready.is_due(phase, self.retry_at.get(gid), now)}
        starts, _ = ready.to_start(self.todo, self.phases, due, max(settings.parallel, 1) - running,
                                   early_start=settings.early_start)
        for g in starts:
            self.attempts[g.id] += 1
            self.phases[g.id] = phases.RUNNING  # a process at work (early: waiting for its upstreams)
            self.started[g.id] = time.time()
            self.retry_at.pop(g.id, None)
        return starts

    def next_retry(self) -> float | None:
        """Seconds until the next retry is due; None when no group waits for one."""
        waits = [at for gid, at in self.retry_at.items() if self.phases.get(gid) == phases.RETRYING]
        if not waits:
            return None
        return max(0.0, (min(waits) - _dt.datetime.now(_dt.UTC)).total_seconds())

    def finished(self, group: GroupLike, outcome: GroupOutcome, repo: str,
                 settings: BuildSettings) -> list[Event]:
        """Judge a worker's outcome (and any held result it unblocks); the events to emit. ``repo``: the
        build's stage repository, for a result that does not name where it was pushed."""
        events: list[Event] = []
        if outcome.ok:
            self.held[group.id] = outcome
        else:
            events += self._failed(group, outcome, outcome.message(), settings)
        by_id = {g.id: g for g in self.todo}
        progress = True
        while progress:
            progress = False
            for gid, held in list(self.held.items()):
                g = by_id[gid]
                verdict, why = consumed_check(g, held.result or {}, self.phases, self.upstream)
                if verdict == "hold":
                    continue
                del self.held[gid]
                progress = True
                if verdict == "mismatch":
                    events += self._failed(g, held, why, settings, build_error=False)
                    continue
                self.outcomes[gid] = held
                self.succeed(gid, f"{stage_repo_of(held) or repo}@{held.digest}" if held.digest else None)
                events.append(_finished_event(held))
        return events

    def _failed(self, group: GroupLike, outcome: GroupOutcome, message: str, settings: BuildSettings,
                build_error: bool | None = None) -> list[Event]:
        code = outcome.exit_code
        if build_error is None:
            # A worker that cannot be started at all (no exit code, not stopped) fails the same way again.
            build_error = retries.is_build_error(code) or (code is None and not outcome.cancelled)
        now = _dt.datetime.now(_dt.UTC)
        verdict = retries.judge(attempts=self.attempts[group.id], restarts=0, retries=settings.retries,
                                build_error=build_error, exit_code=code, message=message, failed_at=now,
                                backoff_base=settings.backoff_base)
        if verdict.retry_at is not None:
            self.phases[group.id] = phases.RETRYING
            self.retry_at[group.id] = verdict.retry_at
            return [Event(GROUP_RETRYING, time.time(), group.id, group.stages[-1], {
                "attempt": self.attempts[group.id], "message": verdict.message,
                "retryIn": round((verdict.retry_at - now).total_seconds(), 3)})]
        self.phases[group.id] = phases.FAILED
        self.outcomes[group.id] = outcome
        if outcome.error is None and message != outcome.message():
            outcome.error = message
        standing = buildoutcome.outcome([g.id for g in self.todo], self.phases)
        self.failed_group = self.failed_group or standing.failed_group
        return [_finished_event(outcome)]


def stage_repo_of(outcome: GroupOutcome) -> str:
    pushed = (outcome.result or {}).get("image")
    return repository_of(pushed) if isinstance(pushed, str) and pushed else ""


def consumed_check(group: GroupLike, result: Mapping[str, Any], phases_now: Mapping[str, str],
                   upstream: Mapping[str, str]) -> tuple[str, str]:
    """Whether a group's successful result is accepted ("ok"), waits until an upstream it consumed is
    accepted itself ("hold"), or was built from other content than that upstream's accepted result
    ("mismatch", an infrastructure failure: retried), each with why.

    A worker started early pinned whatever digest the upstream's result tag named when it looked; its
    result says which (``upstreams``), and it must be the digest accepted for that upstream, as in the
    operator (`controller.status`)."""
    used = result.get("upstreams") if isinstance(result.get("upstreams"), Mapping) else {}
    for stage, producer in group.consumes:
        if phases_now.get(producer) != phases.SUCCEEDED:
            return "hold", f"waits until group {producer}'s result is accepted"
        accepted = upstream.get(producer, "").rpartition("@")[2]
        took = used.get(stage) if isinstance(used, Mapping) else None
        if took is not None and took != accepted:
            return "mismatch", (f"upstream digest mismatch: consumed {stage}@{took}, but group {producer} "
                                f"pushed {accepted}")
    return "ok", ""


def _finish(plan: PlanLike, settings: BuildSettings, run: _Run, emit: Callable[[Event], None], mask: Masker,
            wall: float) -> BuildResult:
    """The build's result from the groups' outcomes, announced."""
    outcomes = run.outcomes
    summary = summarize(plan, outcomes, wall)
    final = outcomes.get(plan.final_group)
    first_failure = run.failed_group
    if first_failure is None and final is not None and final.ok:
        result = BuildResult(True, outcomes, summary, image=settings.tags[0] if settings.tags else None,
                             digest=final.digest)
    else:
        if first_failure is not None:
            bad = outcomes[first_failure]
            stage = None
            err = bad.result.get("error") if bad.result else None
            if isinstance(err, Mapping) and err.get("stage"):
                stage = str(err["stage"])
            where = f"stage {stage}" if stage else f"stage {', '.join(bad.stages)}"
            attempts = run.attempts.get(first_failure, 1)
            after = f" (after {attempts} attempts)" if attempts > 1 else ""
            message = f"{where} (group {first_failure}) failed: {bad.message()}{after}"
            code = bad.exit_code if bad.exit_code and 0 < bad.exit_code < 256 else 1
        else:
            stuck = unschedulable(plan.groups, {g for g, p in run.phases.items() if p == phases.SUCCEEDED})
            message = f"groups never became ready: {', '.join(stuck) or '?'}"
            code = 1
        result = BuildResult(False, outcomes, summary, failed_group=first_failure, message=mask(message),
                             exit_code=code)
    emit(Event(BUILD_FINISHED, time.time(), data={
        "ok": result.ok, "image": result.image, "digest": result.digest, "tags": list(settings.tags),
        "message": result.message, "failedGroup": result.failed_group,
        "wallSeconds": round(summary.wall_seconds, 3), "groupSeconds": round(summary.group_seconds, 3),
        "stageSeconds": round(summary.stage_seconds, 3), "speedup": round(summary.speedup, 3),
        "criticalPath": list(summary.critical_path), "criticalSeconds": round(summary.critical_seconds, 3),
        "stages": [{"name": r.stage, "group": r.group, "status": r.status, "seconds": r.seconds,
                    "cachedSteps": r.cached_steps, "steps": r.steps, "digest": r.digest}
                   for r in summary.rows]}))
    return result


def _take_stored(plan: PlanLike, stored: Mapping[str, Stored],
                 emit: Callable[[Event], None]) -> dict[str, GroupOutcome]:
    """The outcomes of the groups whose results are stored, each announced as reused."""
    out: dict[str, GroupOutcome] = {}
    for g in plan.groups:
        if g.id in stored:
            o = out[g.id] = GroupOutcome.from_stored(g, stored[g.id], time.time())
            emit(Event(GROUP_REUSED, o.finished, g.id, g.stages[-1], {
                "stages": list(g.stages), "image": stored[g.id].image, "digest": stored[g.id].digest}))
    return out


def _emit_finished(emit: Callable[[Event], None], o: GroupOutcome) -> None:
    emit(_finished_event(o))


def _finished_event(o: GroupOutcome) -> Event:
    r = o.result or {}
    return Event(GROUP_FINISHED, o.finished, o.group, o.stages[-1], {
        "ok": o.ok, "cancelled": o.cancelled, "exitCode": o.exit_code, "seconds": round(o.seconds, 3),
        "started": round(o.started, 6), "image": r.get("image"), "digest": o.digest,
        "cachedSteps": r.get("cachedSteps"), "steps": r.get("steps"),
        "message": None if o.ok else o.message()})
