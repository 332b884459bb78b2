"""GitOps health on the real status objects the operator writes while building (issue 6).

Every distinct ImageBuild object `kubectl get -o json` shows during a build goes through the real Argo CD
Lua health check (run as Argo CD runs it, tests/gitops' ArgoLua), its Python twin and kstatus: Progressing /
InProgress while Pending/Planning/Building or while a spec edit is not yet observed, Healthy / Current on
Succeeded, Degraded / Failed on Failed. The objects are then written to a directory and read back through
tests/gitops' recorded-status loader and `check_recorded`, the check a recorded status must pass.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

# tests/ is on sys.path (tests/e2e and tests/gitops are top-level packages under the rootdir conftest).
from gitops.test_argocd_kstatus import LUA_PATH, ArgoLua
from gitops.test_recorded_statuses import check_recorded, recorded_objects
from stagefleet import health
from stagefleet.localregistry import LocalRegistry

from .conftest import TERMINAL, Kubectl, Operator, inline_manifest, seed_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


@pytest.fixture(scope="module")
def lua() -> ArgoLua:
    return ArgoLua(LUA_PATH.read_text())


class Recorder:
    """Polls one ImageBuild and keeps every distinct object seen (generation + status), in order."""

    def __init__(self, kubectl: Kubectl, operator: Operator, name: str) -> None:
        self.kubectl, self.operator, self.name = kubectl, operator, name
        self.objects: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    def add(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = json.dumps(
            [meta.get("generation"), meta.get("deletionTimestamp"), obj.get("status")], sort_keys=True
        )
        if key not in self._seen:
            self._seen.add(key)
            self.objects.append(obj)

    def until_terminal(self, generation: int, timeout: float = 300) -> dict[str, Any]:
        """Poll (fast: short phases are what this is about) until a terminal phase for ``generation``."""
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.operator.alive(), f"the operator exited\n{self.operator.tail()}"
            proc = self.kubectl.run("get", "ib", self.name, "-o", "json", check=False)
            if proc.returncode == 0:
                obj = json.loads(proc.stdout)
                self.add(obj)
                status = obj.get("status") or {}
                if status.get("phase") in TERMINAL and status.get("observedGeneration") == generation:
                    assert obj["metadata"]["generation"] == generation
                    return obj
            time.sleep(0.1)
        raise AssertionError(
            f"{self.name} generation {generation} never ended: {json.dumps(obj.get('status'))[:3000]}\n"
            f"{self.operator.tail()}"
        )


def expected_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(Argo CD, kstatus) that the object must show, from what the test knows about the build."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return "Progressing", "InProgress"  # the operator has not seen this spec yet
    phase = status.get("phase")
    if phase in health.ACTIVE_PHASES:
        return "Progressing", "InProgress"
    if phase == "Succeeded":
        return "Healthy", "Current"
    assert phase in ("Failed", "Cancelled"), phase
    return "Degraded", "Failed"


def assert_health(objects: list[dict[str, Any]], lua: ArgoLua) -> list[tuple[str | None, str, str]]:
    """Every object: the real Lua, the Python twin and kstatus say what its phase means; check_recorded()
    finds nothing. Returns (phase, argocd, kstatus) per object with a status."""
    seen: list[tuple[str | None, str, str]] = []
    for obj in objects:
        argo = lua(obj)
        assert argo.message, obj.get("status")
        if not obj.get("status"):
            # Applied, not yet seen by the operator: Argo CD waits. (kstatus has no observedGeneration to
            # compare and no conditions, so it reports Current here; nothing of ours to check.)
            assert argo.status == "Progressing", argo
            continue
        want = expected_health(obj)
        ks = health.kstatus(obj)
        got = (argo.status, ks.status)
        assert got == want, (got, want, argo.message, ks.message, json.dumps(obj["status"], indent=1))
        assert health.argocd_health(obj) == argo
        assert check_recorded(obj, lua) == [], json.dumps(obj["status"], indent=1)
        assert health.is_ready(obj) is (want[0] == "Healthy")
        seen.append((obj["status"].get("phase"), argo.status, ks.status))
    return seen


def record_and_recheck(
    objects: list[dict[str, Any]], name: str, lua: ArgoLua, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write the real objects as a kubectl List and read them back through the recorded-status loader."""
    out = tmp_path / "recorded"
    out.mkdir(exist_ok=True)
    with_status = [o for o in objects if o.get("status")]
    listing = {"apiVersion": "v1", "kind": "List", "items": with_status}
    (out / f"{name}.yaml").write_text(yaml.safe_dump(listing))
    monkeypatch.setenv("STAGEFLEET_RECORDED_STATUSES", str(out))
    loaded = [(key, obj) for key, obj in recorded_objects() if key.startswith(f"{name}.yaml:")]
    assert len(loaded) == len(with_status) > 0
    assert {key: p for key, obj in loaded if (p := check_recorded(obj, lua))} == {}


@pytest.mark.tiers("real")
def test_seed_statuses_progressing_then_healthy(
    kubectl: Kubectl,
    operator: Operator,
    registry: LocalRegistry,
    base_image: str,
    lua: ArgoLua,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kubectl.apply(seed_manifest("health", base_image, registry.host, sleep=2))
    rec = Recorder(kubectl, operator, "health")
    final = rec.until_terminal(1)
    assert final["status"]["phase"] == "Succeeded", final["status"].get("message")

    seen = assert_health(rec.objects, lua)
    phases = [p for p, _, _ in seen]
    print(f"{len(rec.objects)} distinct objects; Argo CD by phase: {seen}")
    # The build was watched while it ran (Building lasts at least the seed's sleep) and ended Healthy.
    assert "Building" in phases and phases[-1] == "Succeeded", phases
    assert all(p in health.ACTIVE_PHASES for p in phases[:-1]), phases
    image = final["status"]["image"]
    assert lua(final).message == f"Built {image['name']}@{image['digest']}"
    record_and_recheck(rec.objects, "health", lua, tmp_path, monkeypatch)


def test_failed_statuses_degraded_and_spec_edit_progressing(
    kubectl: Kubectl,
    operator: Operator,
    registry: LocalRegistry,
    base_image: str,
    lua: ArgoLua,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Generation 1: a Dockerfile the planner rejects -> Failed before any pod.
    kubectl.apply(inline_manifest("sick", f"FROM {base_image} AS a\nFORM x\n", registry.host))
    rec = Recorder(kubectl, operator, "sick")
    failed = rec.until_terminal(1)
    assert failed["status"]["phase"] == "Failed"
    argo = lua(failed)
    assert argo.status == "Degraded" and "unknown instruction: FORM" in argo.message, argo

    # Generation 2: a spec edit. Until the operator observes it, the old Failed status is stale: both tools
    # must say Progressing/InProgress, not Degraded. `kubectl patch -o json` returns exactly that object.
    dockerfile = f"FROM {base_image} AS a\nRUN echo about to fail && exit 3\n"
    patch = json.dumps({"spec": {"source": {"inline": {"dockerfile": dockerfile}}}})
    edited = json.loads(kubectl.run("patch", "ib", "sick", "--type=merge", "-p", patch, "-o", "json").stdout)
    assert edited["metadata"]["generation"] == 2 and edited["status"]["observedGeneration"] == 1
    assert edited["status"]["phase"] == "Failed"
    assert (lua(edited).status, health.kstatus(edited).status) == ("Progressing", "InProgress")
    rec.add(edited)

    # ... then a step fails in the worker pod -> Failed again, for generation 2.
    failed2 = rec.until_terminal(2)
    assert failed2["status"]["phase"] == "Failed" and failed2["status"]["failure"]["stage"] == "a"
    assert (lua(failed2).status, health.kstatus(failed2).status) == ("Degraded", "Failed")

    seen = assert_health(rec.objects, lua)
    print(f"{len(rec.objects)} distinct objects; Argo CD by phase: {seen}")
    assert ("Failed", "Progressing", "InProgress") in seen  # the stale generation-1 status
    assert [s for s in seen if s[1] == "Degraded"][0][0] == "Failed"
    gen2 = [o["status"]["phase"] for o in rec.objects
            if o.get("status") and o["status"]["observedGeneration"] == 2]
    assert gen2[-1] == "Failed" and all(p in health.ACTIVE_PHASES for p in gen2[:-1]), gen2
    record_and_recheck(rec.objects, "sick", lua, tmp_path, monkeypatch)
