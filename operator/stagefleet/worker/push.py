"""Pushing the built image by digest, retrying transient registry errors with bounded backoff.

An image every reference already serves (a rebuild that took every step from the layer cache) is not
pushed again; `registry.served_digest` checks that first.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from stagefleet.worker.buildah import push_argv
from stagefleet.worker.registry import served_digest

if TYPE_CHECKING:
    from tenacity import RetryCallState

#: Registry answers that no retry will change.
PERMANENT = ("unauthorized", "denied", "authentication required", "invalid reference", "image not known",
             "name invalid", "manifest invalid")


class PushError(RuntimeError):
    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def is_transient(message: str) -> bool:
    low = message.lower()
    return not any(word in low for word in PERMANENT)


def _push_once(image_id: str, ref: str, digestfile: Path, env: Mapping[str, str]) -> str:
    r = subprocess.run(push_argv(image_id, ref, digestfile), env=dict(env), capture_output=True, text=True)
    if r.returncode:
        err = r.stderr.strip().splitlines()
        msg = err[-1].removeprefix("Error: ") if err else f"buildah push exited {r.returncode}"
        raise PushError(f"push to {ref} failed: {msg}", is_transient(msg))
    return digestfile.read_text().strip()


def already_served(image_id: str, refs: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    """The one digest under which every reference already serves this image, if they all do."""
    config = image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"
    found: str | None = None
    for ref in refs:  # stops at the first reference that lacks it
        digest = served_digest(ref, config, env)
        if digest is None or found not in (None, digest):
            return None
        found = digest
    return found


def push_all(image_id: str, refs: tuple[str, ...], workdir: Path, env: Mapping[str, str],
             log: Callable[[str], None]) -> str:
    """Push to every reference; return the digest (the same for all, or `PushError`).

    When every reference already serves this image under one digest, that digest is returned and
    nothing is pushed. Attempts and backoff: STAGEFLEET_PUSH_ATTEMPTS (default 5) and
    STAGEFLEET_PUSH_BACKOFF seconds (default 1; waits double up to 16x that).
    """
    served = already_served(image_id, refs, env)
    if served is not None:
        for ref in refs:
            log(f"{ref} already serves this image ({served}): not pushed again")
        return served
    # imported here: a skipped push (above) needs none of tenacity's start-up time
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    attempts = int(env.get("STAGEFLEET_PUSH_ATTEMPTS", os.environ.get("STAGEFLEET_PUSH_ATTEMPTS", "5")))
    base = float(env.get("STAGEFLEET_PUSH_BACKOFF", os.environ.get("STAGEFLEET_PUSH_BACKOFF", "1")))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log(f"{exc}; retrying in {wait:.1f}s (attempt {state.attempt_number + 1}/{attempts})")

    digests: list[str] = []
    for i, ref in enumerate(refs):
        digestfile = workdir / f"digest-{i}"
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=base, max=16 * base),
            retry=retry_if_exception(lambda e: isinstance(e, PushError) and e.transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        digests.append(retrying(_push_once, image_id, ref, digestfile, env))
        log(f"pushed {ref}@{digests[-1]}")
    if len(set(digests)) != 1:
        raise PushError(f"pushes produced different digests: {dict(zip(refs, digests, strict=True))}", False)
    return digests[0]
