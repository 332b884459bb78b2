"""Unit tests for grouping, waves, the critical path and the renderers."""

from __future__ import annotations

import json

from stagefleet.plan import Plan, make_plan, plan_to_json, render_dot, render_mermaid, render_text
from stagefleet.stages import parse_stage_graph


def plan(text: str, target: str | None = None) -> Plan:
    return make_plan(parse_stage_graph(text, target=target, build_platform="linux/amd64"))


DIAMOND = (
    "FROM alpine AS base\nRUN a\n"
    "FROM base AS left\nRUN l\n"
    "FROM base AS right\nRUN r1\nRUN r2\n"
    "FROM alpine AS final\nCOPY --from=left / /\nCOPY --from=right / /\n"
)


def test_plain_chain_is_one_group() -> None:
    p = plan("FROM a AS x\nFROM x AS y\nFROM y AS z\n")
    assert [g.stages for g in p.groups] == [("x", "y", "z")]
    assert p.groups[0].target == "z"


def test_copy_from_chain_is_also_one_group() -> None:
    p = plan("FROM a AS x\nFROM b AS y\nCOPY --from=x / /\n")
    assert [g.stages for g in p.groups] == [("x", "y")]


def test_stage_with_two_dependents_ends_its_group() -> None:
    p = plan(DIAMOND)
    assert [g.stages for g in p.groups] == [("base",), ("left",), ("right",), ("final",)]
    assert [g.wave for g in p.groups] == [0, 1, 1, 2]
    assert p.groups[3].after == ("g2", "g3")
    assert p.groups[3].consumes == (("left", "g2"), ("right", "g3"))
    assert p.final_group == "g4"


def test_stage_with_two_dependencies_starts_a_group() -> None:
    p = plan("FROM a AS x\nFROM a AS y\nFROM x AS z\nCOPY --from=y / /\nFROM z AS out\n")
    assert [g.stages for g in p.groups] == [("x",), ("y",), ("z", "out")]
    assert p.groups[2].consumes == (("x", "g1"), ("y", "g2"))


def test_critical_path_follows_the_heaviest_branch() -> None:
    p = plan(DIAMOND)
    assert p.critical_path == ("base", "right", "final")
    assert [g.critical for g in p.groups] == [True, False, True, True]
    assert [g.weight for g in p.groups] == [2, 2, 3, 3]


def test_group_ids_sort_numerically() -> None:
    text = "".join(f"FROM alpine AS s{i}\n" for i in range(11))
    text += "FROM alpine AS final\n" + "".join(f"COPY --from=s{i} / /\n" for i in range(11))
    final = plan(text).groups[-1]
    assert final.id == "g12"
    assert final.after[-2:] == ("g10", "g11")


def test_group_secrets_and_ssh_are_the_union_of_its_stages() -> None:
    p = plan(
        "FROM a AS x\nRUN --mount=type=secret,id=b --mount=type=ssh true\n"
        "FROM x AS y\nRUN --mount=type=secret,id=a --mount=type=secret,id=b true\n"
    )
    assert (p.groups[0].secrets, p.groups[0].ssh) == (("a", "b"), ("default",))


def test_json_has_the_documented_keys() -> None:
    data = plan_to_json(plan(DIAMOND, target="left"))
    assert list(data) == ["target", "stages", "skipped", "groups", "criticalPath"]
    assert list(data["stages"][0]) == [
        "name", "index", "base", "dependsOn", "images", "secrets", "ssh", "platform", "lines"
    ]
    assert data["skipped"] == ["right", "final"]
    assert {"id", "stages", "after"} <= set(data["groups"][0])
    json.dumps(data)  # serialisable as is


def test_text_rendering_shows_waves_groups_and_skipped() -> None:
    out = render_text(plan(DIAMOND))
    assert "wave 2:" in out and "g4" in out
    assert "critical path: base -> right -> final" in out
    assert "uses left, right" in out


def test_dot_and_mermaid_have_one_edge_per_dependency() -> None:
    p = plan(DIAMOND)
    dot, mermaid = render_dot(p), render_mermaid(p)
    assert dot.count(" -> ") == 4 and '"left" -> "final";' in dot
    assert mermaid.startswith("flowchart LR")
    assert mermaid.count(" --> ") == 4 and "s1 --> s3" in mermaid
