"""Property tests on generated DAG-shaped Dockerfiles.

The generator keeps its own record of the graph it wrote (the oracle); the properties check the plan
against it: dependencies come first, plain chains are never split, and planning is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from stagefleet.plan import Plan, make_plan, plan_to_json
from stagefleet.stages import parse_stage_graph


@dataclass(frozen=True)
class Generated:
    text: str
    deps: dict[str, set[str]]  # stage → stages it needs, as written
    order: list[str]


@st.composite
def dockerfiles(draw: st.DrawFn) -> Generated:
    """Stages s0..sN; each FROMs an image or an earlier stage and copies/mounts from earlier ones."""
    n = draw(st.integers(min_value=1, max_value=14))
    lines: list[str] = []
    deps: dict[str, set[str]] = {}
    order: list[str] = []
    for i in range(n):
        name = f"s{i}"
        earlier = order[:]
        base = draw(st.sampled_from(earlier)) if earlier and draw(st.booleans()) else "alpine"
        lines.append(f"FROM {base} AS {name}")
        mine = {base} if base != "alpine" else set()
        for _ in range(draw(st.integers(0, 3))):
            lines.append(f"RUN echo {i}")
        for src in draw(st.lists(st.sampled_from(earlier), max_size=3)) if earlier else []:
            how = draw(st.sampled_from(["name", "index", "mount"]))
            if how == "name":
                lines.append(f"COPY --from={src.upper()} /x /x")
            elif how == "index":
                lines.append(f"COPY --from={order.index(src)} /x /x")
            else:
                lines.append(f"RUN --mount=type=bind,from={src},target=/m true")
            mine.add(src)
        deps[name] = mine
        order.append(name)
    return Generated(text="\n".join(lines) + "\n", deps=deps, order=order)


def _plan(g: Generated) -> Plan:
    return make_plan(parse_stage_graph(g.text, build_platform="linux/amd64"))


def _oracle_reachable(g: Generated) -> set[str]:
    seen, todo = {g.order[-1]}, [g.order[-1]]
    while todo:
        for d in g.deps[todo.pop()]:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


@settings(max_examples=300, deadline=None)
@given(dockerfiles())
def test_graph_matches_what_was_written(g: Generated) -> None:
    p = _plan(g)
    reachable = _oracle_reachable(g)
    assert {s.name for s in p.graph.built} == reachable
    assert set(p.graph.skipped) == set(g.order) - reachable
    for s in p.graph.built:
        assert set(s.depends_on) == g.deps[s.name]


@settings(max_examples=300, deadline=None)
@given(dockerfiles())
def test_every_dependency_is_built_before_its_dependent(g: Generated) -> None:
    p = _plan(g)
    group_of = {name: grp for grp in p.groups for name in grp.stages}
    assert sorted(group_of) == sorted(s.name for s in p.graph.built)  # each built stage in one group
    for grp in p.groups:
        for pos, name in enumerate(grp.stages):
            for dep in g.deps[name]:
                up = group_of[dep]
                if up is grp:
                    assert grp.stages.index(dep) < pos
                else:
                    assert up.id in grp.after and up.wave < grp.wave
                    assert (dep, up.id) in grp.consumes


@settings(max_examples=300, deadline=None)
@given(dockerfiles())
def test_groups_never_split_a_plain_chain_and_are_chains(g: Generated) -> None:
    p = _plan(g)
    built = {s.name for s in p.graph.built}
    dependents = {n: {m for m in built if n in g.deps[m]} for n in built}
    group_of = {name: grp.id for grp in p.groups for name in grp.stages}
    for name in built:
        needs = g.deps[name]
        if len(needs) == 1:
            (x,) = needs
            if dependents[x] == {name}:
                assert group_of[x] == group_of[name]
    for grp in p.groups:
        for prev, cur in zip(grp.stages, grp.stages[1:], strict=False):
            assert g.deps[cur] == {prev} and dependents[prev] == {cur}


@settings(max_examples=200, deadline=None)
@given(dockerfiles())
def test_plan_is_deterministic(g: Generated) -> None:
    assert plan_to_json(_plan(g)) == plan_to_json(_plan(g))


@settings(max_examples=200, deadline=None)
@given(dockerfiles())
def test_critical_path_is_a_heaviest_path_to_the_target(g: Generated) -> None:
    p = _plan(g)
    weight = {s.name: s.instructions for s in p.graph.built}
    path = p.critical_path
    assert path[-1] == p.graph.target
    for a, b in zip(path, path[1:], strict=False):
        assert a in g.deps[b]
    best: dict[str, int] = {}
    for name in g.order:
        if name in weight:
            best[name] = weight[name] + max((best[d] for d in g.deps[name]), default=0)
    assert sum(weight[n] for n in path) == best[p.graph.target]
