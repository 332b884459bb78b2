"""Real ImageBuild objects recorded from the operator through the same health checks (no expectations)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagefleet import health

from .test_argocd_kstatus import LUA_PATH, ArgoLua

RECORDED = Path(__file__).resolve().parent / "recorded"

# What the phase of a well-formed, observed status means for Argo CD.
EXPECTED_BY_PHASE = {
    "Pending": "Progressing", "Planning": "Progressing", "Building": "Progressing",
    "Succeeded": "Healthy", "Failed": "Degraded", "Cancelled": "Degraded",
}


def recorded_objects() -> list[tuple[str, dict[str, Any]]]:
    dirs = [RECORDED]
    extra = os.environ.get("STAGEFLEET_RECORDED_STATUSES")
    if extra:
        dirs.append(Path(extra))
    out: list[tuple[str, dict[str, Any]]] = []
    for d in dirs:
        for path in sorted(d.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc:
                    continue
                items = doc.get("items", []) if doc.get("kind") == "List" else [doc]
                out.extend((f"{path.name}:{i}", item) for i, item in enumerate(items)
                           if item.get("kind") == "ImageBuild")
    return out


def check_recorded(obj: dict[str, Any], lua: ArgoLua) -> list[str]:
    """Everything a real, observed ImageBuild status must satisfy (empty: fine)."""
    problems = list(health.convention_problems(obj))
    argo = lua(obj)
    if argo != health.argocd_health(obj):
        problems.append(f"Lua {argo} != Python twin {health.argocd_health(obj)}")
    ks = health.kstatus(obj)
    if health.KSTATUS_TO_ARGOCD[ks.status] != argo.status:
        problems.append(f"Argo CD {argo.status} but kstatus {ks.status}")
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    if status.get("observedGeneration") == generation and "deletionTimestamp" not in obj.get("metadata", {}):
        stalled = health.condition_true(obj, "Stalled")
        expected = "Degraded" if stalled else EXPECTED_BY_PHASE.get(str(status.get("phase")))
        if argo.status != expected:
            problems.append(f"phase {status.get('phase')}: Argo CD {argo.status}, expected {expected}")
    return problems


def test_recorded_statuses() -> None:
    objects = recorded_objects()
    if not objects:
        pytest.skip("no recorded ImageBuild objects yet "
                    "(tests/gitops/recorded/*.yaml or STAGEFLEET_RECORDED_STATUSES)")
    lua = ArgoLua(LUA_PATH.read_text())
    failures = {name: p for name, obj in objects if (p := check_recorded(obj, lua))}
    assert failures == {}


def test_check_recorded_catches_a_bad_status() -> None:
    lua = ArgoLua(LUA_PATH.read_text())
    bad = {"kind": "ImageBuild", "metadata": {"generation": 1},
           "status": {"observedGeneration": 1, "phase": "Failed",
                      "conditions": [{"type": "Ready", "status": "False"}]}}
    problems = check_recorded(bad, lua)
    assert any("Stalled" in p for p in problems)
    assert any("kstatus Current" in p for p in problems)
    good = {"kind": "ImageBuild", "metadata": {"generation": 1},
            "status": {"observedGeneration": 1, "phase": "Failed",
                       "conditions": [{"type": "Ready", "status": "False"},
                                      {"type": "Stalled", "status": "True", "message": "x"}]}}
    assert check_recorded(good, lua) == []
