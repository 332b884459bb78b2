"""Content keys of stage results: a stage whose inputs did not change is not built again.

A stage's key is a hash of exactly what determines its result, as BuildKit's cache keys are, but per
stage: the digest of its base image, its instructions and the values of the build arguments it
declares, the target platform, the ids (never the values) of the secrets and SSH agents it mounts, the
content of every context path it reads, and the keys of the stages it consumes. The worker tags each
group's result with its target stage's key in the build's cache repository (`key_tag`); before it
starts a pod, the operator (and local mode) looks the key up and reuses a result that exists.

Pure: no I/O.
"""

from __future__ import annotations

import re

__all__ = ["KEY_RE", "KEY_TAG_PREFIX", "key_tag"]

KEY_TAG_PREFIX = "stage-"
KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def key_tag(key: str) -> str:
    """The tag a stage result is stored under in the cache repository: ``stage-<key>`` (70 characters,
    within the registry's 128). Stage tags of a running build (``stages:<name>-<uid>-...``) live in
    another repository and are removed when the build ends; key tags stay, as the cache does."""
    if not KEY_RE.match(key):
        raise ValueError(f"not a stage key (64 hex digits): {key!r}")
    return KEY_TAG_PREFIX + key
