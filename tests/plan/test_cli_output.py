"""`stagefleet plan -o FILE`: text formats to a file, PNG/SVG through graphviz's dot, and dot missing."""

from __future__ import annotations

import argparse
import json
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from stagefleet.commands import plan as plan_cmd

from .test_cli import run

DOCKERFILE = (
    "FROM alpine AS build1\nRUN echo one\n"
    "FROM alpine AS build2\nRUN echo two\n"
    "FROM alpine AS unused\n"
    "FROM alpine AS final\nCOPY --from=build1 / /one\nCOPY --from=build2 / /two\n"
)
BUILT = ("build1", "build2", "final")
SVG_NS = "{http://www.w3.org/2000/svg}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")


@pytest.fixture
def dockerfile(tmp_path: Path) -> Path:
    path = tmp_path / "Dockerfile"
    path.write_text(DOCKERFILE)
    return path


@needs_dot
def test_svg_is_well_formed_and_names_every_built_stage(
    capsys: pytest.CaptureFixture[str], dockerfile: Path, tmp_path: Path
) -> None:
    svg = tmp_path / "plan.svg"
    code, out, err = run(capsys, "-f", str(dockerfile), "-o", str(svg))
    assert (code, out, err) == (0, "", "")
    root = ET.fromstring(svg.read_bytes())  # raises on malformed XML
    assert root.tag == f"{SVG_NS}svg"
    texts = {t.text for t in root.iter(f"{SVG_NS}text")}
    titles = {t.text for t in root.iter(f"{SVG_NS}title")}
    for name in BUILT:
        assert name in texts and name in titles, name
    assert "unused" not in texts  # a skipped stage is not drawn
    assert {"build1->final", "build2->final"} <= titles  # the edges


@needs_dot
@pytest.mark.parametrize("name", ["plan.png", "PLAN.PNG"])
def test_png_starts_with_the_png_magic(
    capsys: pytest.CaptureFixture[str], dockerfile: Path, tmp_path: Path, name: str
) -> None:
    png = tmp_path / name
    code, out, err = run(capsys, "-f", str(dockerfile), "--format", "json", "--output", str(png))
    assert (code, out, err) == (0, "", "")
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 100


def test_missing_dot_exits_2_with_nothing_on_stdout(
    capsys: pytest.CaptureFixture[str], dockerfile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for name in ("plan.svg", "plan.png"):
        code, out, err = run(capsys, "-f", str(dockerfile), "-o", str(tmp_path / name))
        assert (code, out) == (2, "")
        assert err == "graphviz's dot is not installed; use --format dot\n"
        assert not (tmp_path / name).exists()
    # Text formats need no graphviz.
    code, out, err = run(capsys, "-f", str(dockerfile), "--format", "dot", "-o", str(tmp_path / "plan.dot"))
    assert (code, out, err) == (0, "", "")
    assert (tmp_path / "plan.dot").read_text().startswith("digraph plan {")


@pytest.mark.parametrize(
    ("fmt", "name", "check"),
    [
        ("json", "plan.json", lambda s: json.loads(s)["skipped"] == ["unused"]),
        ("mermaid", "plan.mmd", lambda s: s.startswith("flowchart LR")),
        ("dot", "plan.gv", lambda s: s.startswith("digraph plan {") and '"build1" -> "final"' in s),
        ("text", "plan.txt", lambda s: s.startswith("target: final\n")),
    ],
)
def test_other_extensions_get_the_chosen_format(
    capsys: pytest.CaptureFixture[str], dockerfile: Path, tmp_path: Path, fmt: str, name: str,
    check: Callable[[str], bool],
) -> None:
    path = tmp_path / name
    code, out, err = run(capsys, "-f", str(dockerfile), "--format", fmt, "-o", str(path))
    assert (code, out, err) == (0, "", "")
    text = path.read_text()
    assert check(text), text
    assert text == plan_cmd.render(plan_cmd.build_plan(_args(dockerfile, fmt)), fmt) + "\n"


def test_invalid_dockerfile_writes_no_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM alpine\nFORM x\n")
    code, out, err = run(capsys, "-f", str(bad), "-o", str(tmp_path / "plan.svg"))
    assert (code, out) == (2, "") and "unknown instruction" in err
    assert not (tmp_path / "plan.svg").exists()


def test_failing_dot_exits_1_with_its_error(
    capsys: pytest.CaptureFixture[str], dockerfile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dot").write_text("#!/bin/sh\necho 'Format: \"svg\" not recognized' >&2\nexit 1\n")
    (fake / "dot").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    code, out, err = run(capsys, "-f", str(dockerfile), "-o", str(tmp_path / "plan.svg"))
    assert (code, out) == (1, "")
    assert "dot -Tsvg failed (exit 1)" in err and "not recognized" in err
    assert not (tmp_path / "plan.svg").exists()


def _args(dockerfile: Path, fmt: str) -> argparse.Namespace:
    return argparse.Namespace(file=str(dockerfile), target=None, build_arg=[], platform=None, format=fmt)
