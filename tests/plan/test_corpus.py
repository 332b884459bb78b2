"""Golden tests: every Dockerfile in corpus/ has a hand-written expected plan (.json) or error (.err).

`NAME.args.json` (optional) holds the target, build args and platform the case is planned with. The
build platform is pinned to linux/amd64 so the BUILD* built-ins do not depend on the test machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stagefleet.plan import make_plan, plan_to_json
from stagefleet.stages import DockerfileError, parse_stage_graph

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p.name.removesuffix(".Dockerfile") for p in CORPUS.glob("*.Dockerfile"))


def _args(name: str) -> dict[str, Any]:
    path = CORPUS / f"{name}.args.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _plan(name: str) -> dict[str, Any]:
    args = _args(name)
    graph = parse_stage_graph(
        (CORPUS / f"{name}.Dockerfile").read_text(),
        filename="Dockerfile",
        target=args.get("target"),
        build_args=args.get("build_args"),
        platform=args.get("platform"),
        build_platform=args.get("build_platform", "linux/amd64"),
    )
    return plan_to_json(make_plan(graph))


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40
    for name in CASES:
        has_json = (CORPUS / f"{name}.json").exists()
        has_err = (CORPUS / f"{name}.err").exists()
        assert has_json != has_err, f"{name}: needs exactly one of .json / .err"


@pytest.mark.parametrize("name", [c for c in CASES if (CORPUS / f"{c}.json").exists()])
def test_plan_matches(name: str) -> None:
    expected = json.loads((CORPUS / f"{name}.json").read_text())
    assert _plan(name) == expected


@pytest.mark.parametrize("name", [c for c in CASES if (CORPUS / f"{c}.err").exists()])
def test_error_matches(name: str) -> None:
    expected = (CORPUS / f"{name}.err").read_text().strip()
    with pytest.raises(DockerfileError) as info:
        _plan(name)
    assert str(info.value) == expected
