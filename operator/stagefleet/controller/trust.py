"""Pure: which worker pods the operator trusts (issue #14 item 2).

Labels say nothing about who made a pod: anyone who may create pods in the namespace can give one the
build's labels, owner reference and a crafted termination message. Only the ImageBuild's status is the
operator's alone (it is written through the status subresource), so trust is recorded there:

* ``podUID`` on a group's stage entries: the UID of the pod the operator created for the group's current
  attempt, taken from the create response and written by the same pass. A pod is the group's only when its
  UID is that one.
* ``podToken``: written *before* the pod is created (write-ahead), the SHA-256 of a random token that the
  pod carries in annotation ``stagefleet.io/creation-token``. It bridges the one gap the UID leaves: an
  operator that dies between creating a pod and recording its UID finds, after the restart, a pod whose UID
  is not recorded. It adopts it — and records its UID — only if it has the recorded name *and* a token that
  hashes to the recorded hash. Nobody else can have created such a pod: the token exists nowhere before the
  operator's own create, and that create takes the name.

Everything else with the build's labels is an impostor: it is deleted, its result is never read, and a
Warning event (UntrustedPod) names it. A group whose recorded attempt has neither a recorded UID nor a pod
with the token (the operator died after the write-ahead, before the create; or the create found the name
taken by an impostor) gets its pod created again. What is left: an operator that dies in the milliseconds
between a create and the status write that follows it, while someone who can read that pod deletes it and
recreates it under the same name with the same token before the operator is back.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

from stagefleet.controller.podspec import GROUP

ANNOTATION_TOKEN = f"{GROUP}/creation-token"
UNTRUSTED = "UntrustedPod"  # the Warning event's reason


def new_token() -> str:
    return secrets.token_hex(16)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def matches(token: str | None, recorded_hash: str | None) -> bool:
    if not token or not recorded_hash:
        return False
    return secrets.compare_digest(token_hash(token), recorded_hash)


def stamp(manifest: Mapping[str, Any], token: str) -> dict[str, Any]:
    """The pod manifest with its creation token (a copy)."""
    meta = dict(manifest.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION_TOKEN: token}
    return {**manifest, "metadata": meta}


def with_intents(status: Mapping[str, Any], hashes: Mapping[str, str]) -> dict[str, Any]:
    """``status`` (as `decide` returned it, the pods to create named on their groups) with each group in
    ``hashes`` (group id → `token_hash`) marked as about to get its pod: ``podToken`` set, no ``podUID``.
    Written before the creates."""
    stages = []
    for e in status.get("stages") or ():
        gid = str(e.get("group"))
        if gid in hashes:
            e = {k: v for k, v in e.items() if k != "podUID"}
            e["podToken"] = hashes[gid]
        stages.append(e)
    return {**status, "stages": stages}


def with_created(
    status: Mapping[str, Any], created: Mapping[str, tuple[int, str, str, str]]
) -> dict[str, Any]:
    """``status`` with the pods the operator has just created recorded on their groups: ``created`` maps
    group id → (attempt, pod name, UID, token hash). Such a group is Pending on that attempt and pod (if the
    status did not say so yet: the input of a second `decide` in the same pass), with no refusal pending."""
    stages = []
    for e in status.get("stages") or ():
        gid = str(e.get("group"))
        if gid in created:
            attempt, name, uid, hashed = created[gid]
            e = {k: v for k, v in e.items() if k not in ("rejections", "retryAt")}
            if e.get("phase") not in ("Pending", "Running") or e.get("attempts") != attempt:
                e["phase"] = "Pending"
                e.pop("message", None)
            e.update({"attempts": attempt, "pod": name, "podUID": uid, "podToken": hashed})
        stages.append(e)
    return {**status, "stages": stages}


def untrusted_message(name: str, group: str, attempt: int) -> str:
    return (
        f"pod {name} carries this build's labels (group {group}, attempt {attempt}) but is not a pod the "
        "operator created for it (its UID is not the one recorded in status): deleted, its result ignored"
    )
