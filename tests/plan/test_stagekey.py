"""Content keys of stage results: what goes into them (StageInputs) and when they change."""

from __future__ import annotations

from stagefleet.stages import Stage, StageGraph, StageInputs, parse_stage_graph


def graph(text: str, **kw: object) -> StageGraph:
    kw.setdefault("build_platform", "linux/amd64")
    return parse_stage_graph(text, **kw)  # type: ignore[arg-type]


def inputs(text: str, name: str, **kw: object) -> StageInputs:
    stage: Stage = next(s for s in graph(text, **kw).stages if s.name == name)
    return stage.inputs


# ------------------------------------------------------------------ StageInputs (the parser's part)


def test_instructions_are_every_instruction_with_continuations_joined_and_heredoc_bodies() -> None:
    text = (
        "FROM alpine AS a\n"
        "# a comment is not an instruction\n"
        "RUN echo one \\\n"
        "    && echo two\n"
        "COPY --chmod=755 <<EOF /run.sh\n"
        "#!/bin/sh\n"
        "echo body\n"
        "EOF\n"
        "ONBUILD RUN <<EOF\n"
        "echo trigger body\n"
        "EOF\n"
    )
    got = inputs(text, "a").instructions
    assert got[0] == "FROM alpine AS a"
    assert got[1] == "RUN echo one     && echo two"
    assert got[2] == "COPY --chmod=755 <<EOF /run.sh\n#!/bin/sh\necho body\nEOF\n"
    assert "echo trigger body" in got[3]  # the parser leaves ONBUILD heredoc bodies out of its text
    assert len(got) == 4


def test_args_are_the_declared_values_and_the_globals_the_from_line_uses() -> None:
    text = (
        "ARG VERSION=3.19\n"
        "ARG UNUSED=x\n"
        "ARG INHERITED=g\n"
        "FROM alpine:$VERSION AS a\n"
        "ARG INHERITED\n"
        "ARG GIVEN=default\n"
        "ARG DEFAULTED=d-$GIVEN\n"
        "ARG NOVALUE\n"
        "ARG TARGETARCH\n"
    )
    got = inputs(text, "a", build_args={"GIVEN": "from-cli", "UNDECLARED": "u"}).args
    assert got == (
        ("DEFAULTED", "d-$GIVEN"),  # on alpine GIVEN may be an ENV of the image: only known when building
        ("GIVEN", "from-cli"),
        ("INHERITED", "g"),
        ("TARGETARCH", "amd64"),
        ("VERSION", "3.19"),
    )


def test_an_arg_declared_twice_keeps_both_values() -> None:
    text = "ARG X=global\nFROM scratch AS a\nARG X\nRUN echo $X\nARG X=second\nRUN echo $X\n"
    assert inputs(text, "a").args == (("X", "global"), ("X", "second"))


def test_arg_defaults_expand_where_no_image_environment_can_interfere() -> None:
    text = "FROM scratch AS a\nARG A=one\nARG B=$A-two\n"
    assert inputs(text, "a").args == (("A", "one"), ("B", "one-two"))


def test_context_paths_are_cleaned_sources_relative_to_the_root() -> None:
    text = (
        "FROM alpine AS a\n"
        "COPY src/ ../lib/x ./docs/*.md /dst/\n"
        'COPY ["with space", "/d"]\n'
        "ADD archive.tar.gz /opt/\n"
        "COPY --from=alpine /etc/passwd /x\n"
        "COPY <<EOF /inline\nnot a file\nEOF\n"
        "RUN --mount=type=bind,source=go.mod,target=/m --mount=type=cache,target=/c true\n"
    )
    assert inputs(text, "a").context_paths == (
        "archive.tar.gz", "docs/*.md", "go.mod", "lib/x", "src", "with space",
    )


def test_a_bind_mount_without_source_reads_the_whole_context() -> None:
    assert inputs("FROM alpine AS a\nRUN --mount=target=/src make\n", "a").context_paths == (".",)
    assert inputs("FROM alpine AS a\nCOPY . /src\n", "a").context_paths == (".",)


def test_sources_expand_with_env_and_with_args_only_where_the_image_cannot_override_them() -> None:
    env = "FROM alpine AS a\nENV DIR=conf\nCOPY $DIR/app.ini /etc/\n"
    assert inputs(env, "a").context_paths == ("conf/app.ini",)
    scratch_arg = "FROM scratch AS a\nARG JAR=target/app.jar\nCOPY ${JAR} /app.jar\n"
    assert inputs(scratch_arg, "a").context_paths == ("target/app.jar",)
    assert inputs(scratch_arg, "a", build_args={"JAR": "out/b.jar"}).context_paths == ("out/b.jar",)
    # buildah lets the image's ENV win over an ARG of the same name: alpine may set JAR
    image_arg = "FROM alpine AS a\nARG JAR=target/app.jar\nCOPY ${JAR} /app.jar\n"
    assert inputs(image_arg, "a").context_paths == (".",)
    # an ENV of the base stage is known; one from before the base stage's base image is not
    chained = "FROM scratch AS b\nENV D=known\nFROM b AS a\nCOPY $D/x $PATH /y/\n"
    assert inputs(chained, "a").context_paths == (".", "known/x")


def test_add_of_a_url_without_checksum_is_unkeyable_with_checksum_it_is_not_a_context_path() -> None:
    text = "FROM alpine AS a\nRUN true\nADD https://example.com/x.tgz /x\n"
    assert inputs(text, "a").unkeyable == "Dockerfile:3: ADD of a URL without --checksum"
    pinned = "FROM alpine AS a\nADD --checksum=sha256:" + "0" * 64 + " https://example.com/x.tgz /x\n"
    assert inputs(pinned, "a").unkeyable is None
    assert inputs(pinned, "a").context_paths == ()


def test_add_of_a_git_repository_is_unkeyable_even_with_a_checksum() -> None:
    for source in ("https://github.com/moby/buildkit.git#v0.12", "git@github.com:moby/buildkit.git"):
        text = f"FROM alpine AS a\nADD --checksum=abc {source} /b\n"
        assert inputs(text, "a", filename="Containerfile").unkeyable == (
            "Containerfile:2: ADD of a git repository"
        )


def test_an_add_source_only_known_when_building_may_be_a_url() -> None:
    text = "FROM alpine AS a\nARG SRC=https://example.com/x\nADD $SRC /x\n"
    assert inputs(text, "a").unkeyable is not None
    assert inputs(text.replace("alpine", "scratch"), "a").unkeyable is not None  # a URL, no checksum
    local = "FROM scratch AS a\nARG SRC=vendor\nADD $SRC /x\n"
    assert inputs(local, "a").unkeyable is None
    assert inputs(local, "a").context_paths == ("vendor",)


def test_onbuild_triggers_read_the_context_of_the_stage_built_on_them() -> None:
    text = (
        "FROM alpine AS base\n"
        "ONBUILD COPY app/ /app\n"
        "ONBUILD ARG MODE=dev\n"
        "ONBUILD ADD http://example.com/x /x\n"
        "FROM base AS child\n"
        "RUN true\n"
        "FROM alpine AS other\n"
        "COPY --from=base /x /x\n"
    )
    g = graph(text, target="child", build_args={"MODE": "prod"})
    by_name = {s.name: s.inputs for s in g.stages}
    assert by_name["base"].context_paths == () and by_name["base"].unkeyable is None
    assert by_name["child"].context_paths == ("app",)
    assert by_name["child"].args == (("MODE", "prod"),)
    assert by_name["child"].unkeyable == (
        "Dockerfile:4: ADD of a URL without --checksum (an ONBUILD trigger of stage 'base')"
    )
    assert by_name["other"].context_paths == () and by_name["other"].unkeyable is None


def test_directives_that_change_the_meaning_are_inputs() -> None:
    text = "# syntax=docker/dockerfile:1.7\n# escape=`\n# check=skip=all\nFROM alpine AS a\n"
    assert inputs(text, "a").directives == (("escape", "`"), ("syntax", "docker/dockerfile:1.7"))
    assert inputs("FROM alpine AS a\n", "a").directives == ()


def test_a_stage_built_by_hand_has_empty_inputs() -> None:
    stage = Stage(name="a", index=0, named=True, base="alpine", base_stage=None, depends_on=(),
                  images=(), secrets=(), ssh=(), cache_ids=(), platform=None, lines=(1, 1),
                  instructions=1)
    assert stage.inputs == StageInputs()
