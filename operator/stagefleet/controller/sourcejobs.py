"""Resolving sources and polling git revisions, each in a thread of its own: the jobs of every build, the
slots they share, and the git credentials they use. Apart from the pass because a job outlives it: the
pass that needs a source starts its job and returns, and the job wakes the build when it ends."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from stagefleet.controller import buildphase, clock, polling, report, runs
from stagefleet.controller import registry as reg
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube
from stagefleet.controller.podspec import KNOWN_HOSTS_KEY, USERNAME_KEY, BuildRef
from stagefleet.controller.source import (
    GitAuth,
    Resolved,
    SourceError,
    SourceTimeout,
    current_commit,
    redact,
    resolve,
)
from stagefleet.controller.sourceslots import SourceSlots
from stagefleet.controller.spec import ImageBuildSpec, SpecError, parse_spec
from stagefleet.controller.writes import StatusWriter, log_fields
from stagefleet.gitauth import is_http_url

log = logging.getLogger("stagefleet.operator")


@dataclass(eq=False)
class _Job:
    """A build's job for one run (its uid and run number), ending in a thread of its own."""

    uid: str
    run: int
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    @property
    def ident(self) -> tuple[str, int]:
        return self.uid, self.run


@dataclass(eq=False)
class SourceJob(_Job):
    """One ImageBuild run's source being resolved in a thread of its own.

    A black-holed git host (or registry, for spec.source.oci) must hold neither a reconcile thread (eight
    of them stall every tenant) nor the event loop: the pass that needs the source starts the job and
    returns (status Planning, "resolving source"); the job ends within the source timeout and triggers the
    build's next pass, which plans with its result or fails naming spec.source.git.url or .oci.image.
    """

    resolved: Resolved | None = None
    timed_out: bool = False
    thread: threading.Thread | None = None
    started: threading.Event = field(default_factory=threading.Event)  # it holds a slot and resolves
    said_queued: bool = False  # a status said it waits for a slot: say when it starts


@dataclass(eq=False)
class PollJob(_Job):
    """One look at a finished build's git revision (`polling`), in a thread of its own like `SourceJob`."""

    commit: str | None = None


J = TypeVar("J", bound=_Job)


class JobTable(Generic[J]):
    """Each build's job of one kind, for its current run. Jobs end in threads of their own: a lock."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], J] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._jobs)

    def keys(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self._jobs)

    def current(self, key: tuple[str, str], ident: tuple[str, int]) -> J | None:
        """The build's job for run ``ident`` (uid, run), if one was started; a stale one is dropped."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.ident != ident:
                del self._jobs[key]
                job = None
            return job

    def put(self, key: tuple[str, str], job: J) -> None:
        with self._lock:
            self._jobs[key] = job

    def drop(self, key: tuple[str, str], job: J | None = None) -> None:
        """Forget the build's job (only if it still is ``job``, when given)."""
        with self._lock:
            if job is None or self._jobs.get(key) is job:
                self._jobs.pop(key, None)


class SourceJobs:
    """The source and poll jobs of every build. ``wake`` triggers a build's pass from a job's thread (when
    the job ends, or gets the slot its status said it waits for)."""

    def __init__(
        self, kube: Kube, config: OperatorConfig, writer: StatusWriter, wake: Callable[[str, str], None]
    ) -> None:
        self.kube = kube
        self.config = config
        self.writer = writer
        self._wake = wake
        self.jobs: JobTable[SourceJob] = JobTable()  # sources being resolved
        self.polls: JobTable[PollJob] = JobTable()  # git revisions being looked up
        self.slots = SourceSlots(config.source_resolutions, config.source_resolutions_per_namespace)

    def forget(self, key: tuple[str, str]) -> None:
        self.jobs.drop(key)  # its thread ends by its own deadline; the result is dropped
        self.polls.drop(key)

    def git_auth(
        self, ib: dict[str, Any], build: BuildRef, spec: ImageBuildSpec, status: dict[str, Any], now: datetime
    ) -> GitAuth | dict[str, Any]:
        """The credentials of spec.source.git.secretRef, or the Stalled status (written) while a key is
        missing: the Secret, its credential key, and for ssh its known_hosts (host keys are checked strictly
        unless spec.source.git.insecureIgnoreHostKey)."""
        git = spec.source.git
        assert git is not None
        if git.secret is None:
            return GitAuth(insecure_ignore_host_key=git.insecure_ignore_host_key)
        ref = git.secret
        keys = self.kube.secret_keys(build.namespace, ref.name)
        reason, msg = "SecretNotFound", ""
        if keys is None or ref.key not in keys:
            msg = (
                f'waiting for Secret "{ref.name}" key "{ref.key}" (spec.source.git.secretRef): '
                + ("not found in the namespace" if keys is None else "the Secret has no such key")
            )
        elif git.ssh and not git.insecure_ignore_host_key and KNOWN_HOSTS_KEY not in keys:
            reason = "KnownHostsMissing"
            msg = (
                f'waiting for Secret "{ref.name}" key "{KNOWN_HOSTS_KEY}" (spec.source.git.secretRef): ssh '
                "host keys are checked strictly; add the server's host keys (ssh-keyscan HOST) under "
                f'"{KNOWN_HOSTS_KEY}", or set spec.source.git.insecureIgnoreHostKey: true to accept any'
            )
        else:
            auth = self._read_git_auth(build, spec, keys)
            if auth is not None:
                return auth
            msg = f'waiting for Secret "{ref.name}" key "{ref.key}" (spec.source.git.secretRef): not found'
        stalled = report.progress_status(
            generation=build.generation,
            run=build.run,
            phase=buildphase.PENDING,
            reason=reason,
            message=msg,
            old=status,
            now=now,
            stalled=True,
        )
        if self.writer.write(ib, status, stalled):
            self.writer.event(ib, "Warning", reason, msg)
        return stalled

    def poll(
        self, ib: dict[str, Any], build: BuildRef, spec: ImageBuildSpec, status: dict[str, Any], now: datetime
    ) -> float | tuple[dict[str, Any], BuildRef] | None:
        """A finished git build: ask for its revision's commit when due (`polling`). Returns when to look
        again, or (the status as written, the new run) when the commit moved; None: never."""
        git = spec.source.git
        assert git is not None
        meta = ib["metadata"]
        due = polling.due_in(status, meta, git.poll_seconds, now)
        if due is None or due > 0:
            return due
        key = (build.namespace, build.name)
        job = self.polls.current(key, (build.uid, build.generation))
        if job is None:
            auth = self._git_auth_quietly(build, spec)
            job = PollJob(build.uid, build.generation)
            self.polls.put(key, job)
            threading.Thread(target=self._poll_job, args=(job, build, spec, auth), daemon=True,
                             name=f"poll-{build.namespace}/{build.name}").start()
        if not job.done.is_set():
            return self.config.source_timeout + 5.0  # the job wakes the build; this is a safety net
        self.polls.drop(key, job)
        answered = polling.answered(status, meta, clock.fmt_time(now))
        if job.error is not None:
            self.writer.write(ib, status, answered)
            self.writer.event(
                ib, "Warning", "PollFailed", f"{job.error}; asking again in {git.poll_seconds or 0}s"
            )
            return float(git.poll_seconds) if git.poll_seconds else None
        old = polling.commit_of(status)
        self.writer.write(ib, status, answered)
        if job.commit == old or build.run is None:
            return float(git.poll_seconds) if git.poll_seconds else None
        nxt = runs.following(status, build.run)
        self.writer.event(
            ib, "Normal", "RunStarted",
            f"spec.source.git.revision {git.revision!r} moved from {(old or '?')[:12]} to "
            f"{(job.commit or '?')[:12]}: run {nxt.number} starts",
        )
        return answered, BuildRef(build.name, build.namespace, build.uid, nxt.number, nxt)

    def retry(
        self, ib: dict[str, Any], build: BuildRef, status: dict[str, Any], now: datetime
    ) -> float | tuple[dict[str, Any], BuildRef] | None:
        """A run that failed to resolve its git source, with a pollInterval: a new run tries again when the
        interval passed (or at once on a new stagefleet.io/resolve value), as a GitOps source keeps trying.
        Returns when to look again, (the status as written, the new run), or None (never)."""
        try:
            spec = parse_spec(ib.get("spec"))
        except SpecError:
            return None
        git = spec.source.git
        meta = ib["metadata"]
        if git is None or build.run is None:
            return None
        due = polling.retry_in(status, meta, git.poll_seconds, now)
        if due is None or due > 0:
            return due
        nxt = runs.following(status, build.run)
        reason = (status.get("failure") or {}).get("reason")
        answered = polling.answered(status, meta, clock.fmt_time(now))
        self.writer.write(ib, status, answered)  # (the resolve request it answers is not asked again)
        self.writer.event(ib, "Normal", "RunStarted",
                    f"the last run's source was not resolved ({reason}): run {nxt.number} tries again")
        return answered, BuildRef(build.name, build.namespace, build.uid, nxt.number, nxt)

    def _git_auth_quietly(self, build: BuildRef, spec: ImageBuildSpec) -> GitAuth:
        """The git credentials for a poll, or none when the Secret is missing (the poll then fails and
        says so; a finished build's status is not turned into a wait for the Secret)."""
        git = spec.source.git
        assert git is not None
        if git.secret is None:
            return GitAuth(insecure_ignore_host_key=git.insecure_ignore_host_key)
        keys = self.kube.secret_keys(build.namespace, git.secret.name)
        auth = self._read_git_auth(build, spec, keys) if keys is not None else None
        return auth or GitAuth(insecure_ignore_host_key=git.insecure_ignore_host_key)

    def _read_git_auth(
        self, build: BuildRef, spec: ImageBuildSpec, keys: Collection[str]
    ) -> GitAuth | None:
        """The credentials spec.source.git.secretRef holds (``keys``: its Secret's keys); None when its
        credential key cannot be read."""
        git = spec.source.git
        assert git is not None and git.secret is not None
        ref = git.secret
        value = self.kube.read_secret_value(build.namespace, ref.name, ref.key)
        if value is None:
            return None
        if git.ssh:
            known = (
                None
                if git.insecure_ignore_host_key
                else self.kube.read_secret_value(build.namespace, ref.name, KNOWN_HOSTS_KEY)
            )
            return GitAuth(
                ssh_key=value,
                known_hosts=known if known is not None else b"",
                insecure_ignore_host_key=git.insecure_ignore_host_key,
            )
        if is_http_url(git.url):
            user = None
            if USERNAME_KEY in keys:
                user = self.kube.read_secret_value(build.namespace, ref.name, USERNAME_KEY)
            return GitAuth(username=user, password=value)
        return GitAuth()

    def _poll_job(self, job: PollJob, build: BuildRef, spec: ImageBuildSpec, auth: GitAuth) -> None:
        """In the job's thread: one ``git ls-remote`` within the source timeout, in a source slot."""
        try:
            with self.slots.slot(build.namespace):
                job.commit = current_commit(spec, auth=auth, timeout=self.config.source_timeout)
        except SourceError as e:
            job.error = str(e)
        except Exception as e:  # never leave a build waiting for a job that died
            log.exception("polling the source of %s/%s failed", build.namespace, build.name)
            job.error = f"polling the source failed: {type(e).__name__}"
        finally:
            job.done.set()
            self._wake(build.namespace, build.name)

    def job(self, build: BuildRef) -> SourceJob | None:
        """The job resolving this generation's source, if one was started (a stale one is dropped)."""
        return self.jobs.current((build.namespace, build.name), (build.uid, build.generation))

    def start(
        self, build: BuildRef, spec: ImageBuildSpec, auth: GitAuth | reg.Registry
    ) -> SourceJob:
        job = SourceJob(build.uid, build.generation)
        job.thread = threading.Thread(
            target=self._resolve_job,
            args=(job, build, spec, auth),
            name=f"source-{build.namespace}/{build.name}",
            daemon=True,
        )
        self.jobs.put((build.namespace, build.name), job)
        job.thread.start()
        return job

    def waiting(self, build: BuildRef, spec: ImageBuildSpec, job: SourceJob) -> str:
        """What the Planning status says while ``job`` has not ended: it waits for a source slot (then the
        job wakes the build when it gets one, to say so), or it resolves."""
        queued = not job.started.is_set() and self.slots.would_wait(build.namespace)
        if queued:
            job.said_queued = True
            busy = self.slots.busy()
            return (
                f"waiting to resolve {redact(spec.source.where)}: "
                f"{busy.get(build.namespace, 0)} source(s) of this namespace resolving (at most "
                f"{self.slots.per_namespace}), {sum(busy.values())} in all (at most "
                f"{self.slots.total})"
            )
        return (
            f"resolving source: {redact(spec.source.where)} "
            f"(gives up after {self.config.source_timeout:g}s)"
        )

    def take(self, build: BuildRef, job: SourceJob) -> None:
        """``job`` has ended and its pass uses the result: the build no longer has it."""
        self.jobs.drop((build.namespace, build.name), job)

    def _resolve_job(
        self, job: SourceJob, build: BuildRef, spec: ImageBuildSpec, auth: GitAuth | reg.Registry
    ) -> None:
        """In the job's thread: wait for a slot of the build's namespace (`sourceslots`), resolve, then wake
        the build."""
        try:
            with self.slots.slot(build.namespace):
                job.started.set()
                if job.said_queued:  # its status says it waits: a pass says it resolves now
                    self._wake(build.namespace, build.name)
                self._resolve(job, build, spec, auth)
        except Exception as e:  # never leave a build waiting for a job that died
            log.exception("resolving the source of %s/%s failed", build.namespace, build.name)
            job.error = f"resolving the source failed: {type(e).__name__}"
        finally:
            job.done.set()
            self._wake(build.namespace, build.name)

    def _resolve(
        self, job: SourceJob, build: BuildRef, spec: ImageBuildSpec, auth: GitAuth | reg.Registry
    ) -> None:
        """Resolve, retrying other failures while time is left (a timeout is final)."""
        deadline = time.monotonic() + self.config.source_timeout
        git_auth, registry = (auth, None) if isinstance(auth, GitAuth) else (None, auth)
        for attempt in range(1, self.config.source_attempts + 1):
            try:
                job.resolved = resolve(spec, auth=git_auth, registry=registry,
                                       timeout=max(0.1, deadline - time.monotonic()))
                break
            except SourceTimeout as e:
                job.error, job.timed_out = str(e), True
                break
            except SourceError as e:
                job.error = str(e)
                log.warning(
                    "source of %s/%s not resolved (attempt %d): %s",
                    build.namespace,
                    build.name,
                    attempt,
                    job.error,
                    extra=log_fields(build.namespace, build.name),
                )
                pause = min(2.0 * attempt, 5.0)
                if attempt == self.config.source_attempts or time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)

