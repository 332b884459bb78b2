"""Storing a group's result under its content key (`--stage-key`): `<cache-repo>:stage-<key>`.

The operator reuses whatever that tag names instead of building, so it is written only for a result
built from exactly the keyed inputs (every image pinned, and used: `pins`), and only with the digest
reported. The result is already in the registry under the `--push` references, so its manifest is
copied: one GET, a HEAD per blob (a cross-repository mount for one the cache repository lacks) and one
PUT of the same bytes, hence the same digest; a few milliseconds on loopback. Where that cannot work
(another registry, a registry that wants a bearer token, a mount refused), `buildah push` of the built
image to the key tag (its blobs are there: about 0.1 s here), whose digest must match. A key tag is the
next build's shortcut, never this build's result: failing to write it is a warning.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from stagefleet.worker.buildah import images_argv
from stagefleet.worker.pins import PinPlan, check_listing
from stagefleet.worker.push import PushError, push_all
from stagefleet.worker.registry import MANIFEST_TYPES, Session, parse_reference
from stagefleet.worker.spec import StepSpec
from stagefleet.worker.upstream import pull_error

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
#: Attempts of the `buildah push` fallback: the build's own push just worked, so one retry is plenty.
PUSH_ATTEMPTS = "2"


def verify_pins(used: Mapping[str, str], env: Mapping[str, str]) -> str | None:
    """Why the storage shows a pinned image may have been resolved by its tag instead, or None."""
    for ref, pinned in sorted(used.items()):
        r = subprocess.run(images_argv(ref), env=dict(env), capture_output=True, text=True)
        if r.returncode:
            if "image not known" in r.stderr:  # never stored under its tag: only the pin was pulled
                continue
            return f"cannot look {ref} up in storage: {pull_error(r.stderr, r.returncode)}"
        reason = check_listing(ref, pinned, r.stdout)
        if reason:
            return reason
    return None


def copy_manifest(source: str, digest: str, dest: str, env: Mapping[str, str],
                  timeout: float = 5.0) -> str | None:
    """Serve the manifest `source`'s repository has as `digest` under `dest`'s tag too (one registry).

    None when done; else why not (nothing is tagged then).
    """
    src, dst = parse_reference(source), parse_reference(dest)
    if src is None or dst is None:
        return "a reference the registry API cannot name"
    if src.host != dst.host:
        return f"the result is in another registry ({src.host})"
    if not _DIGEST.match(digest):
        return f"not a digest: {digest!r}"
    reg = Session(dst.host, env, timeout)
    answer = reg("GET", f"/v2/{src.repository}/manifests/{digest}", {"Accept": ", ".join(MANIFEST_TYPES)})
    if answer is None:
        return "the registry did not answer"
    status, headers, body = answer
    media = headers.get("content-type", "").split(";")[0].strip()
    if status != 200 or media not in MANIFEST_TYPES or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        return f"GET of the manifest answered {status} {media}"
    try:
        manifest = json.loads(body)
        blobs = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    except (ValueError, KeyError, TypeError):
        return "the manifest names no config and layers"
    if not all(isinstance(b, str) and _DIGEST.match(b) for b in blobs):
        return "the manifest names a blob that is not a sha256 digest"
    if src.repository != dst.repository:
        for blob in dict.fromkeys(blobs):
            why = _ensure_blob(reg, src.repository, dst.repository, blob)
            if why:
                return why
    answer = reg("PUT", f"/v2/{dst.repository}/manifests/{dst.tag}", {"Content-Type": media}, body)
    if answer is None:
        return "the registry did not answer the manifest PUT"
    if answer[0] not in (200, 201):
        return f"PUT of the manifest answered {answer[0]}"
    return None


def _ensure_blob(reg: Session, src_repo: str, dst_repo: str, blob: str) -> str | None:
    """The blob is in `dst_repo`, mounted from `src_repo` if need be (the registry refuses manifests whose
    blobs the repository does not have)."""
    answer = reg("HEAD", f"/v2/{dst_repo}/blobs/{blob}")
    if answer is not None and answer[0] == 200:
        return None
    answer = reg("POST", f"/v2/{dst_repo}/blobs/uploads/?mount={blob}&from={src_repo}")
    if answer is not None and answer[0] == 201:
        return None
    if answer is not None and answer[0] == 202 and answer[1].get("location"):  # an upload began instead
        where = urlsplit(answer[1]["location"])
        reg("DELETE", where.path + (f"?{where.query}" if where.query else ""))
    return f"blob {blob} could not be mounted from {src_repo} ({answer[0] if answer else 'no answer'})"


def store_under_key(spec: StepSpec, plan: PinPlan, image_id: str, digest: str, workdir: Path,
                    env: Mapping[str, str], log: Callable[[str], None]) -> bool:
    """Tag the pushed result `digest` as `spec.key_ref` if its inputs were exactly the keyed ones.

    True when the key tag serves `digest`; every other outcome is logged and answers False (the build's
    result stands whatever happens here).
    """
    key_ref = spec.key_ref
    if key_ref is None:
        return False
    try:
        return _store(spec, key_ref, plan, image_id, digest, workdir, env, log)
    except Exception as e:  # noqa: BLE001 - never this build's failure
        log(f"warning: storing the result under its key failed: {type(e).__name__}: {e}")
        return False


def _store(spec: StepSpec, key_ref: str, plan: PinPlan, image_id: str, digest: str, workdir: Path,
           env: Mapping[str, str], log: Callable[[str], None]) -> bool:
    blocker = plan.key_blocker() or verify_pins(plan.used, env)
    if blocker:
        log(f"result not stored under its key ({key_ref}): {blocker}")
        return False
    start = time.monotonic()
    host = key_ref.partition("/")[0]
    sources = [ref for ref in spec.push if ref.partition("/")[0] == host]
    why = (copy_manifest(sources[0], digest, key_ref, env) if sources
           else "no --push reference in its registry")
    if why is None:
        log(f"stored as {key_ref}@{digest} (manifest copied in {(time.monotonic() - start) * 1000:.0f} ms)")
        return True
    log(f"key tag: cannot copy the manifest ({why}); pushing instead")
    keydir = workdir / "key-tag"
    keydir.mkdir(exist_ok=True)
    try:
        pushed = push_all(image_id, (key_ref,), keydir, {**env, "STAGEFLEET_PUSH_ATTEMPTS": PUSH_ATTEMPTS},
                          log)
    except PushError as e:
        log(f"warning: storing the result under its key failed: {e}")
        return False
    if pushed != digest:
        log(f"warning: {key_ref} got digest {pushed}, not the result's {digest}: not reported as stored")
        return False
    log(f"stored as {key_ref}@{digest} (pushed in {time.monotonic() - start:.2f} s)")
    return True
