"""Pausing a build (docs/operator.md, "Pausing a build"): ``spec.suspend: true`` stops the running worker
pods and starts none; ``false`` resumes the same run, whose stopped groups start again without using a
retry. On both tiers, with the real builder and registry; the edit is observed (observedGeneration follows
metadata.generation) without a new run, and Argo CD's health says Suspended meanwhile."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from stagefleet import health
from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, pod_states, seed_manifest, stage, wait_for, wait_terminal
from .oci import manifest_digest

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


def _suspend(kubectl: Kubectl, name: str, value: bool) -> None:
    kubectl.run("patch", "imagebuild", name, "--type=merge", "-p", json.dumps({"spec": {"suspend": value}}))


def _live(kubectl: Kubectl, name: str) -> list[str]:
    """Pods that run or are about to (not being deleted)."""
    return [p["metadata"]["name"] for p in kubectl.pods(name)
            if p["status"].get("phase") in ("Pending", "Running")
            and not p["metadata"].get("deletionTimestamp")]


def _running(o: dict[str, Any]) -> bool:
    return any(s["phase"] == "Running" for s in (o.get("status") or {}).get("stages") or ())


def _reason(o: dict[str, Any], ctype: str) -> tuple[str | None, str | None]:
    c = next((c for c in (o.get("status") or {}).get("conditions") or () if c["type"] == ctype), {})
    return c.get("status"), c.get("reason")


@pytest.mark.tiers("real")
def test_a_suspended_build_stops_its_pods_and_resumes_the_same_run(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    kubectl.apply(seed_manifest("pause", base_image, registry.host, sleep=8))
    wait_for(kubectl, operator, "pause", _running, "a stage running")
    _suspend(kubectl, "pause", True)
    held = wait_for(
        kubectl, operator, "pause",
        lambda o: _reason(o, "Reconciling") == ("True", "Suspended") and not _live(kubectl, "pause"),
        "the build suspended and its pods gone",
    )
    st = held["status"]
    assert held["metadata"]["generation"] == 2 and st["observedGeneration"] == 2 and st["run"] == 1, st
    assert st["phase"] == "Building" and st["message"].startswith("suspended (spec.suspend)")
    assert st.get("suspendedAt")
    assert health.argocd_health(held).status == "Suspended" and health.kstatus(held).status == "InProgress"
    stopped = [s["name"] for s in st["stages"] if s.get("restarts")]
    assert stopped, st["stages"]
    # Nothing starts while it stays suspended.
    time.sleep(3)
    assert not _live(kubectl, "pause"), pod_states(kubectl, "pause")
    assert wait_for(kubectl, operator, "pause", lambda o: True, "the build")["status"]["phase"] == "Building"

    _suspend(kubectl, "pause", False)
    done = wait_terminal(kubectl, operator, "pause")
    st = done["status"]
    assert st["phase"] == "Succeeded", st.get("message")
    assert done["metadata"]["generation"] == 3 and st["observedGeneration"] == 3 and st["run"] == 1
    assert "suspendedAt" not in st and st["suspendedSeconds"] >= 3
    for name in stopped:
        s = stage(done, name)
        # stopped once (a restart, not a failure), then built by the next attempt
        assert s["attempts"] - s.get("restarts", 0) == 1 and s["restarts"] >= 1, s
        assert s["pod"].startswith("pause-1-"), s
    assert manifest_digest(registry.host, "e2e/pause", "latest") == st["image"]["digest"]
    reasons = [e["reason"] for e in kubectl.events() if e["involvedObject"].get("name") == "pause"]
    assert reasons.count("Suspended") == 1 and reasons.count("Resumed") == 1, reasons
    assert "RunStarted" not in reasons and "GroupRetrying" not in reasons, reasons
