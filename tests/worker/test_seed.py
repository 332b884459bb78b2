"""The seed example as three pods: build1 and build2 in separate fresh roots, final consuming both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry

from .helpers import image_files, run_worker, seed_args, skopeo_inspect

pytestmark = pytest.mark.builder
SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"


def test_seed_example_as_three_worker_pods(registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    h = registry.host
    common = ["--context", str(SEED), *seed_args(base_image)]
    runs = {}
    for group, stage in (("g1", "build1"), ("g2", "build2")):
        pod = tmp_path / f"pod-{stage}"
        runs[stage] = run_worker([*common, "--target", stage, "--stage", stage, "--group", group,
                                  "--push", f"{h}/seed/stages:{group}", "--result-file", str(pod / "result")],
                                 registry_host=h, tmp=pod)
    for stage, r in runs.items():
        assert r.code == 0, r.stderr + r.stdout
        assert r.result["ok"] and r.result["target"] == stage and r.result["digest"].startswith("sha256:")
        assert json.loads((tmp_path / f"pod-{stage}" / "result").read_text()) == r.result
        assert any(line.startswith(f"[{stage}] STEP ") for line in r.lines)
        assert [s["name"] for s in r.result["stages"]] == [stage]

    d1, d2 = runs["build1"].result["digest"], runs["build2"].result["digest"]
    final = run_worker([*common, "--target", "final", "--stage", "final", "--group", "g3",
                        "--upstream", f"build1={h}/seed/stages@{d1}",
                        "--upstream", f"build2={h}/seed/stages@{d2}",
                        "--push", f"{h}/seed/app:1", "--push", f"{h}/seed/app:latest"],
                       registry_host=h, tmp=tmp_path / "pod-final")
    assert final.code == 0, final.stderr + final.stdout
    # the upstream stages were pulled by digest, never rebuilt in this pod
    assert any(f"{h}/seed/stages@{d1}" in line for line in final.lines)
    assert not any(line.startswith(("[build1]", "[build2]")) for line in final.lines)
    assert all(line.startswith("[final] ") for line in final.lines[:-1])

    digest = final.result["digest"]
    for tag in ("1", "latest"):
        assert skopeo_inspect(f"{h}/seed/app:{tag}")["Digest"] == digest
    files = image_files(h, "seed/app", digest)
    assert files["/out/one.txt"] == b"built by build1\n"
    assert files["/out/two.txt"] == b"built by build2\n"
    # each pod's fresh storage root went away with it
    for pod in tmp_path.iterdir():
        assert not list(pod.glob("stagefleet-worker-*")), pod
    assert str(tmp_path) not in Path("/proc/mounts").read_text()


def test_unnamed_stages_as_target_and_upstream(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    """The plan calls unnamed stages `stage-<index>`; the worker builds and consumes them by that name."""
    h = registry.host
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo zero > /zero\n"
                                    f"FROM {base_image}\nCOPY --from=0 /zero /copied\n")
    first = run_worker(["--context", str(ctx), "--target", "stage-0", "--group", "g1",
                        "--push", f"{h}/unnamed/stages:g1"], registry_host=h, tmp=tmp_path / "pod1")
    assert first.code == 0, first.stderr + first.stdout
    assert first.result["stages"][0]["name"] == "stage-0"
    final = run_worker(["--context", str(ctx), "--target", "stage-1", "--group", "g2",
                        "--upstream", f"stage-0={h}/unnamed/stages@{first.result['digest']}",
                        "--push", f"{h}/unnamed/app:1"], registry_host=h, tmp=tmp_path / "pod2")
    assert final.code == 0, final.stderr + final.stdout
    assert not any("RUN echo zero" in line for line in final.lines)  # stage 0 came from the registry
    assert image_files(h, "unnamed/app", final.result["digest"])["/copied"] == b"zero\n"
