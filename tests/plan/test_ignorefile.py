"""The ignore-file matcher (moby patternmatcher's rules): what a pattern leaves out, exceptions, the file
that wins, and patterns it refuses to guess about. Agreement with the real buildah:
tests/worker/test_ignorefile_buildah.py."""

from __future__ import annotations

import pytest

from stagefleet import ignorefile


def excluded(text: str, *paths: str) -> list[str]:
    rules = ignorefile.parse(text)
    assert rules is not None
    return [p for p in paths if rules.excluded(p)]


PATHS = ("a.txt", "b.txt", "sub/d.txt", "sub/e.md", "sub/deep/f.md", "README.md", "node_modules/x/y.js")


@pytest.mark.parametrize(("text", "left_out"), [
    ("a.txt\n", ["a.txt"]),
    ("*.txt\n", ["a.txt", "b.txt"]),  # one component: not sub/d.txt
    ("/sub/*.txt\n", ["sub/d.txt"]),
    ("sub\n!sub/e.md\n", ["sub/d.txt", "sub/deep/f.md"]),
    ("**/*.md\n", ["sub/e.md", "sub/deep/f.md", "README.md"]),
    ("*.txt\n!a.txt\n", ["b.txt"]),
    ("sub/\n", ["sub/d.txt", "sub/e.md", "sub/deep/f.md"]),
    ("node_modules\n", ["node_modules/x/y.js"]),
    ("sub/**\n", ["sub/d.txt", "sub/e.md", "sub/deep/f.md"]),
    ("s?b/d.txt\n", ["sub/d.txt"]),
    ("# a comment\n\n   a.txt   \n", ["a.txt"]),
    ("./sub/../a.txt\n", ["a.txt"]),
    ("!a.txt\n", []),
    ("*.md\n!README.md\nREADME.md\n", ["README.md"]),  # the last match decides
])
def test_patterns(text: str, left_out: list[str]) -> None:
    assert excluded(text, *PATHS) == left_out


def test_patterns_it_cannot_match_exactly_ignore_nothing() -> None:
    assert ignorefile.parse("[ab].txt\n") is None
    assert ignorefile.parse("a\\*.txt\n") is None


def test_the_dockerfiles_own_file_wins_then_containerignore_then_dockerignore() -> None:
    own = ignorefile.rules("c.txt\n", ["a.txt\n", "b.txt\n"])
    assert own is not None and own.excluded("c.txt") and not own.excluded("a.txt")
    root = ignorefile.rules(None, ["a.txt\n", "b.txt\n"])
    assert root is not None and root.excluded("a.txt") and not root.excluded("b.txt")
    only_docker = ignorefile.rules(None, [None, "b.txt\n"])
    assert only_docker is not None and only_docker.excluded("b.txt")
    assert ignorefile.rules(None, [None, None]) is None
    assert ignorefile.rules("[x]\n", ["a.txt\n"]) is None  # the winner cannot be matched: nothing left out


def test_an_index_without_what_is_ignored_keeps_the_ignore_files() -> None:
    from stagefleet.stagekey import ContextIndex

    index = ContextIndex({".dockerignore": "100644 a", "a.log": "100644 b", "src/x.py": "100644 c",
                          "sub/.dockerignore": "100644 d", ".git": "commit e"})
    rules = ignorefile.parse(".dockerignore\n*.log\n**/.dockerignore\n.git\n")
    assert rules is not None
    assert set(index.without(rules).entries) == {".dockerignore", "src/x.py", "sub/.dockerignore"}
    assert index.without(None) is index
    assert index.without(rules).digest(["src"]) == index.digest(["src"])
