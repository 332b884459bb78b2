"""The statuses the operator's pure status module writes, through Argo CD's Lua, its twin and kstatus.

No cluster needed: stagefleet.controller.status builds the status dicts the operator patches; every one must
follow the kstatus conventions and make Argo CD and Flux say the same thing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from stagefleet import health

from .test_argocd_kstatus import LUA_PATH, ArgoLua
from .test_recorded_statuses import check_recorded

report = pytest.importorskip("stagefleet.controller.report")
buildphase = pytest.importorskip("stagefleet.controller.buildphase")

NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def imagebuild(status: dict[str, Any], generation: int = 3) -> dict[str, Any]:
    return {"apiVersion": "stagefleet.io/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": "seed", "namespace": "builds", "generation": generation},
            "status": status}


def operator_statuses() -> dict[str, tuple[dict[str, Any], str, str]]:
    """name -> (object, expected Argo CD health, expected kstatus)."""
    gen = 3
    pending = report.progress_status(generation=gen, phase=buildphase.PENDING, reason="Resolving",
                                 message="resolving the source", old={}, now=NOW)
    planning = report.progress_status(generation=gen, phase=buildphase.PLANNING, reason="Planning",
                                  message="planning", old=pending, now=NOW)
    blocked = report.progress_status(generation=gen, phase=buildphase.PENDING, reason="SecretNotFound",
                                 message='Secret "npm" not found', old=pending, now=NOW, stalled=True)
    failed = report.terminal_status(generation=gen, phase=buildphase.FAILED, reason="DockerfileError",
                                message="Dockerfile:3: unknown instruction", old=planning, now=NOW)
    cancelled = report.terminal_status(generation=gen, phase=buildphase.CANCELLED, reason="Timeout",
                                   message="timeout 10m exceeded", old=planning, now=NOW)
    building = {"phase": buildphase.BUILDING, "observedGeneration": gen, "message": "building 2 of 3",
                "conditions": report.conditions(buildphase.BUILDING, "Building", "building 2 of 3", gen,
                                            planning["conditions"], NOW)}
    succeeded = {"phase": buildphase.SUCCEEDED, "observedGeneration": gen, "message": "pushed",
                 "image": {"name": "r.example/seed:latest", "digest": DIGEST},
                 "conditions": report.conditions(buildphase.SUCCEEDED, "Succeeded", "pushed", gen,
                                             building["conditions"], NOW)}
    return {
        "pending": (imagebuild(pending), "Progressing", "InProgress"),
        "planning": (imagebuild(planning), "Progressing", "InProgress"),
        "blocked-on-secret": (imagebuild(blocked), "Degraded", "Failed"),
        "building": (imagebuild(building), "Progressing", "InProgress"),
        "succeeded": (imagebuild(succeeded), "Healthy", "Current"),
        "failed": (imagebuild(failed), "Degraded", "Failed"),
        "cancelled": (imagebuild(cancelled), "Degraded", "Failed"),
        "spec-changed": (imagebuild(succeeded, generation=gen + 1), "Progressing", "InProgress"),
    }


CASES = operator_statuses()


@pytest.fixture(scope="module")
def lua() -> ArgoLua:
    return ArgoLua(LUA_PATH.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_operator_status_health(name: str, lua: ArgoLua) -> None:
    obj, argo, ks = CASES[name]
    assert lua(obj).status == argo
    assert health.kstatus(obj).status == ks
    assert check_recorded(obj, lua) == []
    # Ready stays True from the previous generation until the operator sees the new spec, so `kubectl wait
    # --for=condition=Ready` alone can return early right after a change (docs/gitops.md says so).
    assert health.is_ready(obj) is (argo == "Healthy" or name == "spec-changed")
