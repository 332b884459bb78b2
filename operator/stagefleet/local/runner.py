"""Local mode's runner: the plan's groups as local `stagefleet-worker` processes, each in its own fresh
storage root (a stand-in for a fresh pod), started, retried and judged as the build-state core
(`stagefleet.buildstate`) says; results travel between groups through the registry by digest. It only
moves bytes between the core and the processes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagefleet.buildstate import outcome as buildoutcome
from stagefleet.buildstate import phases, ready, retries
from stagefleet.local.events import (
    BUILD_FINISHED,
    BUILD_STARTED,
    GROUP_FINISHED,
    GROUP_RETRYING,
    GROUP_REUSED,
    GROUP_STARTED,
    LOG,
    NOTE,
    Event,
    StageTracker,
    looks_like_result,
    parse_result,
)
from stagefleet.local.masking import Masker
from stagefleet.local.refs import repository_of, stage_repo
from stagefleet.local.shapes import GroupLike, PlanLike, needed_groups, unschedulable
from stagefleet.local.summary import GroupOutcome, Summary, summarize
from stagefleet.local.workerargs import BuildSettings, Stored, worker_argv

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
            wait = run.next_retry()
            if not tasks and wait is None:
                break
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
        self.by_id = {g.id: g for g in todo}
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
        progress = True
        while progress:
            progress = False
            for gid, held in list(self.held.items()):
                g = self.by_id[gid]
                verdict, why = consumed_check(g, held.result or {}, self.phases, self.upstream)
                if verdict == "hold":
                    continue
                del self.held[gid]
                progress = True
                if verdict == "mismatch":
                    events += self._failed(g, held, why, settings, build_error=False)
                    continue
                self.outcomes[gid] = held
                self.succeed(gid, f"{_result_repo(held, repo)}@{held.digest}" if held.digest else None)
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


def _result_repo(outcome: GroupOutcome, default: str) -> str:
    """The repository a worker's result names (where it pushed), else ``default``."""
    pushed = (outcome.result or {}).get("image")
    return repository_of(pushed) if isinstance(pushed, str) and pushed else default


def consumed_check(group: GroupLike, result: Mapping[str, Any], phases_now: Mapping[str, str],
                   upstream: Mapping[str, str]) -> tuple[str, str]:
    """Whether a group's successful result is accepted ("ok"), waits until an upstream it consumed is
    accepted itself ("hold"), or was built from other content than that upstream's accepted result
    ("mismatch", an infrastructure failure: retried), each with why.

    A worker started early pinned whatever digest the upstream's result tag named when it looked; its
    result says which (``upstreams``), and it must be the digest accepted for that upstream, as in the
    operator (`controller.status`)."""
    used = result.get("upstreams")
    used = used if isinstance(used, Mapping) else {}
    for stage, producer in group.consumes:
        if phases_now.get(producer) != phases.SUCCEEDED:
            return "hold", f"waits until group {producer}'s result is accepted"
        accepted = upstream.get(producer, "").rpartition("@")[2]
        took = used.get(stage)
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
