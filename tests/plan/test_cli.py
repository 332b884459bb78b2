"""`stagefleet plan`: exit codes, stdout/stderr discipline, formats, ImageBuild input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stagefleet.cli import main

DOCKERFILE = (
    "ARG TAG=3.19\n"
    "FROM alpine:$TAG AS build\nRUN --mount=type=secret,id=aws true\n"
    "FROM alpine AS unused\n"
    "FROM build AS final\n"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dockerfile(tmp_path: Path) -> Path:
    path = tmp_path / "Dockerfile"
    path.write_text(DOCKERFILE)
    return path


def test_json_format(capsys: pytest.CaptureFixture[str], dockerfile: Path) -> None:
    code, out, err = run(capsys, "-f", str(dockerfile), "--format", "json", "--build-arg", "TAG=3.20")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["target"] == "final" and data["skipped"] == ["unused"]
    assert data["stages"][0]["base"] == "alpine:3.20"
    assert data["stages"][0]["secrets"] == ["aws"]
    assert data["groups"][0]["stages"] == ["build", "final"]


def test_text_is_default(capsys: pytest.CaptureFixture[str], dockerfile: Path) -> None:
    code, out, _ = run(capsys, "-f", str(dockerfile))
    assert code == 0
    assert out.startswith("target: final\nwave 0:\n")


@pytest.mark.parametrize(("fmt", "marker"), [("dot", "digraph plan {"), ("mermaid", "flowchart LR")])
def test_graph_formats(capsys: pytest.CaptureFixture[str], dockerfile: Path, fmt: str, marker: str) -> None:
    code, out, _ = run(capsys, "-f", str(dockerfile), "--format", fmt)
    assert code == 0 and out.startswith(marker)


def test_target_option(capsys: pytest.CaptureFixture[str], dockerfile: Path) -> None:
    _, out, _ = run(capsys, "-f", str(dockerfile), "--target", "build", "--format", "json")
    assert json.loads(out)["skipped"] == ["unused", "final"]


def test_invalid_dockerfile_exits_2_with_one_line_on_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text("FROM alpine AS a\nFROM alpine\nCOPY --from=a / /\nCOPY --from=7 / /\n")
    code, out, err = run(capsys, "-f", str(path), "--format", "json")
    assert code == 2
    assert out == ""
    assert err == f"{path}:4: invalid stage index 7\n"


def test_unknown_target_exits_2(capsys: pytest.CaptureFixture[str], dockerfile: Path) -> None:
    code, out, err = run(capsys, "-f", str(dockerfile), "--target", "fnal")
    assert (code, out) == (2, "")
    assert err.strip() == f'{dockerfile}: target stage "fnal" could not be found (did you mean final?)'


def test_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "-f", str(tmp_path / "nope"))
    assert (code, out) == (2, "")
    assert "cannot read" in err and err.count("\n") == 1


def test_bad_build_arg_exits_2(capsys: pytest.CaptureFixture[str], dockerfile: Path) -> None:
    code, out, err = run(capsys, "-f", str(dockerfile), "--build-arg", "=x")
    assert (code, out) == (2, "")
    assert "--build-arg" in err


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("FROM alpine\nRUN --mount=type=nope x\n"))
    code, out, err = run(capsys, "-f", "-")
    assert (code, out, err) == (2, "", 'Dockerfile:2: unsupported mount type "nope"\n')


IMAGEBUILD = """\
apiVersion: stagefleet.io/v1alpha1
kind: ImageBuild
metadata: {name: demo}
spec:
  target: build
  source:
    inline:
      dockerfile: |
        ARG TAG=1
        FROM alpine:$TAG AS build
        FROM build AS final
"""


@pytest.mark.parametrize(
    "build_args",
    ["  buildArgs:\n    - name: TAG\n      value: '3.20'\n", "  buildArgs:\n    TAG: '3.20'\n"],
)
def test_imagebuild_yaml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, build_args: str
) -> None:
    path = tmp_path / "build.yaml"
    path.write_text(IMAGEBUILD + build_args)
    code, out, err = run(capsys, "-f", str(path), "--format", "json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["target"] == "build"
    assert data["stages"][0]["base"] == "alpine:3.20"


def test_imagebuild_cli_overrides_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "build.yaml"
    path.write_text(IMAGEBUILD)
    _, out, _ = run(capsys, "-f", str(path), "--format", "json", "--target", "final", "--build-arg", "TAG=9")
    data = json.loads(out)
    assert (data["target"], data["stages"][0]["base"]) == ("final", "alpine:9")


def test_imagebuild_without_inline_dockerfile(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "build.yml"
    path.write_text(
        "apiVersion: stagefleet.io/v1alpha1\nkind: ImageBuild\nspec:\n  source:\n    git: {url: x}\n"
    )
    code, out, err = run(capsys, "-f", str(path))
    assert (code, out) == (2, "")
    assert "spec.source.inline.dockerfile is required" in err


def test_yaml_file_of_another_kind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\n")
    code, _, err = run(capsys, "-f", str(path))
    assert code == 2 and "expected 'ImageBuild'" in err


def test_imagebuild_error_lines_are_dockerfile_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(IMAGEBUILD.replace("FROM build AS final", "FROM build AS 9final"))
    code, out, err = run(capsys, "-f", str(path))
    assert (code, out) == (2, "")
    assert err.startswith("Dockerfile:3: invalid name for build stage")


def test_console_script_end_to_end(tmp_path: Path) -> None:
    """The real entry point, stdin and exit status through a process boundary."""
    exe = Path(sys.executable).with_name("stagefleet")
    ok = subprocess.run([str(exe), "plan", "-f", "-", "--format", "json"], input=DOCKERFILE,
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and json.loads(ok.stdout)["target"] == "final"
    bad = subprocess.run(
        [str(exe), "plan", "-f", "-"], input="FROM\n", capture_output=True, text=True, check=False
    )
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "Dockerfile:1: FROM requires either one or three arguments\n"
