"""Stage reuse at plan time: resolve the base images, key every stage, find the results that exist.

A group whose target stage's key tag (`stagekey.key_tag`) exists in the build's cache repository needs no
pod: its result is that image. The keys are pure (`stagekey.stage_keys`); this module does the registry
I/O around them, each request with a short timeout, and never fails a build: anything it cannot resolve
(a Docker Hub short name, a registry that wants a bearer token, an unreachable host) leaves the stages
that depend on it unkeyed, and they are built as before.

When the final group is found too, the output tags are written by copying the result's manifest in the
registry (`copy_image`): no pod, no layer transfer.
"""

from __future__ import annotations

import logging
import platform as _platform
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stagefleet.controller import registry as reg
from stagefleet.controller.model import PlanView
from stagefleet.stagekey import ContextIndex, KeyResult, key_tag, stage_keys
from stagefleet.stages import StageGraph
from stagefleet.worker.registry import parse_reference

log = logging.getLogger("stagefleet.operator")

LOOKUP_TIMEOUT = 3.0

#: kubernetes.io/arch values of Go's GOARCH names, from Python's machine names.
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def build_arch(node_selector: Mapping[str, str]) -> str:
    """The architecture a build's keys are computed for: its nodeSelector's ``kubernetes.io/arch``, else the
    operator's own. Workers of keyed groups are held to it with a nodeSelector, so the key says what was
    built (a pod on another architecture's node would build another platform's image)."""
    chosen = node_selector.get("kubernetes.io/arch")
    if chosen:
        return chosen
    machine = _platform.machine().lower()
    return _ARCH.get(machine, machine)


@dataclass
class Reuse:
    """What the plan-time lookup found: per stage its key (or why none), the base images resolved (image
    → digest, pinned in the workers of keyed groups), and per group the digest of its reusable result."""

    keys: dict[str, KeyResult] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)
    found: dict[str, str] = field(default_factory=dict)
    image: dict[str, str] = field(default_factory=dict)  # group → REPO:stage-KEY of the found result
    output_copied: bool = False
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
            notes.append(f"{ref}: names no registry host the operator can ask")
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
    plan: PlanView, keys: Mapping[str, KeyResult], cache_repo: str, client_for: ClientFor
) -> tuple[dict[str, str], list[str]]:
    """group id → digest of the result stored under its target's key tag, for the groups that have one."""
    where = reg.split_repository(cache_repo)
    if where is None:
        return {}, [f"{cache_repo}: names no registry host"]
    host, path = where
    found: dict[str, str] = {}
    notes: list[str] = []
    for g in plan.groups:
        key = keys.get(g.target)
        if key is None or key.key is None:
            continue
        try:
            digest = client_for(host).digest(path, key_tag(key.key))
        except reg.RegistryError as e:
            notes.append(f"looking up {g.target}: {e}")
            if e.transient:
                break  # an unreachable registry answers no other lookup either
            continue
        if digest is not None:
            found[g.id] = digest
    return found, notes


def lookup(
    graph: StageGraph,
    plan: PlanView,
    *,
    platform: str,
    context: ContextIndex | None,
    cache_repo: str,
    client_for: ClientFor,
) -> Reuse:
    """Keys, resolved bases and found results of one planned build (registry I/O, bounded timeouts)."""
    refs = {s.base for s in graph.built if s.base and s.base_stage is None}
    refs |= {i for s in graph.built for i in s.images}
    bases, notes = resolve_images((r for r in refs if r), client_for)
    keys = stage_keys(graph, platform=platform, base_digests=bases, context=context)
    found, more = find_results(plan, keys, cache_repo, client_for)
    image = {}
    for gid in found:
        key = keys[plan.group(gid).target].key
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


def mark(status: Mapping[str, Any], plan: PlanView, found: Reuse, now: str) -> dict[str, Any]:
    """A planned status (`status.planned_status`) with the lookup's outcome recorded. Pure.

    Every keyed stage's entry gets ``key``; every stage of a found group is Succeeded with ``reused`` (the
    result's digest) and its target the ``image`` and ``digest`` consumers build from, so `status.decide`
    starts no pod for it. The resolved base images go to ``status.baseImages`` (the pins of keyed
    workers), and a short note why stages are not keyed, when some are not, to ``status.reuse``."""
    out = dict(status)
    stages: list[dict[str, Any]] = []
    for e in status.get("stages") or ():
        e = dict(e)
        name = str(e.get("name"))
        result = found.keys.get(name)
        if result is not None and result.key is not None:
            e["key"] = result.key
        gid = str(e.get("group"))
        if gid in found.found:
            digest = found.found[gid]
            e.update({"phase": "Succeeded", "reused": digest, "completionTime": now})
            e.pop("message", None)
            if name == plan.group(gid).target:
                e.update({"digest": digest, "image": found.image[gid]})
        stages.append(e)
    out["stages"] = stages
    if found.bases:
        out["baseImages"] = [{"image": i, "digest": d} for i, d in sorted(found.bases.items())]
    unkeyed = sorted({r.reason for r in found.keys.values() if r.key is None and r.reason})
    out["reuse"] = {
        "keyed": sum(1 for r in found.keys.values() if r.key is not None),
        "reused": sum(len(plan.group(g).stages) for g in found.found),
        **({"notes": [*unkeyed, *found.notes][:10]} if unkeyed or found.notes else {}),
    }
    return out


def recorded(status: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(stage → key, image → digest) as `mark` recorded them in status. Pure."""
    keys = {
        str(e.get("name")): str(e["key"])
        for e in status.get("stages") or ()
        if isinstance(e, Mapping) and isinstance(e.get("key"), str)
    }
    bases = {
        str(b.get("image")): str(b.get("digest"))
        for b in status.get("baseImages") or ()
        if isinstance(b, Mapping) and b.get("image") and b.get("digest")
    }
    return keys, bases
