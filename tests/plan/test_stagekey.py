"""Content keys of stage results: what goes into them (StageInputs) and when they change."""

from __future__ import annotations

import fnmatch
import posixpath
import subprocess
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagefleet.stagekey import KEY_RE, ContextIndex, KeyResult, index_git_tree, stage_keys
from stagefleet.stages import Stage, StageGraph, StageInputs, parse_stage_graph


def graph(text: str, **kw: object) -> StageGraph:
    kw.setdefault("build_platform", "linux/amd64")
    return parse_stage_graph(text, **kw)  # type: ignore[arg-type]


def inputs(text: str, name: str, **kw: object) -> StageInputs:
    stage: Stage = next(s for s in graph(text, **kw).stages if s.name == name)
    return stage.inputs


def digest(c: str) -> str:
    return "sha256:" + c * 64


DIGESTS = {"alpine": digest("a"), "alpine:3.19": digest("b"), "golang:1.22": digest("c")}
FILES = {
    "Dockerfile": "100644 " + "d" * 40,
    "go.mod": "100644 " + "1" * 40,
    "src/main.go": "100644 " + "2" * 40,
    "src/util/util.go": "100644 " + "3" * 40,
    "docs/index.md": "100644 " + "4" * 40,
    "README.md": "100644 " + "5" * 40,
}


def keys(
    text: str,
    *,
    build_args: Mapping[str, str] | None = None,
    platform: str = "linux/amd64",
    digests: Mapping[str, str] = DIGESTS,
    files: Mapping[str, str] | None = FILES,
    onbuild_bases: Collection[str] = (),
    target: str | None = None,
) -> dict[str, KeyResult]:
    g = graph(text, build_args=build_args or {}, platform=platform, target=target)
    context = ContextIndex(dict(files)) if files is not None else None
    return stage_keys(g, platform=platform, base_digests=digests, context=context,
                      onbuild_bases=onbuild_bases)


def key(text: str, name: str, **kw: object) -> str:
    result = keys(text, **kw)[name]  # type: ignore[arg-type]
    assert result.reason is None and result.key is not None
    return result.key


def changed(before: Mapping[str, KeyResult], after: Mapping[str, KeyResult]) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


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


# ------------------------------------------------------------------ ContextIndex


def test_digest_selects_the_pattern_what_is_under_it_and_glob_matches_per_component() -> None:
    index = ContextIndex(FILES)

    def selects(pattern: str, path: str) -> bool:
        other = ContextIndex({**FILES, path: FILES[path].replace("100644", "100755")})
        return index.digest([pattern]) != other.digest([pattern])

    assert selects("src", "src/main.go") and selects("src", "src/util/util.go")
    assert selects("src/main.go", "src/main.go") and not selects("src/main.go", "src/util/util.go")
    assert selects("src/*.go", "src/main.go") and not selects("src/*.go", "src/util/util.go")
    assert selects("s?c/util", "src/util/util.go") and not selects("s?c/util", "src/main.go")
    assert selects("*", "README.md") and selects("*", "src/util/util.go")  # src matches, all below it
    assert selects("[^a-r]*", "src/main.go") and not selects("[^a-r]*", "go.mod")
    assert selects("[R]EADME.md", "README.md") and not selects("[R]EADME.md", "docs/index.md")
    assert selects(".", "docs/index.md")
    assert not selects("sr", "src/main.go") and not selects("src/main", "src/main.go")
    assert not selects("go", "go.mod")


def test_digest_over_selects_where_it_cannot_tell() -> None:
    index = ContextIndex(FILES)
    changed_md = ContextIndex({**FILES, "docs/index.md": "100644 " + "9" * 40})
    assert index.digest(["docs/**/x"]) != changed_md.digest(["docs/**/x"])  # ** : all of docs
    assert index.digest(["[z-a]"]) != changed_md.digest(["[z-a]"])  # malformed: matches anything
    assert index.digest(["src"]) == changed_md.digest(["src"])


def test_a_pattern_through_a_symbolic_link_selects_the_whole_context() -> None:
    files = {**FILES, "link": "120000 " + "7" * 40, "lib/real.txt": "100644 " + "8" * 40}
    other = {**files, "README.md": "100644 " + "9" * 40}
    for pattern in ("link", "link/inside", "l?nk/x", "lib"):
        through_link = pattern != "lib"
        assert (ContextIndex(files).digest([pattern]) != ContextIndex(other).digest([pattern])) is (
            through_link
        ), pattern


def test_ignore_files_are_always_selected() -> None:
    for ignore in (".dockerignore", ".containerignore", "Dockerfile.dockerignore", "sub/.dockerignore"):
        before = ContextIndex({**FILES, ignore: "100644 " + "6" * 40})
        after = ContextIndex({**FILES, ignore: "100644 " + "7" * 40})
        assert before.digest(["go.mod"]) != after.digest(["go.mod"]), ignore


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout


def test_index_git_tree_reads_ls_tree_of_a_real_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "app" / "src").mkdir(parents=True)
    (repo / "app" / "src" / "main.go").write_text("package main\n")
    (repo / "app" / "run.sh").write_text("#!/bin/sh\n")
    (repo / "app" / "run.sh").chmod(0o755)
    (repo / "app" / "we ird\tname").write_text("x")
    (repo / "top.txt").write_text("top\n")
    (repo / "app" / "link").symlink_to("src/main.go")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    submodule = "e" * 40
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{submodule},app/vendor")
    git(repo, "commit", "-q", "-m", "x")
    listing = git(repo, "ls-tree", "-r", "-z", "--full-tree", "HEAD")

    def blob(path: str) -> str:
        return git(repo, "rev-parse", f"HEAD:{path}").strip()

    whole = index_git_tree(listing)
    assert whole.entries == {
        "app/src/main.go": "100644 " + blob("app/src/main.go"),
        "app/run.sh": "100755 " + blob("app/run.sh"),
        "app/we ird\tname": "100644 " + blob("app/we ird\tname"),
        "app/link": "120000 " + blob("app/link"),
        "app/vendor": "160000 " + submodule,
        "top.txt": "100644 " + blob("top.txt"),
    }
    for context_dir in ("app", "./app/", "app/"):
        sub = index_git_tree(listing, context_dir)
        assert sub.entries == {k.removeprefix("app/"): v for k, v in whole.entries.items() if k != "top.txt"}
    assert index_git_tree(listing, "app/src").entries == {"main.go": whole.entries["app/src/main.go"]}
    assert index_git_tree(listing, "nothing").entries == {}

    head = git(repo, "rev-parse", "HEAD").strip()
    with_git = index_git_tree(listing, head=head)
    assert with_git.entries[".git"] == f"commit {head}"
    assert ".git" not in index_git_tree(listing, "app", head=head).entries


def test_index_git_tree_rejects_what_is_not_ls_tree_output() -> None:
    with pytest.raises(ValueError, match="not a git ls-tree"):
        index_git_tree("100644 blob abc no-tab\0")


# ------------------------------------------------------------------ stage_keys: one input at a time

SIMPLE = "FROM alpine AS a\nRUN echo a\n"


def test_keys_are_64_hex_digits_and_deterministic() -> None:
    first = key(SIMPLE, "a")
    assert KEY_RE.match(first)
    assert key(SIMPLE, "a") == first


def test_the_base_image_digest() -> None:
    assert key(SIMPLE, "a") != key(SIMPLE, "a", digests={**DIGESTS, "alpine": digest("f")})
    assert key(SIMPLE, "a") == key(SIMPLE, "a", digests={**DIGESTS, "golang:1.22": digest("f")})


def test_the_text_of_an_instruction() -> None:
    assert key(SIMPLE, "a") != key(SIMPLE.replace("echo a", "echo b"), "a")
    assert key(SIMPLE, "a") == key("# a comment\n" + SIMPLE, "a")  # not an instruction, not an input
    heredoc = "FROM alpine AS a\nRUN <<EOF\necho one\nEOF\n"
    assert key(heredoc, "a") != key(heredoc.replace("one", "two"), "a")


def test_the_value_of_a_declared_arg_and_not_of_an_undeclared_build_arg() -> None:
    text = "FROM alpine AS a\nARG MODE=dev\nRUN make\n"  # the RUN sees MODE without naming it
    assert key(text, "a") != key(text, "a", build_args={"MODE": "prod"})
    assert key(text, "a", build_args={"MODE": "dev"}) == key(text, "a")
    assert key(text, "a") == key(text, "a", build_args={"OTHER": "x"})


def test_the_global_args_the_from_line_uses() -> None:
    text = "ARG TAG=3.19\nARG UNUSED=1\nFROM alpine:$TAG AS a\n"
    digests = {**DIGESTS, "alpine:3.20": DIGESTS["alpine:3.19"]}  # the same image under both tags
    assert key(text, "a") != key(text, "a", build_args={"TAG": "3.20"}, digests=digests)
    assert key(text, "a") == key(text, "a", build_args={"UNUSED": "2"})


def test_a_global_arg_value_a_stage_inherits() -> None:
    text = "ARG V=1\nFROM alpine AS a\nARG V\nRUN make\n"
    assert key(text, "a") != key(text.replace("V=1", "V=2"), "a")


def test_the_platform() -> None:
    assert key(SIMPLE, "a") != key(SIMPLE, "a", platform="linux/arm64")


def test_secret_and_ssh_ids_not_their_values() -> None:
    text = "FROM alpine AS a\nRUN --mount=type=secret,id=token --mount=type=ssh,id=git make\n"
    assert key(text, "a") != key(text.replace("id=token", "id=other"), "a")
    assert key(text, "a") != key(text.replace("id=git", "id=deploy"), "a")
    # a base stage's ONBUILD secret mount runs in the stage built on it: its id is that stage's input
    onbuild = "FROM alpine AS p\nONBUILD RUN --mount=type=secret,id=s1 true\nFROM p AS a\n"
    assert [s.id for s in graph(onbuild).built[-1].secrets] == ["s1"]


def test_the_content_of_a_copied_file_and_not_of_a_file_not_copied() -> None:
    text = "FROM golang:1.22 AS a\nCOPY go.mod ./\nCOPY src/ ./src/\n"
    before = keys(text)
    for path in ("go.mod", "src/main.go", "src/util/util.go"):
        assert changed(before, keys(text, files={**FILES, path: "100644 " + "f" * 40})) == {"a"}, path
    for path in ("README.md", "docs/index.md", "Dockerfile"):
        assert changed(before, keys(text, files={**FILES, path: "100644 " + "f" * 40})) == set(), path
    assert changed(before, keys(text, files={**FILES, "src/new.go": "100644 " + "f" * 40})) == {"a"}
    assert changed(before, keys(text, files={**FILES, "go.mod": "100755 " + "1" * 40})) == {"a"}


def test_a_bind_mount_of_the_context_reads_its_source() -> None:
    text = "FROM golang:1.22 AS a\nRUN --mount=type=bind,source=src,target=/s go build /s\n"
    before = keys(text)
    assert changed(before, keys(text, files={**FILES, "src/main.go": "100644 " + "f" * 40})) == {"a"}
    assert changed(before, keys(text, files={**FILES, "go.mod": "100644 " + "f" * 40})) == set()


def test_the_dockerignore_file_for_stages_that_read_the_context() -> None:
    text = "FROM alpine AS reads\nCOPY src /src\nFROM alpine AS not\nRUN true\n"
    files = {**FILES, ".dockerignore": "100644 " + "6" * 40}
    before = keys(text + "FROM scratch\nCOPY --from=reads / /\nCOPY --from=not / /\n", files=files)
    after = keys(text + "FROM scratch\nCOPY --from=reads / /\nCOPY --from=not / /\n",
                 files={**files, ".dockerignore": "100644 " + "7" * 40})
    assert changed(before, after) == {"reads", "stage-2"}


def test_no_context_is_an_empty_one() -> None:
    text = "FROM alpine AS a\nCOPY . /src\n"
    assert key(text, "a", files=None) == key(text, "a", files={})
    assert key(text, "a", files=None) != key(text, "a")


def test_an_upstream_key_propagates_to_its_consumers_only() -> None:
    text = (
        "FROM alpine AS a\nRUN echo a\n"
        "FROM a AS from_a\nRUN true\n"
        "FROM alpine AS copies_a\nCOPY --from=a /x /x\n"
        "FROM alpine AS mounts_a\nRUN --mount=type=bind,from=a,target=/a true\n"
        "FROM alpine AS copies_by_index\nCOPY --from=0 /x /x\n"
        "FROM alpine AS independent\nRUN true\n"
        "FROM copies_a AS transitive\n"
        "FROM scratch\nCOPY --from=from_a / /1\nCOPY --from=mounts_a / /2\nCOPY --from=copies_by_index / /3\n"
        "COPY --from=independent / /4\nCOPY --from=transitive / /5\n"
    )
    before = keys(text)
    after = keys(text.replace("echo a", "echo b"))
    assert changed(before, after) == {
        "a", "from_a", "copies_a", "mounts_a", "copies_by_index", "transitive", "stage-7",
    }


def test_the_digest_of_an_image_copied_from() -> None:
    text = "FROM alpine AS a\nCOPY --from=golang:1.22 /usr/local/go /go\n"
    assert key(text, "a") != key(text, "a", digests={**DIGESTS, "golang:1.22": digest("f")})
    unresolved = keys(text, digests={"alpine": digest("a")})["a"]
    assert unresolved == KeyResult(None, "image golang:1.22 not resolved")


def test_scratch_and_pinned_references_need_no_digest() -> None:
    pinned = "alpine@" + digest("9")
    text = f"FROM scratch AS a\nCOPY --from={pinned} / /\nFROM {pinned} AS b\n"
    assert key(text, "a", digests={}, target="a") != key(text, "b", digests={})
    assert key(text, "b", digests={}) != key(text.replace("9" * 64, "8" * 64), "b", digests={})


def test_the_base_reference_is_looked_up_as_written_after_expansion() -> None:
    text = "ARG REG=127.0.0.1:5000\nFROM $REG/x:1 AS a\n"
    assert keys(text)["a"] == KeyResult(None, "base image 127.0.0.1:5000/x:1 not resolved")
    assert keys(text, digests={"127.0.0.1:5000/x:1": digest("e")})["a"].key is not None


# ------------------------------------------------------------------ stages that are not keyed


def test_add_of_a_url_is_keyed_only_with_a_checksum() -> None:
    text = "FROM alpine AS a\nADD https://example.com/x.tgz /x\n"
    assert keys(text)["a"] == KeyResult(None, "Dockerfile:2: ADD of a URL without --checksum")
    with_sum = text.replace("ADD ", "ADD --checksum=sha256:" + "0" * 64 + " ")
    assert KEY_RE.match(key(with_sum, "a"))
    assert key(with_sum, "a") != key(with_sum.replace("0" * 64, "1" * 64), "a")


def test_add_of_a_git_repository_is_not_keyed() -> None:
    text = "FROM alpine AS a\nADD https://github.com/moby/buildkit.git /src\n"
    assert keys(text)["a"] == KeyResult(None, "Dockerfile:2: ADD of a git repository")


def test_a_stage_that_depends_on_an_unkeyed_stage_is_not_keyed() -> None:
    text = (
        "FROM alpine AS fetch\nADD https://example.com/x /x\n"
        "FROM fetch AS child\n"
        "FROM alpine AS user\nCOPY --from=child /x /x\n"
        "FROM alpine AS fine\nRUN true\n"
        "FROM scratch\nCOPY --from=user / /\nCOPY --from=fine / /\n"
    )
    got = keys(text)
    cause = "Dockerfile:2: ADD of a URL without --checksum"
    assert got["fetch"] == KeyResult(None, cause)
    assert got["child"] == KeyResult(None, f"depends on stage 'fetch', which is not keyed: {cause}")
    assert got["user"] == KeyResult(None, f"depends on stage 'child', which is not keyed: {cause}")
    assert got["fine"].key is not None


def test_an_unresolved_base_image_is_not_keyed() -> None:
    got = keys("FROM unknown:1 AS a\nFROM a AS b\n")
    assert got["a"] == KeyResult(None, "base image unknown:1 not resolved")
    assert got["b"].reason == "depends on stage 'a', which is not keyed: base image unknown:1 not resolved"


def test_a_base_image_with_onbuild_triggers_is_not_keyed() -> None:
    got = keys(SIMPLE, onbuild_bases={"alpine"})
    assert got["a"] == KeyResult(None, "base image alpine has ONBUILD triggers (they may read the context)")


def test_a_base_stages_onbuild_trigger_reads_the_context_for_the_stage_built_on_it() -> None:
    text = "FROM alpine AS base\nONBUILD COPY go.mod /\nFROM base AS child\n"
    before = keys(text)
    after = keys(text, files={**FILES, "go.mod": "100644 " + "f" * 40})
    assert changed(before, after) == {"child"}


def test_keys_cover_every_built_stage_in_file_order() -> None:
    text = "FROM alpine AS skipped\nFROM alpine AS a\nFROM a AS b\nFROM alpine AS c\nCOPY --from=b / /\n"
    assert list(keys(text)) == ["a", "b", "c"]


# ------------------------------------------------------------------ properties over generated Dockerfiles

POOL = (
    "a.txt", "b.txt", "src/x.go", "src/y.go", "src/sub/z.go", "src/sub/w.txt", "docs/readme.md",
    "lib/q.py", "other/o.txt",
)
PATTERNS = (
    ".", "a.txt", "src", "src/sub", "src/*.go", "*.txt", "s?c/sub/*", "[ab].txt", "docs", "lib/q.py",
    "src/sub/z.go", "*/sub", "./src/../lib/",
)
BIND_SOURCES = ("src", "docs", "lib", "a.txt", "")


@dataclass(frozen=True)
class Written:
    text: str
    order: list[str]
    deps: dict[str, set[str]]  # stage → the stages it uses (FROM, COPY --from, RUN --mount from=)
    reads: dict[str, set[str]]  # stage → the context paths it reads, as written


def _selects(pattern: str, path: str) -> bool:
    """The oracle: the pattern (cleaned), a path at or below a match of it, glob per component."""
    parts = [p for p in posixpath.normpath(pattern).split("/") if p != "."]
    names = path.split("/")
    matches = all(fnmatch.fnmatchcase(n, p) for n, p in zip(names, parts, strict=False))
    return len(names) >= len(parts) and matches


@st.composite
def dockerfiles(draw: st.DrawFn) -> Written:
    n = draw(st.integers(min_value=1, max_value=8))
    lines: list[str] = []
    order: list[str] = []
    deps: dict[str, set[str]] = {}
    reads: dict[str, set[str]] = {}
    for i in range(n):
        name = f"s{i}"
        bases = ["alpine", "scratch", *order]
        base = draw(st.sampled_from(bases))
        lines.append(f"FROM {base} AS {name}")
        deps[name] = {base} if base in order else set()
        reads[name] = set()
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(["run", "copy", "bind", "copy_from", "mount_from"]))
            if kind == "run":
                lines.append(f"RUN echo {name} {draw(st.integers(0, 3))}")
            elif kind == "copy":
                pattern = draw(st.sampled_from(PATTERNS))
                lines.append(f"COPY {pattern} /in/")
                reads[name].add(pattern)
            elif kind == "bind":
                source = draw(st.sampled_from(BIND_SOURCES))
                lines.append(f"RUN --mount=type=bind,{f'source={source},' if source else ''}target=/m true")
                reads[name].add(source or ".")
            elif order:
                other = draw(st.sampled_from(order))
                how = "COPY --from={} /x /x" if kind == "copy_from" else "RUN --mount=from={},target=/u true"
                lines.append(how.format(other))
                deps[name].add(other)
        order.append(name)
    return Written(text="\n".join(lines) + "\n", order=order, deps=deps, reads=reads)


def contexts() -> st.SearchStrategy[dict[str, str]]:
    ids = st.sampled_from(["100644 " + c * 40 for c in "0123456789"])
    return st.fixed_dictionaries({path: ids for path in POOL})


def _keys(text: str, files: Mapping[str, str], digests: Mapping[str, str] = DIGESTS) -> dict[str, KeyResult]:
    g = graph(text)
    return stage_keys(g, platform="linux/amd64", base_digests=digests, context=ContextIndex(files))


def _consumers_of(w: Written, touched: set[str]) -> set[str]:
    """``touched`` and every stage that uses one of them, transitively (file order is topological)."""
    out = set(touched)
    for name in w.order:
        if w.deps[name] & out:
            out.add(name)
    return out


@settings(max_examples=150, deadline=None)
@given(dockerfiles(), contexts())
def test_keys_are_deterministic(w: Written, files: dict[str, str]) -> None:
    first = _keys(w.text, files)
    assert all(r.key is not None and KEY_RE.match(r.key) for r in first.values())
    again = _keys(w.text, dict(reversed(list(files.items()))), dict(reversed(list(DIGESTS.items()))))
    assert again == first


@settings(max_examples=300, deadline=None)
@given(dockerfiles(), contexts(), st.sampled_from(POOL), st.data())
def test_a_file_changes_the_keys_of_the_stages_that_read_it_and_their_consumers_only(
    w: Written, files: dict[str, str], path: str, data: st.DataObject
) -> None:
    new_id = data.draw(st.sampled_from(["100644 " + c * 40 for c in "abcdef"] + ["100755 " + "0" * 40]))
    before = _keys(w.text, files)
    after = _keys(w.text, {**files, path: new_id})
    readers = {name for name in w.order if any(_selects(p, path) for p in w.reads[name])}
    assert changed(before, after) == _consumers_of(w, readers) & before.keys()


def _edit(line: str) -> str:
    """The line with its instruction changed (a FROM line gets one more instruction after it)."""
    if line.startswith("FROM "):
        return line + "LABEL edited=1\n"
    if line.startswith("COPY "):
        return line.rsplit(" ", 1)[0] + " /edited/\n"
    return line.rstrip("\n") + " edited\n"


@settings(max_examples=150, deadline=None)
@given(dockerfiles(), contexts(), st.data())
def test_an_instruction_changes_the_keys_of_its_stage_and_its_consumers_only(
    w: Written, files: dict[str, str], data: st.DataObject
) -> None:
    lines = w.text.splitlines(keepends=True)
    number = data.draw(st.integers(0, len(lines) - 1))
    stage = w.order[sum(line.startswith("FROM ") for line in lines[: number + 1]) - 1]
    edited = "".join([*lines[:number], _edit(lines[number]), *lines[number + 1:]])
    before = _keys(w.text, files)
    assert changed(before, _keys(edited, files)) == _consumers_of(w, {stage}) & before.keys()
