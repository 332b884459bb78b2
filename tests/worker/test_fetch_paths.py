"""fetch_context refuses a Dockerfile or context directory that leaves the source through a symlink
(issue #14, item 1); pure file-system checks, no buildah."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagefleet.worker.fetch import FetchError, fetch_context
from stagefleet.worker.spec import UsageError, parse_args


def _ctx(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "Dockerfile").write_text("FROM x\n")
    (ctx / "Dockerfile").symlink_to("/etc/passwd")
    (ctx / "root").symlink_to("/")
    (ctx / "alias").symlink_to("app")
    return ctx


def _fetch(tmp_path: Path, *args: str) -> Path:
    spec = parse_args(["--context", str(tmp_path / "ctx"), "--target", "t", "--push", "r.io/a/b:1", *args])
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return fetch_context(spec, work).dockerfile


@pytest.mark.parametrize(
    "args",
    [(), ("--context-dir", "root", "--dockerfile", "etc/passwd"), ("--context-dir", "root/etc")],
)
def test_symlinks_out_of_the_context_are_refused(tmp_path: Path, args: tuple[str, ...]) -> None:
    _ctx(tmp_path)
    with pytest.raises(FetchError) as e:
        _fetch(tmp_path, *args)
    assert "symlink" in str(e.value) and "root:x" not in str(e.value)


def test_symlinks_inside_the_context_are_followed(tmp_path: Path) -> None:
    _ctx(tmp_path)
    assert _fetch(tmp_path, "--context-dir", "alias").read_text() == "FROM x\n"
    assert _fetch(tmp_path, "--dockerfile", "app/Dockerfile").read_text() == "FROM x\n"


@pytest.mark.parametrize("rel", ["../../etc/passwd", "/etc/passwd", "a/../../b"])
def test_paths_leaving_the_context_are_usage_errors(rel: str) -> None:
    with pytest.raises(UsageError):
        parse_args(["--context", "/c", "--dockerfile", rel, "--target", "t", "--push", "r.io/a/b:1"])
