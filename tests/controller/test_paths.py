"""Paths a user gives (spec.dockerfile, spec.source.contextDir) stay inside the source: lexically in the
spec and the CRD, and through symlinks on disk (issue #14, item 1)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagefleet.controller.spec import SpecError, parse_spec
from stagefleet.ctxpath import DOCKERFILE_PATTERN, OutsideError, inside, lexical_problem

ROOT = Path(__file__).resolve().parents[2]

INSIDE = ["Dockerfile", "./Dockerfile", "docker/Dockerfile.dev", ".ci/Dockerfile", "a/./b", "...", "..x/y"]
OUTSIDE = ["../../etc/passwd", "/etc/passwd", "a/../../etc/passwd", "..", "a/..", "docker/../../x"]


def _crd_pattern() -> str:
    crd = yaml.safe_load((ROOT / "crds/imagebuild.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    pattern = spec["properties"]["dockerfile"]["pattern"]
    assert isinstance(pattern, str)
    return pattern


def _git_spec(**extra: Any) -> dict[str, Any]:
    return {"source": {"git": {"url": "https://git.example/r.git"}}, "output": {"image": "r.io/a/b"}, **extra}


@pytest.mark.parametrize("path", INSIDE)
def test_paths_inside_pass_the_crd_and_the_operator(path: str) -> None:
    assert _crd_pattern() == DOCKERFILE_PATTERN
    assert re.search(DOCKERFILE_PATTERN, path) and lexical_problem(path) is None
    assert parse_spec(_git_spec(dockerfile=path)).dockerfile == str(Path(path))


@pytest.mark.parametrize("path", OUTSIDE)
def test_paths_leaving_the_source_are_refused_by_the_crd_and_the_operator(path: str) -> None:
    assert not re.search(_crd_pattern(), path)
    with pytest.raises(SpecError) as e:
        parse_spec(_git_spec(dockerfile=path))
    assert e.value.path == "spec.dockerfile" and path in e.value.message


def test_context_dir_with_nul_or_dots_is_refused() -> None:
    for bad in ("a/../../etc", "..", "a\0b"):
        with pytest.raises(SpecError) as e:
            parse_spec({**_git_spec(), "source": {"git": {"url": "https://g.example/r"}, "contextDir": bad}})
        assert e.value.path == "spec.source.contextDir"


def test_symlinks_leaving_the_root_are_refused_without_naming_their_target(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "app").mkdir(parents=True)
    (root / "app" / "Dockerfile").write_text("FROM x\n")
    (root / "link-in").symlink_to("app/Dockerfile")
    (root / "Dockerfile").symlink_to("/etc/passwd")
    (root / "up").symlink_to("..")
    (root / "abs").symlink_to("/")
    assert inside(root, "link-in", "f") == (root / "app" / "Dockerfile").resolve()
    assert inside(root, "app", "d") == (root / "app").resolve()
    assert inside(root, "", "d") == root.resolve()
    for rel in ("Dockerfile", "up/elsewhere", "abs/etc/passwd", "up"):
        with pytest.raises(OutsideError) as e:
            inside(root, rel, f"spec.dockerfile {rel!r}")
        assert rel in str(e.value) and "passwd" not in str(e.value).replace(rel, "")
