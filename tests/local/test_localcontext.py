"""The index of a local context directory (localcontext.index_directory): what a COPY can read changes its
digest — content, mode, a symbolic link's target text, an empty directory — and nothing else does."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from stagefleet.local import context as localcontext
from stagefleet.local.context import index_directory


def _tree(root: Path) -> Path:
    (root / "left").mkdir(parents=True)
    (root / "right").mkdir()
    (root / "left" / "a.txt").write_text("left\n")
    (root / "right" / "b.txt").write_text("right\n")
    (root / "top.txt").write_text("top\n")
    os.chmod(root / "top.txt", 0o644)
    return root


def _digests(root: Path) -> dict[str, str]:
    index = index_directory(root)
    return {p: index.digest([p]) for p in ("left", "right/b.txt", "top.txt", "*.txt", ".")}


def test_entries_are_relative_posix_paths_with_mode_and_content_hash(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ctx")
    entries = index_directory(root).entries
    assert set(entries) == {"left", "right", "left/a.txt", "right/b.txt", "top.txt"}
    assert entries["top.txt"] == "100644 sha256:" + hashlib.sha256(b"top\n").hexdigest()
    assert entries["left"].endswith(" dir") and entries["left"].startswith("04")


def test_a_content_change_changes_only_the_digests_that_select_the_file(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ctx")
    before = _digests(root)
    (root / "left" / "a.txt").write_text("left, changed\n")
    after = _digests(root)
    assert [p for p in before if before[p] != after[p]] == ["left", "."]


def test_a_mode_change_counts_as_copy_keeps_it(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ctx")
    before = _digests(root)
    os.chmod(root / "top.txt", 0o755)
    after = _digests(root)
    assert [p for p in before if before[p] != after[p]] == ["top.txt", "*.txt", "."]
    assert index_directory(root).entries["top.txt"].startswith("100755 ")


def test_a_symlink_is_its_target_text_never_what_it_points_to(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret 1\n")
    root = _tree(tmp_path / "ctx")
    (root / "link").symlink_to(outside)
    index = index_directory(root)
    assert index.entries["link"] == "120000 sha256:" + hashlib.sha256(os.fsencode(str(outside))).hexdigest()
    before = index.digest(["link"])
    outside.write_text("secret 2\n")  # not followed: the context does not change
    assert index_directory(root).digest(["link"]) == before
    (root / "link").unlink()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    assert index_directory(root).digest(["link"]) != before


def test_a_link_to_a_directory_is_not_walked(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ctx")
    (root / "loop").symlink_to(root)
    entries = index_directory(root).entries
    assert "loop" in entries and not any(p.startswith("loop/") for p in entries)


def test_an_empty_directory_counts(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ctx")
    before = index_directory(root).digest(["."])
    (root / "empty").mkdir()
    assert index_directory(root).digest(["."]) != before


def test_only_selected_files_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "ctx")
    read: list[str] = []
    real = localcontext._file_sha256

    def spy(path: Path) -> str:
        read.append(path.name)
        return real(path)

    monkeypatch.setattr(localcontext, "_file_sha256", spy)
    index_directory(root).digest(["right"])
    assert read == ["b.txt"]


def test_a_file_that_cannot_be_read_raises_when_selected(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ctx")
    index = index_directory(root)
    (root / "top.txt").unlink()
    (root / "top.txt").symlink_to(root / "left" / "a.txt")  # swapped for a link after the walk
    with pytest.raises(OSError):
        index.digest(["top.txt"])
    assert index.digest(["left"])  # the rest is fine


def test_what_the_ignore_file_leaves_out_changes_no_key_and_is_not_walked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "ctx")
    (root / "node_modules" / "pkg").mkdir(parents=True)
    (root / "node_modules" / "pkg" / "index.js").write_text("v1\n")
    (root / ".dockerignore").write_text("node_modules\n*.log\n")
    (root / "debug.log").write_text("one\n")
    rules = localcontext.ignore_rules(root, root / "Dockerfile")
    assert rules is not None
    entries = index_directory(root, rules).entries
    assert ".dockerignore" in entries and "top.txt" in entries
    assert not any(p.startswith("node_modules") or p == "debug.log" for p in entries)
    before = index_directory(root, rules).digest(["."])
    (root / "node_modules" / "pkg" / "index.js").write_text("v2\n")
    (root / "debug.log").write_text("two\n")
    assert index_directory(root, rules).digest(["."]) == before
    (root / "top.txt").write_text("changed\n")
    assert index_directory(root, rules).digest(["."]) != before
    # Without the rules, everything counts (and the ignore file's own change always does).
    assert index_directory(root).digest(["."]) != index_directory(root, rules).digest(["."])
    (root / ".dockerignore").write_text("node_modules\n")
    assert index_directory(root, localcontext.ignore_rules(root, None)).digest(["."]) != before
    # An ignored directory is never entered.
    listed: list[str] = []
    real_scandir = os.scandir

    def spy(path: str) -> os.ScandirIterator[str]:
        listed.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(localcontext.os, "scandir", spy)
    index_directory(root, rules)
    assert not any("node_modules" in p for p in listed) and str(root) in listed


def test_the_dockerfiles_own_ignore_file_counts_only_for_a_dockerfile_in_the_context(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ctx")
    (root / "Dockerfile.dockerignore").write_text("top.txt\n")
    (root / ".dockerignore").write_text("left\n")
    own = localcontext.ignore_rules(root, root / "Dockerfile")
    assert own is not None and own.excluded("top.txt") and not own.excluded("left/a.txt")
    outside = localcontext.ignore_rules(root, None)
    assert outside is not None and outside.excluded("left/a.txt") and not outside.excluded("top.txt")
    (root / "Dockerfile.containerignore").write_text("right\n")
    assert localcontext.ignore_rules(root, root / "Dockerfile") is None  # not verified: nothing left out
