"""`--upstream-wait`: a worker started before its upstream group pushed, with the real builder and registry.

The downstream worker is started first and must wait; only then does the test build and push the
upstream stage (with another worker run, as the operator's upstream pod would), and the waiting worker
must pick it up, pin its digest and build on it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry, free_port
from stagefleet.worker import exitcodes

from .helpers import WORKER, WorkerRun, image_files, run_worker, skopeo_inspect, write_context

pytestmark = pytest.mark.builder

#: A functional bound only: how long a worker may take to reach a state; never a timing assertion.
PATIENCE = 180.0


class BackgroundWorker:
    """A worker process running while the test does other things; stderr goes to a file we can watch."""

    def __init__(self, args: Sequence[str], *, registry_host: str, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.stderr_path = tmp / "stderr"
        env = {**os.environ, "TMPDIR": str(tmp), "STAGEFLEET_INSECURE_REGISTRIES": registry_host,
               "STAGEFLEET_PUSH_BACKOFF": "0.1"}
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([*WORKER, *args], env=env, stdout=subprocess.PIPE, stderr=err,
                                         text=True)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for_stderr(self, text: str) -> None:
        deadline = time.monotonic() + PATIENCE
        while text not in self.stderr():
            assert self.proc.poll() is None, f"worker exited {self.proc.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"no {text!r} in: {self.stderr()}"
            time.sleep(0.1)

    def finish(self) -> WorkerRun:
        try:
            stdout, _ = self.proc.communicate(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        last = stdout.strip().splitlines()[-1] if stdout.strip() else "{}"
        return WorkerRun(self.proc.returncode, stdout, self.stderr(), json.loads(last))


DOCKERFILE = """\
FROM {base} AS one
RUN echo "built by one" > /one.txt

FROM {base} AS two
RUN echo "built by two" > /two.txt

FROM {base} AS final
COPY --from=one /one.txt /out/one.txt
COPY --from=two /two.txt /out/two.txt
"""


def _context(tmp_path: Path, base_image: str) -> Path:
    return write_context(tmp_path / "ctx", DOCKERFILE.format(base=base_image))


def _build_upstream(ctx: Path, stage: str, ref: str, registry_host: str, tmp: Path) -> str:
    """What the upstream group's pod does: build `stage`, push it to `ref`; returns the digest."""
    r = run_worker(["--context", str(ctx), "--target", stage, "--push", ref], registry_host=registry_host,
                   tmp=tmp)
    assert r.code == 0, r.stderr + r.stdout
    digest: str = r.result["digest"]
    return digest


def test_waits_for_an_upstream_pushed_later(registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    h = registry.host
    ctx = _context(tmp_path, base_image)
    stages = f"{h}/late/stages"
    final = BackgroundWorker(
        ["--context", str(ctx), "--target", "final", "--stage", "final", "--group", "g3",
         "--upstream-wait", f"one={stages}:b1-one", "--upstream-wait", f"two={stages}:b1-two",
         "--push", f"{h}/late/app:1"],
        registry_host=h, tmp=tmp_path / "pod-final")
    final.wait_for_stderr(f"waiting for upstream stage one at {stages}:b1-one")
    final.wait_for_stderr(f"waiting for upstream stage two at {stages}:b1-two")
    time.sleep(2)  # the upstream pods are still "building"; the downstream keeps polling meanwhile
    assert final.proc.poll() is None, final.stderr()
    d1 = _build_upstream(ctx, "one", f"{stages}:b1-one", h, tmp_path / "pod-one")
    d2 = _build_upstream(ctx, "two", f"{stages}:b1-two", h, tmp_path / "pod-two")

    r = final.finish()
    assert r.code == 0, r.stderr + r.stdout
    # pinned to exactly what the upstream pushes reported, and reported back to the operator
    assert f"upstream one ready: {stages}:b1-one@{d1} after " in r.stderr
    assert f"upstream two ready: {stages}:b1-two@{d2} after " in r.stderr
    assert r.result["upstreams"] == {"one": d1, "two": d2}
    # the base image was pulled while waiting; the upstream stages were never rebuilt here
    assert f"pre-pulled {base_image}" in r.stderr
    # one landed while two was still building: pulled meanwhile, and the build did not pull it again
    assert f"pre-pulled {stages}@{d1}" in r.stderr
    assert not any(f"Trying to pull {stages}@{d1}" in line for line in r.lines), r.stdout
    assert not any("built by" in line for line in r.lines[:-1])
    assert all(line.startswith("[final] ") for line in r.lines[:-1])

    # waiting costs HTTP probes, not builder processes: only the probe asked for the tag (the registry
    # named the digest with its answer; the build then pulled by digest)
    log = (registry.workdir / "registry.log").read_text(errors="replace")
    asked = [(method, code, agent.split("/")[0]) for method, code, agent in re.findall(
        r'"(HEAD|GET) /v2/late/stages/manifests/b1-one HTTP/1.1" (\d+) .*"([^"]*)"\s*$', log, re.M)]
    assert asked.count(("GET", "404", "stagefleet-worker")) >= 5, Counter(asked)
    assert asked.count(("GET", "200", "stagefleet-worker")) == 1
    assert not [a for a in asked if a[2] == "Buildah"], asked  # the builder never polled the tag
    # the build pulled the pinned images by digest: each blob left the stages repo only once
    blob_gets = re.findall(r'"GET /v2/late/stages/blobs/(sha256:[0-9a-f]+) ',
                           (registry.workdir / "registry.log").read_text(errors="replace"))
    assert blob_gets and all(n == 1 for n in Counter(blob_gets).values()), Counter(blob_gets)

    digest = r.result["digest"]
    assert skopeo_inspect(f"{h}/late/app:1")["Digest"] == digest
    files = image_files(h, "late/app", digest)
    assert files["/out/one.txt"] == b"built by one\n"
    assert files["/out/two.txt"] == b"built by two\n"


def test_wait_combined_with_a_finished_upstream(registry: LocalRegistry, base_image: str,
                                                tmp_path: Path) -> None:
    """One upstream already done (ordinary --upstream by digest), the other still building."""
    h = registry.host
    ctx = _context(tmp_path, base_image)
    stages = f"{h}/mixed/stages"
    d1 = _build_upstream(ctx, "one", f"{stages}:b2-one", h, tmp_path / "pod-one")
    final = BackgroundWorker(
        ["--context", str(ctx), "--target", "final", "--upstream", f"one={stages}@{d1}",
         "--upstream-wait", f"two={stages}:b2-two", "--upstream-timeout", str(PATIENCE),
         "--push", f"{h}/mixed/app:1"],
        registry_host=h, tmp=tmp_path / "pod-final")
    final.wait_for_stderr(f"waiting for upstream stage two at {stages}:b2-two")
    d2 = _build_upstream(ctx, "two", f"{stages}:b2-two", h, tmp_path / "pod-two")

    r = final.finish()
    assert r.code == 0, r.stderr + r.stdout
    assert "waiting for upstream stage one" not in r.stderr
    assert f"upstream two ready: {stages}:b2-two@{d2}" in r.stderr
    assert r.result["upstreams"] == {"one": d1, "two": d2}
    files = image_files(h, "mixed/app", r.result["digest"])
    assert files["/out/one.txt"] == b"built by one\n"
    assert files["/out/two.txt"] == b"built by two\n"


def test_upstream_already_there_is_used_without_waiting(registry: LocalRegistry, base_image: str,
                                                        tmp_path: Path) -> None:
    h = registry.host
    ctx = write_context(tmp_path / "ctx", f"FROM {base_image} AS one\nRUN echo early > /e\n"
                                          f"FROM {base_image} AS final\nCOPY --from=one /e /e\n")
    d1 = _build_upstream(ctx, "one", f"{h}/early/stages:one", h, tmp_path / "pod-one")
    r = run_worker(["--context", str(ctx), "--target", "final",
                    "--upstream-wait", f"one={h}/early/stages:one", "--upstream-timeout", "0.001",
                    "--push", f"{h}/early/app:1"],
                   registry_host=h, tmp=tmp_path / "pod-final")
    assert r.code == 0, r.stderr + r.stdout
    assert "waiting for upstream stage" not in r.stderr
    assert r.result["upstreams"] == {"one": d1}
    assert image_files(h, "early/app", r.result["digest"])["/e"] == b"early\n"


def test_upstream_timeout_is_a_pull_failure(registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    h = registry.host
    ctx = _context(tmp_path, base_image)
    never = f"{h}/never/stages:b3-one"
    down = f"127.0.0.1:{free_port()}/nothing/listens:here"  # connection refused: keep waiting, too
    r = run_worker(["--context", str(ctx), "--target", "final", "--upstream-wait", f"one={never}",
                    "--upstream-wait", f"two={down}", "--upstream-timeout", "1.5",
                    "--push", f"{h}/never/app:1", "--insecure-registry", down.split("/")[0]],
                   registry_host=h, tmp=tmp_path / "pod")
    assert r.code == exitcodes.PULL, r.stderr + r.stdout
    assert r.result["ok"] is False and r.result["error"]["kind"] == "pull"
    message = r.result["error"]["message"]
    assert f"one at {never}" in message and f"two at {down}" in message and "--upstream-timeout" in message
    assert f"waiting for upstream stage one at {never}" in r.stderr
    assert "upstream two: registry not answering yet" in r.stderr
    assert "building target" not in r.stderr
    assert not list((tmp_path / "pod").glob("stagefleet-worker-*"))  # the storage root went away


def test_permanent_registry_error_fails_at_once(registry: LocalRegistry, base_image: str,
                                                tmp_path: Path) -> None:
    """HTTPS against a plain-HTTP registry (not declared insecure) is a configuration error: no waiting."""
    h = registry.host
    ctx = _context(tmp_path, base_image)
    ref = f"{h}/secure/stages:b4-one"
    proc = subprocess.run([*WORKER, "--context", str(ctx), "--target", "final", "--upstream-wait",
                           f"one={ref}", "--push", f"{h}/secure/app:1"],
                          env={**os.environ, "TMPDIR": str(tmp_path), "STAGEFLEET_INSECURE_REGISTRIES": ""},
                          capture_output=True, text=True, timeout=PATIENCE)
    assert proc.returncode == exitcodes.PULL, proc.stderr + proc.stdout
    error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert error["kind"] == "pull"
    assert error["message"].startswith(f"upstream stage one: cannot pull {ref}: ")
    assert "HTTP response to HTTPS client" in error["message"]


WAIT = "one=127.0.0.1:5000/a/stages:x"


@pytest.mark.parametrize(("args", "flag"), [
    (["--upstream-wait", "one"], "--upstream-wait"),
    (["--upstream-wait", "one=127.0.0.1:5000/a/stages@sha256:" + "a" * 64], "--upstream-wait"),
    (["--upstream-wait", "one=127.0.0.1:5000/Upper/stages:x"], "--upstream-wait"),
    (["--upstream-timeout", "soon", "--upstream-wait", WAIT], "--upstream-timeout"),
    (["--upstream-timeout", "0", "--upstream-wait", WAIT], "--upstream-timeout"),
    (["--upstream-wait", WAIT,
      "--upstream", "one=127.0.0.1:5000/a/stages@sha256:" + "b" * 64], "--upstream-wait"),
])
def test_usage_errors_name_the_flag(args: list[str], flag: str, tmp_path: Path) -> None:
    result = tmp_path / "result"
    proc = subprocess.run([*WORKER, "--context", str(tmp_path), "--target", "final", "--push",
                           "127.0.0.1:5000/a/app:1", "--result-file", str(result), *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == exitcodes.USAGE, proc.stderr
    error = json.loads(result.read_text())["error"]
    assert error["kind"] == "usage" and flag in error["message"], error


HEAD_START = """\
FROM {base} AS one
RUN echo "built by one" > /one.txt

FROM {base} AS final
RUN date +%s > /prep.txt
COPY prep.in /prep.in
COPY --from=one /one.txt /out/one.txt
RUN cat /prep.in /out/one.txt
"""


def test_what_needs_no_upstream_is_built_while_waiting(registry: LocalRegistry, base_image: str,
                                                       tmp_path: Path) -> None:
    """The head start: final's RUN and COPY before its `COPY --from=one` run while `one` is still building;
    the build proper finds them as cache hits and reports them as built, not cached."""
    h = registry.host
    ctx = write_context(tmp_path / "ctx", HEAD_START.format(base=base_image), {"prep.in": "prepared\n"})
    stages = f"{h}/head/stages"
    final = BackgroundWorker(
        ["--context", str(ctx), "--target", "final", "--stage", "final", "--group", "g2",
         "--upstream-wait", f"one={stages}:b1-one", "--cache-repo", f"{h}/head/cache",
         "--push", f"{h}/head/app:1"],
        registry_host=h, tmp=tmp_path / "pod-final")
    final.wait_for_stderr("head start: building final up to Dockerfile:6 while the upstreams build "
                          "(Dockerfile:7 needs one)")
    final.wait_for_stderr("head start done: exit status 0")
    assert "upstream one ready" not in final.stderr()  # it does not exist yet
    pushed_after = int(time.time())
    _build_upstream(ctx, "one", f"{stages}:b1-one", h, tmp_path / "pod-one")

    r = final.finish()
    assert r.code == 0, r.stderr + r.stdout
    files = image_files(h, "head/app", "1")
    assert files["/out/one.txt"] == b"built by one\n" and files["/prep.in"] == b"prepared\n"
    assert int(files["/prep.txt"]) <= pushed_after  # the RUN ran before the upstream existed
    # each of final's first two steps ran once (head start), then hit the layer cache in the build proper
    steps = [line for line in r.lines if re.search(r"STEP \d/\d: (RUN date|COPY prep.in)", line)]
    assert [s.split(": ", 1)[0] for s in steps] == [
        "[final] STEP 2/3", "[final] STEP 3/3", "[final] STEP 2/5", "[final] STEP 3/5"], r.stdout
    assert r.stdout.count("--> Using cache") >= 2, r.stdout
    final_stage = next(s for s in r.result["stages"] if s["name"] == "final")
    assert final_stage["cachedSteps"] == 0 and final_stage["steps"] == 4, r.result
    assert r.result["cachedSteps"] == 0


def test_no_head_start_when_everything_needs_the_upstream(registry: LocalRegistry, base_image: str,
                                                          tmp_path: Path) -> None:
    h = registry.host
    ctx = _context(tmp_path, base_image)  # final: FROM base, then COPY --from each upstream
    stages = f"{h}/nohead/stages"
    _build_upstream(ctx, "one", f"{stages}:b1-one", h, tmp_path / "pod-one")
    _build_upstream(ctx, "two", f"{stages}:b1-two", h, tmp_path / "pod-two")
    r = run_worker(["--context", str(ctx), "--target", "final", "--group", "g3",
                    "--upstream-wait", f"one={stages}:b1-one", "--upstream-wait", f"two={stages}:b1-two",
                    "--push", f"{h}/nohead/app:1"], registry_host=h, tmp=tmp_path / "pod-final")
    assert r.code == 0, r.stderr + r.stdout
    assert "head start" not in r.stderr


def test_the_head_start_copies_what_the_dockerfiles_own_ignore_file_lets_through(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    """The cut Dockerfile is built under the original's name beside its own `NAME.dockerignore`: the
    head start's `COPY .` leaves out the same files, so the build proper finds its layer in the cache."""
    h = registry.host
    dockerfile = (f"FROM {base_image} AS one\nRUN echo one > /one\n"
                  f"FROM {base_image} AS final\nCOPY . /ctx/\nCOPY --from=one /one /one\n")
    ctx = write_context(tmp_path / "ctx", "FROM scratch\n", {
        "build/app.Dockerfile": dockerfile, "build/app.Dockerfile.dockerignore": "secret.txt\nbuild\n",
        "keep.txt": "kept\n", "secret.txt": "left out\n"})
    stages = f"{h}/ign/stages"
    final = BackgroundWorker(
        ["--context", str(ctx), "--dockerfile", "build/app.Dockerfile", "--target", "final",
         "--group", "g2", "--upstream-wait", f"one={stages}:b1-one", "--push", f"{h}/ign/app:1"],
        registry_host=h, tmp=tmp_path / "pod-final")
    final.wait_for_stderr("head start done: exit status 0")
    r1 = run_worker(["--context", str(ctx), "--dockerfile", "build/app.Dockerfile", "--target", "one",
                     "--push", f"{stages}:b1-one"], registry_host=h, tmp=tmp_path / "pod-one")
    assert r1.code == 0, r1.stderr + r1.stdout
    r = final.finish()
    assert r.code == 0, r.stderr + r.stdout
    files = image_files(h, "ign/app", "1")
    assert files["/ctx/keep.txt"] == b"kept\n" and "/ctx/secret.txt" not in files
    assert not any(name.startswith("/ctx/build") for name in files)
    copy = r.stdout.rindex("STEP 2/3: COPY . /ctx/")  # the build proper's COPY: a cache hit
    assert "--> Using cache" in r.stdout[copy:].split("STEP 3/3")[0], r.stdout
