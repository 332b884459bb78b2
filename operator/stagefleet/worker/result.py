"""Pure: the worker's result as JSON that fits a Kubernetes termination message (4096 bytes)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_BYTES = 4096


@dataclass(frozen=True)
class StageResult:
    name: str
    seconds: float
    cached_steps: int
    steps: int


@dataclass(frozen=True)
class ErrorInfo:
    kind: str
    message: str
    stage: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class Result:
    ok: bool
    group: str | None
    target: str
    image: str | None = None
    digest: str | None = None
    cached_steps: int = 0
    steps: int = 0
    stages: Sequence[StageResult] = field(default_factory=tuple)
    error: ErrorInfo | None = None
    upstreams: Mapping[str, str] = field(default_factory=dict)  # consumed stage → digest it was built from
    key: str | None = None  # --stage-key
    key_tagged: bool = False  # the result is stored under the key tag, with `digest`


def to_dict(r: Result) -> dict[str, Any]:
    d = {
        "ok": r.ok, "group": r.group, "target": r.target, "image": r.image, "digest": r.digest,
        "cachedSteps": r.cached_steps, "steps": r.steps,
        "stages": [{"name": s.name, "seconds": s.seconds, "cachedSteps": s.cached_steps, "steps": s.steps}
                   for s in r.stages],
        "error": None if r.error is None else {"kind": r.error.kind, "message": r.error.message,
                                               "stage": r.error.stage, "line": r.error.line},
    }
    if r.upstreams:  # only when upstreams were consumed: the shape of other results is unchanged
        d["upstreams"] = dict(r.upstreams)
    if r.key is not None:  # likewise only with --stage-key
        d["key"], d["keyTagged"] = r.key, r.key_tagged
    return d


def _dump(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


def render(r: Result, limit: int = MAX_BYTES) -> str:
    """One line of JSON, at most `limit` UTF-8 bytes.

    What gives way, in order: the error message's head (its tail names the failing output), then the
    per-stage list, then the upstream digests; `ok`, the digest, the key and the error kind always survive.
    """
    d = to_dict(r)
    text = _dump(d)
    if len(text.encode()) <= limit:
        return text
    if d["error"] is not None:
        msg: str = d["error"]["message"]
        while len(text.encode()) > limit and msg:
            over = len(text.encode()) - limit
            msg = msg[over + 16:]
            d["error"]["message"] = "…" + msg if msg else ""
            text = _dump(d)
    while len(text.encode()) > limit and d["stages"]:
        d["stages"].pop()
        text = _dump(d)
    if len(text.encode()) > limit and "upstreams" in d:
        del d["upstreams"]
        text = _dump(d)
    return text
