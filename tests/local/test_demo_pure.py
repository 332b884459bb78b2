"""Pure parts of `stagefleet demo`: the speed-up from an ImageBuild status, progress lines, the manifest."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import yaml

from stagefleet.commands import demo

REPO = Path(__file__).resolve().parents[2]


def st(name: str, start: str, end: str | None, phase: str = "Succeeded", **kw: object) -> dict[str, object]:
    out: dict[str, object] = {"name": name, "phase": phase, "startTime": f"2026-11-27T22:00:{start}Z"}
    if end:
        out["completionTime"] = f"2026-11-27T22:00:{end}Z"
    out.update(kw)
    return out


def test_speedup_from_stage_windows() -> None:
    status = {"stages": [st("build1", "00", "04"), st("build2", "01", "05"), st("final", "05", "07")]}
    sp = demo.speedup(status)
    assert sp is not None
    assert sp.stage_seconds == pytest.approx(10.0)   # 4 + 4 + 2
    assert sp.wall_seconds == pytest.approx(7.0)     # 00 → 07
    assert sp.ratio == pytest.approx(10 / 7)


def test_speedup_prefers_recorded_durations() -> None:
    status = {"stages": [st("a", "00", "04", duration=3.0), st("b", "00", "04", duration="2.5s")]}
    sp = demo.speedup(status)
    assert sp is not None and sp.stage_seconds == pytest.approx(5.5) and sp.wall_seconds == pytest.approx(4)


def test_no_speedup_without_finished_stages() -> None:
    assert demo.speedup({}) is None
    assert demo.speedup({"stages": [st("a", "00", None, phase="Running")]}) is None


def test_progress_lines_only_for_changes() -> None:
    before = demo.stage_states({"stages": [st("build1", "00", None, "Running", pod="p1", node="n1"),
                                           {"name": "final", "phase": "Pending"}]})
    after = demo.stage_states({"stages": [st("build1", "00", "04", pod="p1", node="n1"),
                                          {"name": "final", "phase": "Pending"}]})
    assert demo.progress_lines({}, before, 0.0) == [
        "    0.0s  build1  Running    pod p1 on n1", "    0.0s  final   Pending"]
    assert demo.progress_lines(before, after, 4.25) == ["    4.2s  build1  Succeeded  pod p1 on n1"]
    assert demo.progress_lines(after, after, 5.0) == []


def test_seed_manifest_points_at_the_demo_registry() -> None:
    doc = yaml.safe_load((REPO / "examples" / "seed" / "imagebuild.yaml").read_text())
    out = demo.seed_manifest(doc, base_image="127.0.0.1:1/base/busybox:1", output="127.0.0.1:1/s:demo",
                             sleep="2")
    assert out["spec"]["buildArgs"]["BASE"] == "127.0.0.1:1/base/busybox:1"
    assert out["spec"]["buildArgs"]["SLEEP"] == "2"
    assert out["spec"]["output"]["image"] == "127.0.0.1:1/s:demo"
    assert out["spec"]["source"] == doc["spec"]["source"] and out["metadata"] == doc["metadata"]
    assert doc["spec"]["output"]["image"] != "127.0.0.1:1/s:demo"  # the input is not modified


def test_registry_serves_checks_the_manifest_by_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str | None]] = []

    class Resp:
        status = 200

        def __enter__(self) -> Resp:
            return self

        def __exit__(self, *a: object) -> None:
            return None

    def fake_urlopen(req: urllib.request.Request, timeout: float) -> Resp:
        seen.append((req.full_url, req.get_header("Accept")))
        return Resp()

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert demo.registry_serves("127.0.0.1:5000/stagefleet/seed:demo", "sha256:ab")
    assert seen[0][0] == "http://127.0.0.1:5000/v2/stagefleet/seed/manifests/sha256:ab"
    assert seen[0][1] is not None and "application/vnd.oci.image.manifest.v1+json" in seen[0][1]


def test_overlaps_lists_stages_that_ran_side_by_side() -> None:
    status = {"stages": [st("build1", "00", "04"), st("build2", "01", "05"), st("final", "05", "07"),
                         st("running", "06", None, phase="Running")]}
    assert demo.overlaps(status) == [("build1", "build2", 3.0)]
