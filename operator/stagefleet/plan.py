"""Stage graph → build plan: which stages run together in one worker pod, and in which order.

Pure. A plain chain of stages (a stage whose only stage-dependency is X, where X has no other
dependent) stays in X's group, so no registry round trip is spent between them; independent branches
become separate groups that can run at the same time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stagefleet.stages import Stage, StageGraph

__all__ = ["Group", "Plan", "make_plan", "plan_to_json", "render_dot", "render_mermaid", "render_text"]


@dataclass(frozen=True)
class Group:
    id: str
    stages: tuple[str, ...]
    after: tuple[str, ...]
    consumes: tuple[tuple[str, str], ...]
    secrets: tuple[str, ...]
    ssh: tuple[str, ...]
    wave: int
    critical: bool
    weight: int

    @property
    def target(self) -> str:
        """The stage buildah builds with --target (the end of the chain)."""
        return self.stages[-1]


@dataclass(frozen=True)
class Plan:
    graph: StageGraph
    groups: tuple[Group, ...]
    critical_path: tuple[str, ...]
    final_group: str


def make_plan(graph: StageGraph) -> Plan:
    """Partition the built stages into chain groups, then order them into waves."""
    stages = graph.built  # file order is a topological order: built stages only use earlier ones
    by_name = {s.name: s for s in stages}
    chains = _chains(stages, _dependents(stages))
    group_of = {name: f"g{i}" for i, chain in enumerate(chains, 1) for name in chain}
    critical = _critical_path(stages, by_name, graph.target)
    on_path = set(critical)
    groups: list[Group] = []
    waves: dict[str, int] = {}
    for i, chain in enumerate(chains, 1):
        group = _group(f"g{i}", chain, by_name, group_of, waves, on_path)
        waves[group.id] = group.wave
        groups.append(group)
    return Plan(graph=graph, groups=tuple(groups), critical_path=critical, final_group=group_of[graph.target])


def _dependents(stages: Sequence[Stage]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {s.name: [] for s in stages}
    for s in stages:
        for dep in s.depends_on:
            out[dep].append(s.name)
    return out


def _chains(stages: Sequence[Stage], dependents: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Greedy in file order: a stage joins the chain of its only dependency if it is that one's only
    dependent. Chains come out ordered by their first stage in the file."""
    chain_of: dict[str, list[str]] = {}
    chains: list[list[str]] = []
    for s in stages:
        if len(s.depends_on) == 1 and dependents[s.depends_on[0]] == [s.name]:
            chain = chain_of[s.depends_on[0]]
        else:
            chain = []
            chains.append(chain)
        chain.append(s.name)
        chain_of[s.name] = chain
    return chains


def _critical_path(stages: Sequence[Stage], by_name: Mapping[str, Stage], target: str) -> tuple[str, ...]:
    """Longest path to the target by instruction count; ties go to the earlier stage in the file."""
    best: dict[str, int] = {}
    via: dict[str, str | None] = {}
    for s in stages:
        prev = max(s.depends_on, key=lambda d: (best[d], -by_name[d].index), default=None)
        best[s.name] = s.instructions + (best[prev] if prev else 0)
        via[s.name] = prev
    path: list[str] = []
    node: str | None = target
    while node is not None:
        path.append(node)
        node = via[node]
    return tuple(reversed(path))


def _group(
    gid: str,
    chain: Sequence[str],
    by_name: Mapping[str, Stage],
    group_of: Mapping[str, str],
    waves: Mapping[str, int],
    on_path: set[str],
) -> Group:
    members = [by_name[n] for n in chain]
    upstream = sorted({d for s in members for d in s.depends_on if group_of[d] != gid})
    after = tuple(sorted({group_of[d] for d in upstream}, key=_gid_key))
    return Group(
        id=gid,
        stages=tuple(chain),
        after=after,
        consumes=tuple((d, group_of[d]) for d in upstream),
        secrets=tuple(sorted({u.id for s in members for u in s.secrets})),
        ssh=tuple(sorted({i for s in members for i in s.ssh})),
        wave=1 + max((waves[g] for g in after), default=-1),
        critical=any(n in on_path for n in chain),
        weight=sum(s.instructions for s in members),
    )


def _gid_key(gid: str) -> int:
    """Group ids sort numerically (g2 before g10)."""
    return int(gid[1:])


# --------------------------------------------------------------------------------------------------
# rendering


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The documented `stagefleet plan --format json` shape; tooling depends on it."""
    return {
        "target": plan.graph.target,
        "stages": [_stage_json(s) for s in plan.graph.built],
        "skipped": list(plan.graph.skipped),
        "groups": [_group_json(g) for g in plan.groups],
        "criticalPath": list(plan.critical_path),
    }


def _stage_json(s: Stage) -> dict[str, Any]:
    return {
        "name": s.name,
        "index": s.index,
        "base": s.base,
        "dependsOn": list(s.depends_on),
        "images": list(s.images),
        "secrets": sorted({u.id for u in s.secrets}),
        "ssh": list(s.ssh),
        "platform": s.platform,
        "lines": list(s.lines),
    }


def _group_json(g: Group) -> dict[str, Any]:
    return {
        "id": g.id,
        "stages": list(g.stages),
        "after": list(g.after),
        "consumes": [{"stage": stage, "group": group} for stage, group in g.consumes],
        "secrets": list(g.secrets),
        "ssh": list(g.ssh),
        "wave": g.wave,
        "critical": g.critical,
        "weight": g.weight,
    }


def render_json(plan: Plan) -> str:
    return json.dumps(plan_to_json(plan), indent=2)


def render_text(plan: Plan) -> str:
    """A readable tree: waves, their groups, and each group's stages."""
    by_name = {s.name: s for s in plan.graph.built}
    lines = [f"target: {plan.graph.target}"]
    for wave in range(1 + max(g.wave for g in plan.groups)):
        lines.append(f"wave {wave}:")
        for g in (g for g in plan.groups if g.wave == wave):
            lines.append(_group_line(g))
            lines.extend(_stage_lines(by_name[n], last=n == g.stages[-1]) for n in g.stages)
    lines.append("critical path: " + " -> ".join(plan.critical_path))
    if plan.graph.skipped:
        lines.append("skipped: " + ", ".join(plan.graph.skipped))
    return "\n".join(lines)


def _group_line(g: Group) -> str:
    extra = [f"after {', '.join(g.after)}"] if g.after else []
    extra += [f"secrets {', '.join(g.secrets)}"] if g.secrets else []
    extra += [f"ssh {', '.join(g.ssh)}"] if g.ssh else []
    extra += ["critical"] if g.critical else []
    suffix = f" ({'; '.join(extra)})" if extra else ""
    return f"  {g.id} [{g.weight} instructions]{suffix}"


def _stage_lines(s: Stage, *, last: bool) -> str:
    branch = "└─" if last else "├─"
    source = f"FROM {s.base}" if s.base is not None else f"FROM stage {s.base_stage}"
    uses = [d for d in s.depends_on if d != s.base_stage] + list(s.images)
    tail = f", uses {', '.join(uses)}" if uses else ""
    platform = f" --platform={s.platform}" if s.platform else ""
    return f"    {branch} {s.name}  ({source}{platform}{tail}; lines {s.lines[0]}-{s.lines[1]})"


def render_dot(plan: Plan) -> str:
    """Graphviz: one cluster per group, an edge per stage dependency."""
    out = ["digraph plan {", "  rankdir=LR;", "  node [shape=box];"]
    for g in plan.groups:
        color = ' color="red"' if g.critical else ""
        out.append(f'  subgraph "cluster_{g.id}" {{')
        out.append(f'    label="{g.id} (wave {g.wave})";{color}')
        out.extend(f'    "{n}";' for n in g.stages)
        out.append("  }")
    for s in plan.graph.built:
        out.extend(f'  "{d}" -> "{s.name}";' for d in s.depends_on)
    out.append("}")
    return "\n".join(out)


def render_mermaid(plan: Plan) -> str:
    """Mermaid flowchart: one subgraph per group, an edge per stage dependency."""
    ids = {s.name: f"s{s.index}" for s in plan.graph.built}
    out = ["flowchart LR"]
    for g in plan.groups:
        out.append(f'  subgraph {g.id}["{g.id} (wave {g.wave})"]')
        out.extend(f'    {ids[n]}["{n}"]' for n in g.stages)
        out.append("  end")
    for s in plan.graph.built:
        out.extend(f"  {ids[d]} --> {ids[s.name]}" for d in s.depends_on)
    return "\n".join(out)
