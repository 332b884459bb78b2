"""Pure: image references of a local build (its stage repository, default tag, hosts) and its options'
K=V values."""

from __future__ import annotations

import datetime as _dt
import secrets as _secrets
import time
from collections.abc import Iterable

_LOOPBACK = ("127.", "localhost", "[::1]")


def new_build_id(now: float | None = None) -> str:
    """A sortable, registry-safe id: UTC time plus randomness (`20261127-215800-a1b2c3`)."""
    stamp = _dt.datetime.fromtimestamp(time.time() if now is None else now, tz=_dt.UTC)
    return f"{stamp:%Y%m%d-%H%M%S}-{_secrets.token_hex(3)}"


def stage_repo(registry: str, build_id: str) -> str:
    """Where intermediate group results go: one repository per build, one tag per group."""
    return f"{registry}/stagefleet/{build_id}/stages"


def default_tag(registry: str, build_id: str) -> str:
    """The final image reference when the user names none."""
    return f"{registry}/stagefleet/local:{build_id}"


def ref_host(ref: str) -> str | None:
    """The registry host of a reference, or None for a Docker Hub short name."""
    first, sep, _ = ref.partition("/")
    if not sep:
        return None
    if "." in first or ":" in first or first == "localhost":
        return first
    return None


def repository_of(ref: str) -> str:
    """A reference without its tag and digest (`host:5000/a/b:t@sha256:..` → `host:5000/a/b`)."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def is_loopback(host: str) -> bool:
    return host.startswith(_LOOPBACK)


def insecure_hosts(refs: Iterable[str | None]) -> list[str]:
    """Loopback registries among `refs`: plain HTTP, as the throwaway registry and tests use."""
    hosts = set()
    for r in refs:
        host = (r if "/" not in r else ref_host(r)) if r else None
        if host and is_loopback(host):
            hosts.add(host)
    return sorted(hosts)


def parse_kv(spec: str, what: str) -> tuple[str, str]:
    """`K=V` → (K, V); the key must not be empty."""
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise ValueError(f"{what} must look like KEY=VALUE, got {spec!r}")
    return key, value


def parse_secret(spec: str) -> tuple[str, str]:
    """`id=ID,src=FILE` (also `source=`, `type=file`; a bare `ID` means the file `ID`) → (ID, FILE)."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        k, sep, v = part.partition("=")
        if not sep:
            if len(spec.split(",")) == 1:
                return k, k
            raise ValueError(f"--secret: expected id=ID,src=FILE, got {spec!r}")
        fields[k.strip()] = v
    if fields.get("type", "file") != "file":
        raise ValueError(f"--secret: only type=file is supported, got {spec!r}")
    sid = fields.get("id")
    src = fields.get("src", fields.get("source"))
    if not sid or not src:
        raise ValueError(f"--secret: expected id=ID,src=FILE, got {spec!r}")
    return sid, src
