"""Stage reuse at plan time, for the operator and local mode: resolve the base images, key every stage, find
the results that exist, and write output tags from a stored result.

A group whose target stage's key tag (`stagekey.key_tag`) exists in the build's cache repository needs no
worker: its result is that image. The keys are pure (`stagekey.stage_keys`); this module does the registry
I/O around them, each request with a short timeout, and never fails a build: anything it cannot resolve
(a Docker Hub short name, a registry that wants a bearer token, an unreachable host) leaves the stages
that depend on it unkeyed, and they are built as before.

When the final group is found too, the output tags are written by copying the result's manifest in the
registry (`copy_image`): no worker, no layer transfer.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from stagefleet import registryclient as reg
from stagefleet.stagekey import ContextIndex, KeyResult, key_tag, stage_keys
from stagefleet.stages import StageGraph
from stagefleet.worker.registry import parse_reference

LOOKUP_TIMEOUT = 3.0

#: kubernetes.io/arch values of Go's GOARCH names, from Python's machine names.
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def machine_arch(machine: str | None = None) -> str:
    """This machine's architecture as Go names it (``amd64``): what a build without a platform targets."""
    name = (machine if machine is not None else _platform.machine()).lower()
    return _ARCH.get(name, name)


class KeyedGroup(Protocol):
    """What the lookup needs of a plan group (the operator's `GroupPlan`, `stagefleet.plan.Group`)."""

    @property
    def id(self) -> str: ...
    @property
    def stages(self) -> tuple[str, ...]: ...  # the last one is the target, whose key stands for the group


class KeyedPlan(Protocol):
    @property
    def groups(self) -> Sequence[KeyedGroup]: ...


@dataclass
class Reuse:
    """What the plan-time lookup found: per stage its key (or why none), the base images resolved (image
    → digest, pinned in the workers of keyed groups), and per group the digest of its reusable result."""

    keys: dict[str, KeyResult] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)
    found: dict[str, str] = field(default_factory=dict)
    image: dict[str, str] = field(default_factory=dict)  # group → REPO:stage-KEY of the found result
    notes: list[str] = field(default_factory=list)


ClientFor = Callable[[str], reg.Registry]


def resolve_images(refs: Iterable[str], client_for: ClientFor) -> tuple[dict[str, str], list[str]]:
    """image reference → manifest digest for every reference a registry answers for; (digests, notes on
    those left unresolved). A reference by digest is its own answer."""
    out: dict[str, str] = {}
    notes: list[str] = []
    for ref in sorted(set(refs)):
        if ref == "scratch":
            continue
        name, at, digest = ref.partition("@")
        if at and digest.startswith("sha256:"):
            out[ref] = digest
            continue
        parsed = parse_reference(ref)
        if parsed is None:
            notes.append(f"{ref}: names no registry host that can be asked")
            continue
        try:
            found = client_for(parsed.host).digest(parsed.repository, parsed.tag)
        except reg.RegistryError as e:
            notes.append(f"{ref}: {e}")
            continue
        if found is None:
            notes.append(f"{ref}: not found")
            continue
        out[ref] = found
    return out, notes


def find_results(
    plan: KeyedPlan, keys: Mapping[str, KeyResult], cache_repo: str, client_for: ClientFor
) -> tuple[dict[str, str], list[str]]:
    """group id → digest of the result stored under its target's key tag, for the groups that have one."""
    where = reg.split_repository(cache_repo)
    if where is None:
        return {}, [f"{cache_repo}: names no registry host"]
    host, path = where
    found: dict[str, str] = {}
    notes: list[str] = []
    for g in plan.groups:
        key = keys.get(g.stages[-1])
        if key is None or key.key is None:
            continue
        try:
            digest = client_for(host).digest(path, key_tag(key.key))
        except reg.RegistryError as e:
            notes.append(f"looking up {g.stages[-1]}: {e}")
            if e.transient:
                break  # an unreachable registry answers no other lookup either
            continue
        if digest is not None:
            found[g.id] = digest
    return found, notes


def lookup(
    graph: StageGraph,
    plan: KeyedPlan,
    *,
    platform: str,
    context: ContextIndex | None,
    cache_repo: str,
    client_for: ClientFor,
    find: bool = True,
) -> Reuse:
    """Keys, resolved bases and found results of one planned build (registry I/O, bounded timeouts).
    ``find=False`` keys and resolves only: every group is built, and stores its result under its key."""
    refs = {s.base for s in graph.built if s.base and s.base_stage is None}
    refs |= {i for s in graph.built for i in s.images}
    bases, notes = resolve_images((r for r in refs if r), client_for)
    keys = stage_keys(graph, platform=platform, base_digests=bases, context=context)
    found, more = find_results(plan, keys, cache_repo, client_for) if find else ({}, [])
    targets = {g.id: g.stages[-1] for g in plan.groups}
    image = {}
    for gid in found:
        key = keys[targets[gid]].key
        assert key is not None
        image[gid] = f"{cache_repo}:{key_tag(key)}"
    return Reuse(keys=keys, bases=bases, found=found, image=image, notes=notes + more)


def copy_image(client: reg.Registry, source: str, digest: str, targets: Iterable[str]) -> None:
    """Put the manifest ``source``@``digest`` (same registry as ``client``) under every ``targets`` ref
    (``host/repo:tag``): its blobs are mounted across repositories, then the manifest is PUT as it is, so
    every target names the very same digest. Raises `RegistryError`."""
    src = reg.split_repository(source.rpartition(":")[0] if _has_tag(source) else source)
    if src is None:
        raise reg.RegistryError(f"{source}: names no registry host")
    media_type, body = client.manifest(src[1], digest)
    for target in targets:
        parsed = parse_reference(target)
        if parsed is None or parsed.host != client.host:
            raise reg.RegistryError(f"{target}: not in registry {client.host}")
        for blob in reg.manifest_blobs(body):
            client.mount_blob(parsed.repository, blob, src[1])
        put = client.put_manifest(parsed.repository, parsed.tag, media_type, body)
        if put != digest:
            raise reg.RegistryError(f"{target}: the registry stored {put}, not {digest}")


def _has_tag(ref: str) -> bool:
    return ":" in ref.rsplit("/", 1)[-1]
