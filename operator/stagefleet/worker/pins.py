"""Pure: which images a group builds from, whether `--pin-image` pins each, and how buildah uses the pins.

What buildah 1.28.2 does here (verified with the local registry): `--build-context NAME=docker-image://
REPO@sha256:HEX` replaces an *image* called NAME as it replaces a stage — `FROM NAME`, `COPY --from=NAME`
and `RUN --mount=...,from=NAME` all build from the pinned digest, also when NAME is `127.0.0.1:5000/base:1`
(':' and '/' are fine). It looks FROM's word up *before* expanding ARGs, though: `FROM ${BASE}` is replaced
only by a context named literally `${BASE}`, so the worker passes the pin under that raw word too
(`COPY --from=${X}` does not build at all in 1.28). That is buildah's behaviour, not its promise: after the
build the worker also checks that no pinned name was resolved by its tag to another digest
(`check_listing`), and stores no key tag for a result it cannot vouch for.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from stagefleet.stages import parse_stage_graph
from stagefleet.worker.spec import ImagePin, by_digest
from stagefleet.worker.upstream import group_stages


@dataclass(frozen=True)
class PinPlan:
    """The `--build-context` entries that pin images, and what the key tag's decision needs."""

    contexts: Mapping[str, str] = field(default_factory=dict)  # context name → REPO@sha256:HEX
    used: Mapping[str, str] = field(default_factory=dict)  # pinned images the group uses → pinned ref
    unpinned: tuple[str, ...] = ()  # images the group uses that nothing pins
    ignored: tuple[str, ...] = ()  # pins that name a stage of the Dockerfile: the stage wins, as in buildah
    problem: str | None = None  # why the group's images are unknown (its key cannot be vouched for)

    def key_blocker(self) -> str | None:
        """Why the result must not be stored under its content key before building, or None."""
        if self.problem:
            return self.problem
        if self.unpinned:
            return "not every image it builds from is pinned (--pin-image): " + ", ".join(self.unpinned)
        return None


def plan_pins(text: str, pins: Sequence[ImagePin], *, from_words: Sequence[str], target: str,
              build_args: Mapping[str, str], consumed: Collection[str],
              platform: str | None = None) -> PinPlan:
    """Contexts for every pin (under its name, and under the raw word of each `FROM ${ARG}` that expands to
    it), and the images of the group's own stages: pinned (to check after the build) or not.

    Images named by digest in the Dockerfile are pinned by themselves; consumed stages come by digest.
    """
    pinned = {p.ref: by_digest(p.pinned) for p in pins}
    try:
        graph = parse_stage_graph(text, target=target, build_args=dict(build_args), platform=platform)
    except Exception as e:  # noqa: BLE001 - buildah judges what builds; only the key tag depends on this
        return PinPlan(contexts=pinned, problem=f"its stages could not be resolved ({e})")
    stage_refs = {s.name for s in graph.stages} | {str(s.index) for s in graph.stages}
    ignored = tuple(ref for ref in pinned if ref in stage_refs)
    contexts = {ref: image for ref, image in pinned.items() if ref not in ignored}
    for stage in graph.stages:
        raw = from_words[stage.index] if stage.index < len(from_words) else ""
        if stage.base_stage is None and stage.base in contexts and "$" in raw and "=" not in raw:
            contexts.setdefault(raw, contexts[stage.base])
    by_name = {s.name: s for s in graph.stages}
    used: dict[str, str] = {}
    unpinned: dict[str, None] = {}
    for stage in group_stages(by_name, graph.target, set(consumed)):
        refs = ([stage.base] if stage.base and stage.base_stage is None else []) + list(stage.images)
        for ref in refs:
            if ref == "scratch" or "@" in ref:  # a base that is a stage has base_stage set
                continue
            if ref in contexts:
                used[ref] = contexts[ref]
            else:
                unpinned[ref] = None
    return PinPlan(contexts=contexts, used=used, unpinned=tuple(unpinned), ignored=ignored)


def check_listing(ref: str, pinned: str, listing: str) -> str | None:
    """Why `buildah images --json REF` shows the build may not have used the pin, or None.

    An image stored under REF's own name was resolved by its tag (a pull by digest is stored under
    REPO@sha256:...); that is harmless only when the tag named the pinned digest anyway.
    """
    want = pinned.rpartition("@")[2]
    try:
        images = json.loads(listing)
        found = [str(i.get("digest", "")) for i in images]
    except (ValueError, TypeError, AttributeError):
        return f"cannot read buildah's image list for {ref}"
    other = [d for d in found if d != want]
    if other:
        return f"{ref} was resolved by its tag to {other[0] or 'an undigested image'}, not the pinned {want}"
    return None
