"""`stagefleet-worker` entry point: glue between the pure pieces and buildah.

stdout carries the stage-prefixed build output and, as its last line, the result JSON; the worker's own
progress notes go to stderr. Everything printed passes through the secret scrubber.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from stagefleet import buildenv
from stagefleet.worker import cachemounts, exitcodes, rootless
from stagefleet.worker.buildah import build_argv
from stagefleet.worker.dockerinfo import DockerfileInfo, DockerfileSyntaxError, analyse, precheck
from stagefleet.worker.fetch import Context, FetchError, SshAgent, fetch_context
from stagefleet.worker.headrun import HeadRun, end, follow, write_dockerfile
from stagefleet.worker.headstart import head_start
from stagefleet.worker.keytag import store_under_key
from stagefleet.worker.output import Failure, OutputTracker, Scrubber
from stagefleet.worker.pins import PinPlan, plan_pins
from stagefleet.worker.push import PushError, push_all
from stagefleet.worker.result import ErrorInfo, Result, StageResult, render
from stagefleet.worker.spec import StepSpec, UsageError, default_result_file, parse_args
from stagefleet.worker.upstream import Prefetchable, external_images
from stagefleet.worker.waiting import Prefetch, UpstreamError, probing_poll, wait_for_upstreams


class WorkerFailure(Exception):
    def __init__(self, failure: Failure, stages: Sequence[StageResult] = ()) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.stages = stages


def _fail(code: int, message: str, stage: str | None = None, line: int | None = None) -> WorkerFailure:
    return WorkerFailure(Failure(code, message, stage, line))


def secret_material(spec: StepSpec) -> list[bytes]:
    """Contents of every secret and key file we were given, to be scrubbed; raises on a missing one."""
    found: list[bytes] = []
    files = [(f"secret {s.id!r}", s.src) for s in spec.secrets] + [(f"ssh key {k.id!r}", k.keyfile)
                                                                  for k in spec.ssh]
    if spec.git_ssh_key is not None:
        files.append(("git ssh key", spec.git_ssh_key))
    for what, path in files:
        try:
            found.append(path.read_bytes())
        except OSError as e:
            raise _fail(exitcodes.SECRET, f"{what}: cannot read {path}: {e.strerror}") from None
    if spec.registry_auth is not None:
        try:
            auth = buildenv.load_auth(spec.registry_auth.read_text())
        except (OSError, buildenv.AuthFileError) as e:
            raise _fail(exitcodes.SECRET, f"registry auth: {e}") from None
        found += [s.encode() for s in buildenv.auth_secrets(auth)]
    if spec.git_url and urlsplit(spec.git_url).password:  # https://user:token@host/repo
        found.append(str(urlsplit(spec.git_url).password).encode())
    return found


def run_build(argv: list[str], env: dict[str, str], tracker: OutputTracker, scrub: Scrubber,
              out: Callable[[str], None]) -> int:
    """Run buildah, streaming its scrubbed, stage-prefixed output; return its exit status."""
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        try:
            follow(proc.stdout, tracker, scrub, out)
        except BaseException:  # SIGTERM/^C: stop buildah before our cleanup removes its storage
            end(proc)
            raise
    return proc.returncode


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM (pod deletion, local mode's cancel) unwinds like ^C so agents and roots are cleaned up."""
    raise SystemExit(128 + signum)


def stage_results(spec: StepSpec, tracker: OutputTracker) -> list[StageResult]:
    names = list(spec.stage_names) + [n for n in tracker.stats if n not in spec.stage_names]
    results = []
    for name in names:
        st = tracker.stats.get(name)
        if st is not None or name in spec.stage_names:
            results.append(StageResult(name, st.seconds if st else 0.0, st.cached if st else 0,
                                       st.steps if st else 0))
    return results


def consumed_stages(spec: StepSpec) -> set[str]:
    return {u.stage for u in spec.upstreams} | {w.stage for w in spec.upstream_waits}


def await_upstreams(spec: StepSpec, text: str, env: dict[str, str], stack: ExitStack,
                    log: Callable[[str], None], pins: Mapping[str, str]) -> StepSpec:
    """`--upstream-wait`: pull the group's base images in the background while polling for the upstream
    results (and each result that lands before the last), then consume each like an `--upstream` pinned
    to the digest found.

    This is what lets the operator start the pod early: everything but the upstreams is ready when the
    last upstream lands. Pinned images are pulled by their pinned digest, as the build will use them.
    """
    images = external_images(text, target=spec.target, build_args=dict(spec.build_args),
                             consumed=consumed_stages(spec), platform=spec.platform)
    prefetch = Prefetch([replace(i, ref=pins.get(i.ref, i.ref)) for i in images], env, log)
    stack.callback(prefetch.stop)
    prefetch.start()
    try:
        found = wait_for_upstreams(spec.upstream_waits, env, log, timeout=spec.upstream_timeout,
                                   poll=probing_poll(),
                                   on_early=lambda up: prefetch.add(Prefetchable(up.ref, spec.platform)))
    except UpstreamError as e:
        raise _fail(exitcodes.PULL, str(e)) from None
    prefetch.finish()
    return replace(spec, upstreams=(*spec.upstreams, *found))


def start_head(spec: StepSpec, text: str, filename: str, ctx: Context, workdir: Path,
               env: Mapping[str, str], sockets: Mapping[str, str], plan: PinPlan, stack: ExitStack,
               scrub: Scrubber, log: Callable[[str], None], out: Callable[[str], None]) -> HeadRun | None:
    """Start building what does not need the awaited upstreams (`worker.headstart`), if anything."""
    if spec.no_cache:  # the build proper would not use what the head start leaves in the layer cache
        return None
    hs = head_start(text, filename=filename, target=spec.target,
                    awaited={w.stage for w in spec.upstream_waits}, consumed=consumed_stages(spec),
                    build_args=dict(spec.build_args), platform=spec.platform)
    if hs is None:
        return None
    try:
        info = analyse(hs.dockerfile, filename)
    except DockerfileSyntaxError:
        return None
    path = write_dockerfile(hs, ctx.dockerfile, workdir / "head-start")
    argv = build_argv(replace(spec, target=hs.target), context_dir=ctx.directory, dockerfile=path,
                      iidfile=workdir / "head-start.iid", ssh_sockets=sockets,
                      stage_names=info.buildah_names(), image_contexts=plan.contexts)
    log(f"head start: building {hs.target} up to {filename}:{hs.cut - 1} while the upstreams build "
        f"({filename}:{hs.cut} needs one)")
    run = HeadRun(argv, env, OutputTracker(info, hs.target), scrub, out, lambda m: log(scrub(m)))
    stack.callback(run.stop)
    try:
        run.start()
    except OSError as e:
        log(f"head start not started: {e}")
        return None
    return run


def execute(spec: StepSpec, workdir: Path, scrub: Scrubber,
            log: Callable[[str], None], out: Callable[[str], None]) -> Result:
    """The whole job; raises `WorkerFailure` with the exit code for anything that goes wrong."""
    root = spec.storage_root or workdir / "root"
    with ExitStack() as stack:
        env = dict(os.environ)  # until prepare() has run: enough for cleanup's `buildah rm`
        if spec.storage_root is None:
            stack.callback(lambda: buildenv.cleanup(root, env))
        try:  # the auth file was validated by secret_material(); an OSError here is infrastructure
            env = buildenv.prepare(root, insecure_registries=spec.insecure_registries,
                                   auth_file=spec.registry_auth, log=log)
        except buildenv.AuthFileError as e:
            raise _fail(exitcodes.SECRET, f"registry auth: {e}") from None
        if os.geteuid() != 0:  # a pod's securityContext decides whether rootless buildah can work at all
            try:
                rootless.check_user_namespace(env)
            except rootless.UserNamespaceError as e:
                raise _fail(exitcodes.SECURITY_CONTEXT, str(e)) from None
        try:
            ctx = fetch_context(spec, workdir, env)
        except FetchError as e:
            raise _fail(exitcodes.CONTEXT, scrub(str(e))) from None
        filename = "Dockerfile" if spec.inline_dockerfile else spec.dockerfile
        text = ctx.dockerfile.read_text(errors="replace")
        try:
            info: DockerfileInfo = analyse(text, filename)
        except DockerfileSyntaxError as e:
            raise _fail(exitcodes.DOCKERFILE, str(e), None, e.line) from None
        try:
            precheck(text, filename=filename, target=spec.target, build_args=dict(spec.build_args))
        except DockerfileSyntaxError as e:
            raise _fail(exitcodes.DOCKERFILE, str(e), info.stage_at(e.line), e.line) from None
        plan = PinPlan()  # nothing to pin, no key: the build is exactly what it was before pins existed
        if spec.pins or spec.stage_key:
            plan = plan_pins(text, spec.pins, from_words=info.from_words, target=spec.target,
                             build_args=dict(spec.build_args), consumed=consumed_stages(spec),
                             platform=spec.platform)
        for ref in plan.ignored:
            log(f"--pin-image {ref}: the Dockerfile has a stage of that name, which it means instead")
        sockets: dict[str, str] = {}
        for key in spec.ssh:
            agent = SshAgent()
            stack.callback(agent.stop)
            agent.start()
            try:
                agent.add(key.keyfile, key.id)
            except ValueError as e:
                raise _fail(exitcodes.SECRET, str(e)) from None
            sockets[key.id] = str(agent.socket)
        cache_ids = cachemounts.mount_ids(text) if spec.mount_cache_repo else []
        restored: dict[str, str] = {}
        if cache_ids:  # before any waiting: a head start's RUN may mount them too
            restored = _quietly(lambda: cachemounts.restore(str(spec.mount_cache_repo), cache_ids,
                                                            _tmpdir(env), env, lambda m: log(scrub(m))),
                                "restoring cache mounts", log) or {}
        head: HeadRun | None = None
        if spec.upstream_waits:
            head = start_head(spec, text, filename, ctx, workdir, env, sockets, plan, stack, scrub, log, out)
            spec = await_upstreams(spec, text, env, stack, lambda m: log(scrub(m)), plan.contexts)
            if head is not None and (head_rc := head.wait()) != 0:
                log(f"the head start ended with exit status {head_rc}; the build goes on without it")
                head = None
        iidfile = workdir / "iid"
        argv = build_argv(spec, context_dir=ctx.directory, dockerfile=ctx.dockerfile, iidfile=iidfile,
                          ssh_sockets=sockets, stage_names=info.buildah_names(), image_contexts=plan.contexts)
        tracker = OutputTracker(info, spec.target)
        log(f"building target {spec.target} (jobs={spec.jobs}) in {root}")
        rc = run_build(argv, env, tracker, scrub, out)
        if head is not None:
            tracker.credit(head.tracker)
        stages = stage_results(spec, tracker)
        if rc != 0:
            raise WorkerFailure(tracker.failure(rc), stages)
        image_id = iidfile.read_text().strip()
        try:
            digest = push_all(image_id, spec.push, workdir, env, lambda m: log(scrub(m)))
        except PushError as e:
            raise _fail(exitcodes.PUSH, scrub(str(e))) from None
        key_tagged = store_under_key(spec, plan, image_id, digest, workdir, env, lambda m: log(scrub(m)))
        if cache_ids:
            _quietly(lambda: cachemounts.save(str(spec.mount_cache_repo), cache_ids, _tmpdir(env), restored,
                                              env, lambda m: log(scrub(m))), "saving cache mounts", log)
        return Result(ok=True, group=spec.group, target=spec.target, image=spec.push[0], digest=digest,
                      cached_steps=tracker.cached, steps=tracker.steps, stages=stages,
                      upstreams={u.stage: u.ref.rpartition("@")[2] for u in spec.upstreams},
                      key=spec.stage_key, key_tagged=key_tagged)
    raise AssertionError("unreachable")


T = TypeVar("T")


def _quietly(fn: Callable[[], T], what: str, log: Callable[[str], None]) -> T | None:
    """Cache mounts only save time: a failure to restore or save them is logged, never the build's."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        log(f"{what} failed ({type(e).__name__}: {e}); the build goes on without")
        return None


def _tmpdir(env: Mapping[str, str]) -> Path:
    """buildah's TMPDIR, where it keeps cache mounts (`buildenv`)."""
    return Path(env.get("TMPDIR") or tempfile.gettempdir())


def emit(result: Result, spec_result_file: Path | None, scrub: Scrubber) -> None:
    """Result JSON as the last stdout line and into the termination-message file."""
    line = scrub(render(result))
    print(line, flush=True)
    if spec_result_file is not None:
        try:
            spec_result_file.write_text(line)
        except OSError as e:
            print(f"stagefleet-worker: cannot write {spec_result_file}: {e}", file=sys.stderr)


def _peek(args: Sequence[str], flag: str) -> str | None:
    """A flag's value from a command line that did not parse (so a usage error still gets reported)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def log(message: str) -> None:
        print(f"stagefleet-worker: {message}", file=sys.stderr, flush=True)

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        spec = parse_args(args)
    except UsageError as e:
        log(f"usage error: {e}")
        result_file = _peek(args, "--result-file")
        emit(Result(ok=False, group=_peek(args, "--group"), target=_peek(args, "--target") or "",
                    error=ErrorInfo("usage", str(e))),
             Path(result_file) if result_file else default_result_file(), Scrubber())
        return exitcodes.USAGE
    scrub = Scrubber()
    signal.signal(signal.SIGTERM, _terminate)
    with tempfile.TemporaryDirectory(prefix="stagefleet-worker-") as tmp:
        try:
            scrub = Scrubber(secret_material(spec))
            result = execute(spec, Path(tmp), scrub, log, out)
            code = exitcodes.OK
        except WorkerFailure as wf:
            f = wf.failure
            code = f.code
            log(scrub(f"{f.kind} error: {f.message}"))
            result = Result(ok=False, group=spec.group, target=spec.target, stages=wf.stages,
                            error=ErrorInfo(f.kind, f.message, f.stage, f.line))
        except Exception as e:  # noqa: BLE001 - reported as exit code 1 (infrastructure, retried)
            code = exitcodes.UNEXPECTED
            log(scrub(f"unexpected error: {type(e).__name__}: {e}"))
            result = Result(ok=False, group=spec.group, target=spec.target,
                            error=ErrorInfo("internal", f"{type(e).__name__}: {e}"))
    emit(result, spec.result_file, scrub)
    return code


if __name__ == "__main__":
    sys.exit(main())
