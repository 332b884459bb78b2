"""`--upstream-wait` with buildah: pre-pull base images (and each upstream result that lands while others
are still awaited), poll for the upstream results, pin their digests.

Polling is one manifest request per reference (`registry.tag_state`, which reaches insecure hosts and
uses basic auth as buildah does); only a registry that will not answer it is polled with `buildah pull`,
whose credentials and insecure registries are exactly the build's.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from stagefleet.worker import upstream
from stagefleet.worker.buildah import image_digest_argv, pull_argv
from stagefleet.worker.registry import tag_state
from stagefleet.worker.spec import Upstream, UpstreamWait
from stagefleet.worker.upstream import Prefetchable, classify, parse_digest, pinned, pull_error

#: Seconds between polls of a reference that is not there yet: cheap manifest requests.
POLL_INTERVAL = 0.1
#: At least this long between two `buildah pull`s of one reference (each is a process of its own).
PULL_INTERVAL = 0.3


class UpstreamError(RuntimeError):
    """Waiting for an upstream failed for good (exit code 15)."""


class Prefetch:
    """Background `buildah pull`s of the group's base images while the upstreams still build.

    Never fatal: a failed pre-pull is only logged, and the build pulls (and reports) the image itself.
    """

    def __init__(self, images: Sequence[Prefetchable], env: Mapping[str, str],
                 log: Callable[[str], None]) -> None:
        self.images = list(images)
        self.env = dict(env)
        self.log = log
        self.procs: list[tuple[Prefetchable, subprocess.Popen[str]]] = []

    def start(self) -> None:
        for image in self.images:
            self._spawn(image)
        if self.procs:
            self.log("pre-pulling " + ", ".join(image.ref for image, _ in self.procs))

    def _spawn(self, image: Prefetchable) -> bool:
        """Start the pull of one image; False (logged) when it could not be started."""
        try:
            proc = subprocess.Popen(pull_argv(image.ref, platform=image.platform), env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
        except OSError as e:
            self.log(f"pre-pull of {image.ref} not started: {e}")
            return False
        self.procs.append((image, proc))
        return True

    def add(self, image: Prefetchable) -> None:
        """Start one more pull now (an upstream result that landed while others are still awaited)."""
        if self._spawn(image):
            self.log(f"pre-pulling {image.ref}")

    def finish(self) -> None:
        """Wait for the pulls (the build must not race them for the same layers) and log how they went."""
        for image, proc in self.procs:
            _, stderr = proc.communicate()
            if proc.returncode == 0:
                self.log(f"pre-pulled {image.ref}")
            else:
                self.log(f"pre-pull of {image.ref} failed, the build will pull it: "
                         f"{pull_error(stderr, proc.returncode)}")
        self.procs = []

    def stop(self) -> None:
        """Cleanup path (failure, SIGTERM): stop pulls before the storage root is removed under them."""
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []


def poll_once(ref: str, env: Mapping[str, str]) -> tuple[str | None, str]:
    """Pull `ref`: (its manifest digest, "") when it is there, else (None, buildah's reason)."""
    r = subprocess.run(pull_argv(ref), env=dict(env), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True)
    if r.returncode:
        return None, pull_error(r.stderr, r.returncode)
    d = subprocess.run(image_digest_argv(ref), env=dict(env), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True)
    digest = parse_digest(d.stdout) if d.returncode == 0 else None
    if digest is None:
        raise UpstreamError(f"pulled {ref} but buildah reports no manifest digest for it: "
                            f"{pull_error(d.stderr, d.returncode)}")
    return digest, ""


def probing_poll(*, clock: Callable[[], float] = time.monotonic,
                 head: Callable[[str, Mapping[str, str]], tuple[bool | None, str | None]] = tag_state,
                 pull: Callable[[str, Mapping[str, str]], tuple[str | None, str]] = poll_once,
                 ) -> Callable[[str, Mapping[str, str]], tuple[str | None, str]]:
    """A poll for `wait_for_upstreams` that asks the registry with one cheap manifest request first
    (`registry.tag_state`, the same client as the push check: insecure hosts, basic auth).

    When it finds the tag and proves its digest, that digest is the answer: the build pulls the image by
    it (content-addressed, with the build's credentials). Only when the answer proves no digest, or the
    registry will not answer (one that wants a token), does the builder pull it, and then at most every
    PULL_INTERVAL per reference: a waiting pod costs almost no CPU next to the upstream build it waits
    for, yet notices the push within a tenth of a second.
    """
    last_pull: dict[str, tuple[float, str]] = {}

    def poll(ref: str, env: Mapping[str, str]) -> tuple[str | None, str]:
        found, digest = head(ref, env)
        if found is False:
            return None, "manifest unknown (HTTP 404)"
        if found and digest:
            return digest, ""
        if found is None and ref in last_pull and clock() - last_pull[ref][0] < PULL_INTERVAL:
            return None, last_pull[ref][1]
        pulled, reason = pull(ref, env)
        last_pull[ref] = (clock(), reason)
        return pulled, reason

    return poll


def wait_for_upstreams(waits: Sequence[UpstreamWait], env: Mapping[str, str], log: Callable[[str], None], *,
                       timeout: float | None = None, interval: float = POLL_INTERVAL,
                       poll: Callable[[str, Mapping[str, str]], tuple[str | None, str]] = poll_once,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep,
                       on_early: Callable[[Upstream], None] | None = None) -> list[Upstream]:
    """Poll until every awaited reference exists; return them pinned to digest, in the order given.

    Not found and unreachable registries mean "keep waiting"; permanent registry errors and
    `timeout` raise `UpstreamError`. `on_early` hears of each upstream found while others are still
    awaited (the caller pulls it meanwhile, so only the last one's pull is left for the build).
    """
    start = clock()
    pending = {w.stage: w.ref for w in waits}
    found: dict[str, Upstream] = {}
    told: set[str] = set()
    while True:
        for stage, ref in list(pending.items()):
            digest, reason = poll(ref, env)
            if digest is not None:
                log(upstream.ready_line(stage, ref, digest, clock() - start))
                found[stage] = Upstream(stage, pinned(ref, digest))
                del pending[stage]
                if pending and on_early is not None:
                    on_early(found[stage])
                continue
            outcome = classify(reason, ref)
            if outcome == "permanent":
                raise UpstreamError(f"upstream stage {stage}: cannot pull {ref}: {reason}")
            if stage not in told:
                told.add(stage)
                log(upstream.waiting_line(stage, ref))
            if outcome == "transient" and f"{stage}:transient" not in told:
                told.add(f"{stage}:transient")
                log(f"upstream {stage}: registry not answering yet ({reason}); still waiting")
        if not pending:
            return [found[w.stage] for w in waits]
        if timeout is not None and clock() - start >= timeout:
            raise UpstreamError(upstream.timeout_message(pending, timeout))
        sleep(interval)
