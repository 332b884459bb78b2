"""Unit tests for the stage-graph rules (one behaviour per test, BuildKit semantics)."""

from __future__ import annotations

import pytest

from stagefleet.stages import (
    DockerfileError,
    SecretUse,
    expand_word,
    parse_stage_graph,
    suggest,
    validate_image_reference,
)


def graph(text: str, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("build_platform", "linux/amd64")
    return parse_stage_graph(text, **kw)  # type: ignore[arg-type]


def stage(text: str, name: str, **kw: object):  # type: ignore[no-untyped-def]
    return next(s for s in graph(text, **kw).stages if s.name == name)


def error(text: str, **kw: object) -> str:
    with pytest.raises(DockerfileError) as info:
        graph(text, **kw)
    return str(info.value)


# ------------------------------------------------------------------ word expansion

ENV = {"SET": "v", "EMPTY": ""}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$SET", "v"),
        ("${SET}", "v"),
        ("$UNSET", ""),
        ("a$", "a$"),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${SET:-d}", "v"),
        ("${UNSET-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${SET:?boom}", "v"),
        ("${UNSET:-${SET}x}", "vx"),
        ("'$SET'", "$SET"),
        ('"$SET b"', "v b"),
        ("\\$SET", "$SET"),
        ("x${SET}y$SET", "xvyv"),
    ],
)
def test_expand_word(word: str, expected: str) -> None:
    assert expand_word(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("${V%.*}", "1.22"),
        ("${V%%.*}", "1"),
        ("${V#*.}", "22.3"),
        ("${V##*.}", "3"),
        ("${P/\\//-}", "a-b/c"),
        ("${P//\\//-}", "a-b-c"),
        ("${P//b}", "a//c"),
        ("${V/x/y}", "1.22.3"),
    ],
)
def test_expand_word_pattern_modifiers(word: str, expected: str) -> None:
    assert expand_word(word, {"V": "1.22.3", "P": "a/b/c"}) == expected


def test_expand_word_backtick_escape() -> None:
    assert expand_word("`$SET\\", ENV, "`") == "$SET\\"


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${UNSET:?need it}", "UNSET: need it"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${UNSET?}", "UNSET: is not allowed to be unset"),
        ("${SET", "missing '}'"),
        ("'open", "matching single-quote"),
        ("${SET^x}", "unsupported modifier"),
    ],
)
def test_expand_word_errors(word: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_word(word, ENV)


# ------------------------------------------------------------------ directives and parsing


def test_check_directive_before_escape_still_applies_escape() -> None:
    text = "# check=error=true\n# escape=`\nFROM alpine\nRUN a `\n  b\n"
    assert stage(text, "stage-0").lines == (3, 5)


def test_directive_after_instruction_is_a_comment() -> None:
    text = "FROM alpine\n# escape=`\nRUN a \\\n  b\n"
    assert stage(text, "stage-0").lines == (1, 4)


def test_byte_order_mark_is_ignored() -> None:
    assert stage("\ufeffFROM alpine AS a\n", "a").base == "alpine"


def test_error_carries_file_and_line() -> None:
    with pytest.raises(DockerfileError) as info:
        parse_stage_graph("FROM alpine\nRUN --mount=type=nope true\n", filename="ci/Dockerfile.prod")
    e = info.value
    assert (e.filename, e.line) == ("ci/Dockerfile.prod", 2)
    assert str(e).startswith("ci/Dockerfile.prod:2: unsupported mount type")


def test_instruction_counts_and_line_ranges() -> None:
    text = "ARG X=1\nFROM alpine AS a\nRUN one\n\n# c\nRUN two \\\n  three\nFROM a AS b\n"
    a = stage(text, "a")
    assert (a.instructions, a.lines) == (3, (2, 7))
    assert stage(text, "b").lines == (8, 8)


# ------------------------------------------------------------------ names and FROM


def test_stage_names_are_lowercased_and_unnamed_get_index_names() -> None:
    g = graph("FROM alpine AS Build\nFROM alpine\nFROM alpine as Last\n")
    assert [(s.name, s.named) for s in g.stages] == [("build", True), ("stage-1", False), ("last", True)]


def test_from_refers_to_an_earlier_stage_only() -> None:
    g = graph("FROM tools AS a\nFROM alpine AS tools\nFROM tools AS c\n")
    a, _, c = g.stages
    assert (a.base, a.base_stage) == ("tools", None)
    assert (c.base, c.base_stage, c.depends_on) == (None, "tools", ("tools",))


def test_from_does_not_match_the_plan_name_of_an_unnamed_stage() -> None:
    s = stage("FROM alpine\nFROM stage-0 AS b\n", "b")
    assert (s.base, s.depends_on) == ("stage-0", ())


def test_from_match_is_exact_after_expansion() -> None:
    text = "ARG S=build\nFROM alpine AS build\nFROM ${S} AS next\n"
    assert stage(text, "next").base_stage == "build"


def test_global_arg_default_sees_earlier_global_args_and_build_args_override() -> None:
    text = "ARG A=x\nARG B=${A}-y\nFROM img:$B\n"
    assert stage(text, "stage-0").base == "img:x-y"
    assert stage(text, "stage-0", build_args={"A": "q"}).base == "img:q-y"
    assert stage(text, "stage-0", build_args={"B": "z"}).base == "img:z"


def test_undeclared_build_arg_is_invisible_to_from() -> None:
    assert stage("FROM img:${V:-none}\n", "stage-0", build_args={"V": "1"}).base == "img:none"


def test_arg_declared_after_first_from_is_not_global() -> None:
    assert stage("FROM alpine\nARG V=1\nFROM img:${V:-g}\n", "stage-1").base == "img:g"


def test_builtin_platform_args() -> None:
    text = "FROM --platform=$BUILDPLATFORM img:$TARGETOS-$TARGETARCH$TARGETVARIANT-$BUILDARCH AS a\n"
    a = stage(text, "a", platform="linux/arm/v7", build_platform="linux/amd64")
    assert (a.base, a.platform) == ("img:linux-armv7-amd64", "linux/amd64")


def test_target_platform_defaults_to_build_platform() -> None:
    assert stage("FROM --platform=$TARGETPLATFORM alpine\n", "stage-0").platform == "linux/amd64"


def test_scratch_is_a_valid_base() -> None:
    assert stage("FROM scratch AS s\n", "s").base == "scratch"


# ------------------------------------------------------------------ COPY --from


def test_copy_from_name_is_case_insensitive() -> None:
    text = "FROM alpine AS build\nFROM alpine AS b\nCOPY --from=BUILD / /\n"
    assert stage(text, "b").depends_on == ("build",)


def test_copy_from_number_is_an_index() -> None:
    text = "FROM alpine AS zero\nFROM alpine\nCOPY --from=0 / /\nCOPY --from=+0 / /\n"
    assert stage(text, "stage-1").depends_on == ("zero",)


def test_copy_from_negative_index_is_an_error() -> None:
    assert error("FROM alpine\nFROM alpine\nCOPY --from=-1 / /\n") == "Dockerfile:3: invalid stage index -1"


def test_copy_from_unknown_name_is_an_image() -> None:
    s = stage("FROM alpine AS a\nCOPY --from=nginx:1.25 / /\nCOPY --from=nginx:1.25 /x /x\n", "a")
    assert (s.images, s.depends_on) == (("nginx:1.25",), ())


def test_forward_copy_from_is_an_error_only_in_built_stages() -> None:
    text = "FROM alpine AS a\nCOPY --from=b / /\nFROM alpine AS b\nFROM alpine AS c\n"
    assert graph(text).skipped == ("a", "b")
    assert "cannot copy from stage \"b\"" in error(text, target="a")


def test_bad_index_is_an_error_in_unreachable_stage() -> None:
    text = "FROM alpine AS a\nCOPY --from=9 / /\nFROM alpine\n"
    assert error(text) == "Dockerfile:2: invalid stage index 9"


# ------------------------------------------------------------------ RUN --mount


def test_secret_use_defaults() -> None:
    text = (
        "FROM alpine AS a\n"
        "RUN --mount=type=secret,id=aws true\n"
        "RUN --mount=type=secret,id=tok,target=/t,required=true true\n"
        "RUN --mount=type=secret,target=/root/.netrc true\n"
        "RUN --mount=type=secret,source=gh,required true\n"
    )
    assert stage(text, "a").secrets == (
        SecretUse(".netrc", "/root/.netrc", False),
        SecretUse("aws", "/run/secrets/aws", False),
        SecretUse("gh", "/run/secrets/gh", True),
        SecretUse("tok", "/t", True),
    )


def test_secret_id_expands_stage_args() -> None:
    text = "FROM alpine AS a\nARG SID=npm\nRUN --mount=type=secret,id=$SID true\n"
    assert [s.id for s in stage(text, "a").secrets] == ["npm"]
    assert [s.id for s in stage(text, "a", build_args={"SID": "pip"}).secrets] == ["pip"]


def test_unexpandable_env_value_is_not_an_error() -> None:
    text = "FROM alpine AS a\nENV X=${Y:?later} Z='open\nRUN --mount=type=cache,id=$X,target=/c true\n"
    assert stage(text, "a").cache_ids == ("${Y:?later}",)


def test_ssh_and_cache_ids() -> None:
    text = (
        "FROM alpine AS a\n"
        "RUN --mount=type=ssh --mount=type=ssh,id=gitlab true\n"
        "RUN --mount=type=cache,target=/root/.cache/ --mount=type=cache,id=go,target=/go true\n"
    )
    a = stage(text, "a")
    assert (a.ssh, a.cache_ids) == (("default", "gitlab"), ("/root/.cache", "go"))


def test_mount_from_is_by_name_only() -> None:
    text = (
        "FROM alpine AS deps\nFROM alpine AS b\n"
        "RUN --mount=from=DEPS,target=/d --mount=from=0,target=/z true\n"
    )
    b = stage(text, "b")
    assert (b.depends_on, b.images) == (("deps",), ("0",))


def test_mount_from_variable_is_an_error() -> None:
    assert "doesn't support variable expansion" in error("FROM alpine\nRUN --mount=from=$X,target=/x true\n")


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ("type=secret", "invalid secret mount. one of source, target required"),
        ("type=secret,id=a,source=b", "both source and id can't be set"),
        ("type=ssh,source=x", "ssh does not support source"),
        ("type=secret,id=a,required=maybe", "invalid value for required: maybe"),
        ("type=bind,junk", "invalid field 'junk' must be a key=value pair"),
    ],
)
def test_mount_errors(mount: str, message: str) -> None:
    assert error(f"FROM alpine\nRUN --mount={mount} true\n") == f"Dockerfile:2: {message}"


# ------------------------------------------------------------------ ONBUILD


def test_onbuild_edges_go_to_the_child_only() -> None:
    text = (
        "FROM alpine AS assets\n"
        "FROM alpine AS base\nONBUILD COPY --from=assets / /\nONBUILD RUN --mount=type=ssh,id=gh true\n"
        "FROM base AS child\nFROM child AS grandchild\n"
    )
    g = graph(text)
    by = {s.name: s for s in g.stages}
    assert by["base"].depends_on == ()
    assert (by["child"].depends_on, by["child"].ssh) == (("assets", "base"), ("gh",))
    assert by["grandchild"].depends_on == ("child",)


def test_onbuild_from_is_an_error() -> None:
    assert error("FROM alpine\nONBUILD FROM x\n") == "Dockerfile:2: FROM isn't allowed as an ONBUILD trigger"


# ------------------------------------------------------------------ target, reachability, cycles


def test_target_suggestion_keeps_the_users_case() -> None:
    assert error("FROM a AS build\n", target="BIULD").endswith('(did you mean BUILD?)')


def test_unnamed_stage_can_be_a_target_by_its_plan_name() -> None:
    g = graph("FROM alpine\nFROM alpine AS b\n", target="stage-0")
    assert (g.target, g.skipped) == ("stage-0", ("b",))
    assert "could not be found" in error("FROM alpine AS a\nFROM alpine AS b\n", target="stage-0")


def test_built_and_skipped_partition_all_stages_in_file_order() -> None:
    g = graph("FROM a AS x\nFROM a AS y\nFROM x AS z\nFROM a AS w\n", target="z")
    assert [s.name for s in g.built] == ["x", "z"]
    assert g.skipped == ("y", "w")
    assert g.target == "z"


def test_cycle_through_three_stages() -> None:
    text = (
        "FROM a AS s0\nCOPY --from=s2 / /\n"
        "FROM a AS s1\nCOPY --from=s0 / /\n"
        "FROM a AS s2\nCOPY --from=s1 / /\n"
    )
    assert "circular dependency detected on stage: s0" in error(text)


def test_thousand_stage_chain_does_not_recurse() -> None:
    text = "FROM alpine AS s0\n" + "".join(f"FROM s{i - 1} AS s{i}\n" for i in range(1, 1500))
    g = graph(text)
    assert len(g.built) == 1500


# ------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("alpine", None),
        ("alpine:3.19", None),
        ("localhost:5000/a/b:tag", None),
        ("Registry.Example.com/a@sha256:" + "a" * 64, None),
        ("Alpine", "invalid reference format: repository name must be lowercase"),
        ("a:b:c", "invalid reference format"),
        ("a" * 64, "cannot specify 64-byte hexadecimal strings"),
        ("", "invalid reference format"),
    ],
)
def test_validate_image_reference(ref: str, problem: str | None) -> None:
    result = validate_image_reference(ref)
    assert result == problem if problem is None else (result is not None and problem in result)


def test_suggest_uses_distance_below_three() -> None:
    assert suggest("biuld", ["final", "build"]) == "build"
    assert suggest("prod", ["build"]) is None
    assert suggest("build", ["build", "buildx"]) is None
