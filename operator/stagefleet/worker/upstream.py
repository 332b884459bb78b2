"""Pure: the decisions behind `--upstream-wait` (an upstream group still building while we start).

Which images can be pulled before the upstreams exist, what a failed `buildah pull` of a not yet
pushed stage result means (keep waiting, or give up), and how the reference found is pinned to a
digest. The subprocess side is `stagefleet.worker.waiting`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from stagefleet.stages import Stage, parse_stage_graph

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

#: Pull errors no amount of waiting changes (checked first: "denied" beats "not found").
PERMANENT = ("unauthorized", "denied", "authentication required", "invalid reference", "name invalid",
             "repository name must", "server gave http response to https client", "x509:")
#: The upstream has not pushed yet: the registry does not know the tag (or the repository) yet.
MISSING = ("manifest unknown", "name unknown", "not found")

PullOutcome = Literal["missing", "transient", "permanent"]


@dataclass(frozen=True)
class Prefetchable:
    """An external image the group's own stages need, and the platform the build will ask for."""

    ref: str
    platform: str | None = None


def classify(message: str, ref: str = "") -> PullOutcome:
    """What a failed pull of an awaited reference means.

    missing: not pushed yet, keep polling; transient: registry unreachable or overloaded, keep polling
    (the pod's deadline or --upstream-timeout bounds it); permanent: fail now with exit code 15.
    The reference itself is blanked out first, so a repository called "denied-app" stays harmless.
    """
    low = message.lower()
    for name in (ref, repository(ref)) if ref else ():
        low = low.replace(name.lower(), "<ref>")
    if any(word in low for word in PERMANENT):
        return "permanent"
    if any(word in low for word in MISSING):
        return "missing"
    return "transient"


def pull_error(stderr: str, returncode: int) -> str:
    """buildah's own one-line reason from its stderr (the last `Error:` line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    return last.removeprefix("Error: ") or f"buildah pull exited {returncode}"


def repository(ref: str) -> str:
    """`host:port/repo:tag` → `host:port/repo` (the port's colon is not a tag separator)."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def pinned(ref: str, digest: str) -> str:
    """The reference `--build-context NAME=docker-image://...` gets: the tag's repository by digest."""
    if not DIGEST.match(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return f"{repository(ref)}@{digest}"


def parse_digest(output: str) -> str | None:
    """The first sha256 digest `buildah images --digests --format {{.Digest}}` printed."""
    for line in output.split():
        if DIGEST.match(line):
            return line
    return None


def group_stages(stages: Mapping[str, Stage], target: str, consumed: Collection[str]) -> list[Stage]:
    """The stages this group builds itself: reachable from target without entering a consumed stage."""
    seen: dict[str, Stage] = {}
    todo = [target]
    while todo:
        name = todo.pop()
        stage = stages.get(name)
        if stage is None or name in seen or name in consumed:
            continue
        seen[name] = stage
        todo += stage.depends_on
    return sorted(seen.values(), key=lambda s: s.index)


def external_images(text: str, *, target: str, build_args: Mapping[str, str], consumed: Collection[str],
                    platform: str | None = None) -> list[Prefetchable]:
    """FROM and COPY --from images of the group's own stages, to pull while the upstreams build; then
    the image at the bottom of each consumed stage's FROM chain.

    Stages consumed from upstreams are not built here, but their results sit on their chain's base
    image: with its layers pulled meanwhile, only the upstream's own layers are left to pull when it
    lands. A Dockerfile the stage parser rejects yields nothing: pre-pulling is an optimisation,
    buildah decides what builds.
    """
    try:
        graph = parse_stage_graph(text, target=target, build_args=dict(build_args), platform=platform)
    except Exception:  # noqa: BLE001 - DockerfileError and anything else: buildah reports it properly
        return []
    by_name = {s.name: s for s in graph.stages}
    found: dict[Prefetchable, None] = {}
    own = group_stages(by_name, graph.target, set(consumed))
    for stage in own:
        refs = ([stage.base] if stage.base and stage.base_stage is None else []) + list(stage.images)
        for ref in refs:
            if ref != "scratch" and ref not in consumed and ref not in by_name:
                found[Prefetchable(ref, stage.platform or platform)] = None  # FROM --platform wins
    for name in sorted({d for s in own for d in s.depends_on if d in consumed and d in by_name}):
        root = by_name[name]
        while root.base_stage is not None and root.base_stage in by_name:
            root = by_name[root.base_stage]
        if root.base and root.base_stage is None and root.base != "scratch" and root.base not in by_name:
            found[Prefetchable(root.base, root.platform or platform)] = None
    return list(found)


def waiting_line(stage: str, ref: str) -> str:
    return f"waiting for upstream stage {stage} at {ref}"


def ready_line(stage: str, ref: str, digest: str, seconds: float) -> str:
    return f"upstream {stage} ready: {ref}@{digest} after {seconds:.1f} s"


def timeout_message(pending: Mapping[str, str], timeout: float) -> str:
    """Names every stage still missing and where it was expected."""
    what = ", ".join(f"{stage} at {ref}" for stage, ref in pending.items())
    return f"upstream stage {what} did not appear within {timeout:g} s (--upstream-timeout)"
