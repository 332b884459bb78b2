"""What a waiting worker builds before its upstreams land (`worker.headstart`): pure."""

from __future__ import annotations

from stagefleet.stages import parse_stage_graph
from stagefleet.worker.headstart import head_start, own_stages

PREP = """ARG BASE=img
FROM $BASE AS build1
RUN make one

FROM $BASE AS build2
RUN make two

FROM $BASE AS final
RUN apt-get install -y thing
ENV A=1
COPY --from=build1 /one /one
RUN step-after
COPY --from=build2 /two /two
"""


def _start(text: str, awaited: set[str], consumed: set[str] | None = None, target: str = "final") -> object:
    return head_start(text, filename="Dockerfile", target=target, awaited=awaited,
                      consumed=consumed if consumed is not None else awaited, build_args={})


def test_the_final_stage_builds_up_to_its_first_copy_from_an_awaited_stage() -> None:
    hs = head_start(PREP, filename="Dockerfile", target="final", awaited={"build1", "build2"},
                    consumed={"build1", "build2"}, build_args={})
    assert hs is not None
    assert (hs.target, hs.cut, hs.stage) == ("final", 11, "final")
    assert hs.dockerfile == "".join(PREP.splitlines(keepends=True)[:10])
    assert hs.dockerfile.rstrip().endswith("ENV A=1")
    # the cut text is a Dockerfile that still parses, with the target's instructions before the cut
    g = parse_stage_graph(hs.dockerfile, target="final")
    assert [s.name for s in g.built] == ["final"] and g.built[0].instructions == 3


def test_only_the_awaited_stages_cut() -> None:
    # build1 is already in (an --upstream): only build2's COPY waits
    hs = head_start(PREP, filename="Dockerfile", target="final", awaited={"build2"},
                    consumed={"build1", "build2"}, build_args={})
    assert hs is not None and (hs.target, hs.cut) == ("final", 13)


def test_nothing_before_the_first_use_gives_no_head_start() -> None:
    text = "FROM img AS a\nRUN x\nFROM img AS final\nCOPY --from=a /x /x\nRUN y\n"
    assert _start(text, {"a"}) is None


def test_a_stage_built_on_an_awaited_one_builds_the_own_stage_before_it() -> None:
    # group [prep, final]: final is FROM the awaited stage; prep (own, consumed by final) can go first
    text = ("FROM img AS up\nRUN u\n"
            "FROM img AS prep\nRUN p\n"
            "FROM up AS final\nCOPY --from=prep /p /p\n")
    hs = _start(text, {"up"})
    assert hs is not None and (hs.target, hs.cut, hs.stage) == ("prep", 5, "final")


def test_other_groups_stages_are_never_built() -> None:
    # wide's final: FROM the base image, then only COPYs from the awaited branches; the branches
    # (and `base` behind them) come before in the file but belong to other groups
    text = ("FROM img AS base\nRUN b\n"
            "FROM base AS b1\nRUN one\n"
            "FROM base AS b2\nRUN two\n"
            "FROM img AS final\nCOPY --from=b1 /1 /\nCOPY --from=b2 /2 /\n")
    assert _start(text, {"b1", "b2"}) is None
    g = parse_stage_graph(text, target="final")
    assert [s.name for s in own_stages(g, {"b1", "b2"})] == ["final"]


def test_an_onbuild_copy_needs_the_stage_from_the_from_line() -> None:
    text = ("FROM img AS up\nRUN u\n"
            "FROM img AS trig\nONBUILD COPY --from=up /u /u\n"
            "FROM trig AS final\nRUN f\n")
    g = parse_stage_graph(text, target="final")
    final = next(s for s in g.stages if s.name == "final")
    assert dict(final.dep_lines) == {"trig": 5, "up": 5}
    # final needs `up` from its FROM on; trig alone (its ONBUILD is not run in trig itself) does not
    hs = _start(text, {"up"})
    assert hs is not None and (hs.target, hs.cut) == ("trig", 5)


def test_unparsable_text_gives_none() -> None:
    assert _start("FROM img AS final\nCOPY --from= /x /x\nBOGUS\n", {"a"}) is None


def test_unnamed_stages_go_by_plan_name() -> None:
    text = "FROM img\nRUN a\nFROM img\nRUN prep\nCOPY --from=0 /a /a\n"
    hs = _start(text, {"stage-0"}, target="stage-1")
    assert hs is not None and (hs.target, hs.cut) == ("stage-1", 5)
