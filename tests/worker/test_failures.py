"""Every failure mode: its exit code, its kind and one clear message, in the result JSON and on stderr."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry, free_port
from stagefleet.worker import exitcodes

from .helpers import WORKER, WorkerRun, processes_mentioning, run_worker, write_context

pytestmark = pytest.mark.builder


def _check(r: WorkerRun, code: int, kind: str, *fragments: str) -> None:
    assert r.code == code, (r.code, r.stderr, r.stdout)
    assert r.result["ok"] is False and r.result["digest"] is None
    assert r.result["error"]["kind"] == kind
    for fragment in fragments:
        assert fragment in r.result["error"]["message"], r.result["error"]["message"]
    assert f"{kind} error" in r.stderr or kind == "usage"


def _push(registry: LocalRegistry) -> list[str]:
    return ["--push", f"{registry.host}/failures/{secrets.token_hex(4)}:1"]


def test_usage_error(registry: LocalRegistry, tmp_path: Path) -> None:
    r = run_worker(["--context", str(tmp_path), "--target", "x", "--result-file", str(tmp_path / "res")],
                   registry_host=registry.host, tmp=tmp_path)
    _check(r, exitcodes.USAGE, "usage", "--push")
    assert (tmp_path / "res").read_text().strip() == r.stdout.strip()  # the operator still learns why
    r = run_worker(["--context", str(tmp_path), "--target", "x", "--push", "r/x:1", "--upstream", "a=r/x:1"],
                   registry_host=registry.host, tmp=tmp_path)
    _check(r, exitcodes.USAGE, "usage", "sha256")


def test_context_fetch_failures(registry: LocalRegistry, tmp_path: Path) -> None:
    h = registry.host
    r = run_worker(["--context", str(tmp_path / "missing"), "--target", "x", *_push(registry)],
                   registry_host=h, tmp=tmp_path / "a")
    _check(r, exitcodes.CONTEXT, "context", "not found")
    r = run_worker(["--git-url", f"file://{tmp_path}/no-repo.git", "--git-revision", "main", "--target", "x",
                    *_push(registry)], registry_host=h, tmp=tmp_path / "b")
    _check(r, exitcodes.CONTEXT, "context", "git fetch")
    ctx = write_context(tmp_path / "ctx", "FROM scratch\n")
    r = run_worker(["--context", str(ctx), "--context-dir", "nope", "--target", "x", *_push(registry)],
                   registry_host=h, tmp=tmp_path / "c")
    _check(r, exitcodes.CONTEXT, "context", "nope")


def test_dockerfile_error_names_file_and_line(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM {base_image} AS app\nRUN echo hi\nFOO bar\n")
    r = run_worker(["--context", str(ctx), "--target", "app", *_push(registry)], registry_host=registry.host,
                   tmp=tmp_path / "pod")
    _check(r, exitcodes.DOCKERFILE, "dockerfile", "Dockerfile:3:")
    assert r.result["error"]["line"] == 3 and r.result["error"]["stage"] == "app"
    ctx = write_context(tmp_path / "ctx2", f"FROM {base_image} AS app\nRUN echo hi\n")
    r = run_worker(["--context", str(ctx), "--target", "nosuchstage", *_push(registry)],
                   registry_host=registry.host, tmp=tmp_path / "pod2")
    _check(r, exitcodes.DOCKERFILE, "dockerfile", "nosuchstage")


def test_missing_secret_file_and_missing_required_secret(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM {base_image} AS app\n"
                        "RUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok\n")
    r = run_worker(["--context", str(ctx), "--target", "app", "--secret", f"id=tok,src={tmp_path}/absent",
                    *_push(registry)], registry_host=registry.host, tmp=tmp_path / "pod")
    _check(r, exitcodes.SECRET, "secret", "tok", "absent")
    r = run_worker(["--context", str(ctx), "--target", "app", *_push(registry)], registry_host=registry.host,
                   tmp=tmp_path / "pod2")
    _check(r, exitcodes.SECRET, "secret", "Dockerfile:2:", "tok")
    r = run_worker(["--context", str(ctx), "--target", "app", "--ssh", f"default={tmp_path}/nokey",
                    *_push(registry)], registry_host=registry.host, tmp=tmp_path / "pod3")
    _check(r, exitcodes.SECRET, "secret", "nokey")
    bad_auth = tmp_path / "dockerconfigjson"
    bad_auth.write_text("{not json")
    r = run_worker(["--context", str(ctx), "--target", "app", "--registry-auth", str(bad_auth),
                    *_push(registry)], registry_host=registry.host, tmp=tmp_path / "pod4")
    _check(r, exitcodes.SECRET, "secret", "registry auth")


def test_failing_step_reports_stage_line_and_last_output(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", f"""FROM {base_image} AS first
RUN echo fine > /f

FROM first AS second
RUN echo hi
RUN echo out-line-1; echo err-line-2 >&2; \\
    exit 3
RUN echo never-reached
""")
    r = run_worker(["--context", str(ctx), "--target", "second", "--stage", "first", "--stage", "second",
                    *_push(registry)], registry_host=registry.host, tmp=tmp_path / "pod")
    _check(r, exitcodes.BUILD_STEP, "build-step", "Dockerfile:6:", "exit status 3", "out-line-1",
           "err-line-2")
    assert r.result["error"]["stage"] == "second" and r.result["error"]["line"] == 6
    assert "never-reached" not in r.stdout.replace("RUN echo never-reached", "")
    assert not list((tmp_path / "pod").glob("stagefleet-worker-*"))  # the failed build's root is gone


def test_push_failure_after_retries(registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM {base_image} AS app\nRUN echo hi > /x\n")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    r = run_worker(["--context", str(ctx), "--target", "app", "--push", f"{dead}/x/y:1",
                    "--insecure-registry", dead], registry_host=registry.host, tmp=tmp_path / "pod",
                   env={"STAGEFLEET_PUSH_ATTEMPTS": "3"})
    _check(r, exitcodes.PUSH, "push", f"push to {dead}/x/y:1 failed")
    assert r.stderr.count("retrying in") == 2  # 3 attempts, bounded


def test_pull_failures(registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    h = registry.host
    ctx = write_context(tmp_path / "ctx", f"FROM {h}/base/does-not-exist:1 AS app\nRUN echo hi\n")
    r = run_worker(["--context", str(ctx), "--target", "app", *_push(registry)], registry_host=h,
                   tmp=tmp_path / "pod")
    _check(r, exitcodes.PULL, "pull", "does-not-exist")
    ctx2 = write_context(tmp_path / "ctx2", f"FROM {base_image} AS up\nRUN echo u > /u\n"
                         f"FROM {base_image} AS app\nCOPY --from=up /u /u\n")
    missing = f"{h}/failures/upstream@sha256:{'0' * 64}"
    r = run_worker(["--context", str(ctx2), "--target", "app", "--upstream", f"up={missing}",
                    *_push(registry)],
                   registry_host=h, tmp=tmp_path / "pod2")
    _check(r, exitcodes.PULL, "pull", "failures/upstream")


def test_sigterm_stops_buildah_and_cleans_up(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    pod = tmp_path / "pod"
    pod.mkdir()
    naptime = f"{secrets.randbelow(9000) + 1000}.25"  # a unique `sleep` to look for afterwards
    ctx = write_context(tmp_path / "ctx", f"FROM {base_image} AS app\nRUN echo started; sleep {naptime}\n")
    env = {**os.environ, "TMPDIR": str(pod), "STAGEFLEET_INSECURE_REGISTRIES": registry.host}
    proc = subprocess.Popen([*WORKER, "--context", str(ctx), "--target", "app", *_push(registry)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # wait (without a timer) until the RUN step is running
            if line.strip() == "[app] started":
                break
        # the shell prints "started" before it forks `sleep`: give the fork a moment (a functional timeout)
        running = time.monotonic() + 30
        while not processes_mentioning(f"sleep{chr(0)}{naptime}"):
            assert time.monotonic() < running, "the RUN step's sleep never showed up"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 30  # buildah's own children may take a moment to go
    while processes_mentioning(str(pod)) or processes_mentioning(f"sleep{chr(0)}{naptime}"):
        assert time.monotonic() < deadline, "processes of the stopped worker are still running"
        time.sleep(0.2)
    assert not list(pod.glob("stagefleet-worker-*"))
    assert str(pod) not in Path("/proc/mounts").read_text()
