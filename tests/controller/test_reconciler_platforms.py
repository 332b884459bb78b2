"""reconciler, spec.platforms: the parent creates one ImageBuild per platform, keeps them on its spec, waits
for them, and writes the index once all succeeded; a platform without nodes is emulated unless the operator
refuses that; a namesake ImageBuild that is not its child is a conflict, never adopted."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from stagefleet.controller import reconciler as rec
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.reconciler import Reconciler
from stagefleet.controller.runs import spec_hash

from .test_reconciler_queue import FarmApi

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)


class PlatformApi(FarmApi):
    def __init__(self, arches: tuple[str, ...]) -> None:
        super().__init__()
        self.arches = arches
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def list_nodes(self) -> tuple[list[dict[str, Any]], str]:
        ready = {"conditions": [{"type": "Ready", "status": "True"}]}
        return [{"metadata": {"name": f"n{i}", "labels": {"kubernetes.io/arch": a}}, "status": ready}
                for i, a in enumerate(self.arches)], "1"

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        if manifest["kind"] != "ImageBuild":
            return super().create(manifest)
        obj = copy.deepcopy(dict(manifest))
        meta = obj["metadata"]
        meta.update({"uid": f"uid-{meta['name']}", "generation": 1, "resourceVersion": "1"})
        self.ibs[(meta["namespace"], meta["name"])] = obj
        return obj

    def patch_imagebuild(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.patches.append((name, dict(patch)))
        obj = self.ibs[(namespace, name)]
        for k, v in (patch.get("spec") or {}).items():
            if v is None:
                obj["spec"].pop(k, None)
            else:
                obj["spec"][k] = v
        obj["metadata"]["generation"] += 1

    def succeed(self, name: str, digest: str) -> None:
        obj = self.ibs[("t", name)]
        obj["status"] = {"phase": "Succeeded", "observedGeneration": obj["metadata"]["generation"],
                         "run": obj["metadata"]["generation"], "specHash": spec_hash(obj["spec"]),
                         "message": "built", "image": {"digest": digest}}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rec, "_now", lambda: NOW)


def make(arches: tuple[str, ...], **config: Any) -> tuple[PlatformApi, Reconciler]:
    api = PlatformApi(arches)
    api.add("t", "app", platforms=["linux/amd64", "linux/arm64"])
    r = Reconciler(cast(Kube, api), OperatorConfig(status_coalesce=0, **config), Metrics(), threads=1)
    return api, r


def test_the_parent_makes_a_build_per_platform_and_joins_their_images(
    clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, r = make(("amd64", "amd64"))
    assert r.reconcile("t", "app") == 10.0
    amd, arm = api.ibs[("t", "app-amd64")], api.ibs[("t", "app-arm64")]
    assert amd["spec"]["nodeSelector"] == {"kubernetes.io/arch": "amd64"}  # nodes of its own
    assert "nodeSelector" not in arm["spec"]  # none: emulated
    status = api.status("t", "app")
    assert status["phase"] == "Building" and [p["phase"] for p in status["platforms"]] == ["Pending"] * 2
    assert api.pods == {}  # the parent itself runs nothing

    # An arm64 node joining later does not move (patch into a new run) the child already emulating it.
    api.arches = ("amd64", "arm64")
    r.reconcile("t", "app")
    assert api.patches == [] and "nodeSelector" not in api.ibs[("t", "app-arm64")]["spec"]

    # A spec edit of the parent reaches its children; their earlier statuses no longer count.
    api.succeed("app-amd64", "sha256:" + "a" * 64)
    api.ibs[("t", "app")]["spec"]["buildArgs"] = {"V": "2"}
    api.ibs[("t", "app")]["metadata"]["generation"] = 2
    r.reconcile("t", "app")
    assert {n for n, _ in api.patches} == {"app-amd64", "app-arm64"}
    assert api.status("t", "app")["run"] == 2
    assert api.ibs[("t", "app-arm64")]["spec"]["buildArgs"] == {"V": "2"}
    assert [p["phase"] for p in api.status("t", "app")["platforms"]] == ["Pending", "Pending"]

    written: list[list[str]] = []

    def write_index(build: Any, spec: Any, children: list[Any]) -> str:
        written.append([c.platform for c in children])
        return "sha256:" + "c" * 64

    monkeypatch.setattr(r.fanout, "_write_index", write_index)
    api.succeed("app-amd64", "sha256:" + "a" * 64)
    r.reconcile("t", "app")
    assert written == [] and api.status("t", "app")["phase"] == "Building"
    api.succeed("app-arm64", "sha256:" + "b" * 64)
    assert r.reconcile("t", "app") is None
    status = api.status("t", "app")
    assert written == [["linux/amd64", "linux/arm64"]]
    assert status["phase"] == "Succeeded" and status["image"]["digest"] == "sha256:" + "c" * 64
    assert [e[1] for e in api.events][-1] == "BuildSucceeded"


def test_no_node_of_the_architecture_and_no_emulation_is_refused(clock: None) -> None:
    api, r = make(("amd64",), platform_emulation=False)
    assert r.reconcile("t", "app") is None
    status = api.status("t", "app")
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "PlatformUnavailable"
    assert status["message"] == (
        "spec.platforms[1]: linux/arm64: no Ready node of architecture arm64, and this operator does not "
        "build under emulation (--no-platform-emulation)")
    assert ("t", "app-arm64") not in api.ibs


def test_a_namesake_that_is_not_its_child_is_a_conflict(clock: None) -> None:
    api, r = make(("amd64", "arm64"))
    api.add("t", "app-arm64")  # someone's own build of that name
    r.reconcile("t", "app")
    status = api.status("t", "app")
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "PlatformBuildConflict"
    assert "ImageBuild app-arm64 exists and is not this build's" in status["message"]
    assert "platforms" not in api.ibs[("t", "app-arm64")]["spec"]  # untouched
