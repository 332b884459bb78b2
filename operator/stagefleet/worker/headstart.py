"""Pure: what a worker can build while it waits for its upstreams (`--upstream-wait`).

An early-started worker waits for the upstream groups' results, but only the instructions that use them
need to wait: a final stage's `RUN apt-get install` before its `COPY --from=build` does not. BuildKit and
`buildah --jobs` run such steps beside the other stages; so does the worker, by building, while it waits,
the Dockerfile cut just before the first instruction of its own stages that needs an awaited stage. The
steps land in the pod's layer cache (and the step cache repository), so the real build finds them all as
cache hits once the upstreams are in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from stagefleet.stages import DockerfileError, Stage, StageGraph, parse_stage_graph

__all__ = ["HeadStart", "head_start", "own_stages"]


@dataclass(frozen=True)
class HeadStart:
    dockerfile: str  # the Dockerfile's text up to (not including) line `cut`
    target: str  # the stage to build from it (plan name)
    cut: int  # the first line that needs an awaited stage
    stage: str  # the stage that line is in


def own_stages(graph: StageGraph, consumed: Collection[str]) -> list[Stage]:
    """The stages this worker builds itself: the target's, without the consumed ones and what is behind
    them (other groups build those). File order."""
    by_name = {s.name: s for s in graph.stages}
    seen: set[str] = set()
    todo = [graph.target]
    while todo:
        name = todo.pop()
        if name in seen or name in consumed:
            continue
        seen.add(name)
        todo.extend(by_name[name].depends_on)
    return [s for s in graph.stages if s.name in seen]


def head_start(text: str, *, filename: str, target: str, awaited: Collection[str],
               consumed: Collection[str], build_args: Mapping[str, str],
               platform: str | None = None) -> HeadStart | None:
    """The part of the build that does not need the ``awaited`` stages, when there is one worth building:
    at least one instruction besides FROM (the base image's pull is `Prefetch`'s). ``consumed`` is every
    upstream stage (awaited or already found). None when the Dockerfile does not parse: the real build
    reports that."""
    try:
        graph = parse_stage_graph(text, filename=filename, target=target, build_args=build_args,
                                  platform=platform)
    except DockerfileError:
        return None
    own = own_stages(graph, set(consumed))
    uses = [(line, s) for s in own for dep, line in s.dep_lines if dep in awaited]
    if not uses:
        return None
    cut, at = min(uses, key=lambda u: u[0])
    text_before = _before(text, cut)
    if _builds_something(text_before, filename, at.name, build_args, platform):
        return HeadStart(text_before, at.name, cut, at.name)
    # nothing of that stage comes before the cut: the latest own stage before it, if any
    for s in reversed([s for s in own if s.index < at.index]):
        if _builds_something(text_before, filename, s.name, build_args, platform):
            return HeadStart(text_before, s.name, cut, at.name)
    return None


def _builds_something(text: str, filename: str, target: str, build_args: Mapping[str, str],
                      platform: str | None) -> bool:
    """Whether ``target`` in the cut ``text`` has an instruction besides FROM."""
    try:
        graph = parse_stage_graph(text, filename=filename, target=target, build_args=build_args,
                                  platform=platform)
    except DockerfileError:
        return False
    return any(s.name == target and s.instructions > 1 for s in graph.stages)


def _before(text: str, line: int) -> str:
    """The text of the lines before 1-based ``line``."""
    return "".join(text.splitlines(keepends=True)[: line - 1])
