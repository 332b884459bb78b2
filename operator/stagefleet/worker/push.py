"""Pushing the built image by digest, retrying transient registry errors with bounded backoff."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from stagefleet.worker.buildah import push_argv

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


def push_all(image_id: str, refs: tuple[str, ...], workdir: Path, env: Mapping[str, str],
             log: Callable[[str], None]) -> str:
    """Push to every reference; return the digest (the same for all, or `PushError`).

    Attempts and backoff: STAGEFLEET_PUSH_ATTEMPTS (default 5) and STAGEFLEET_PUSH_BACKOFF seconds
    (default 1; waits double up to 16x that).
    """
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
