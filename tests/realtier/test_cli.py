"""`stagefleet dev-cluster up --real --detach` / `down`: what a person runs to get the real tier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from binaries import find_tool
from stagefleet.realcluster.cluster import mounts_under
from tiers import real_tier_unavailable

pytestmark = pytest.mark.xdist_group("realtier")


def test_up_real_detach_then_down(tmp_path: Path) -> None:
    why = real_tier_unavailable()
    if why:
        pytest.skip(f"real tier: {why}")
    kubectl = find_tool("kubectl")
    assert kubectl is not None
    workdir = tmp_path / "rt"
    cli = [sys.executable, "-m", "stagefleet.cli", "dev-cluster"]
    up = subprocess.run([*cli, "up", "--real", "--detach", "--nodes", "1", "--workdir", str(workdir)],
                        capture_output=True, text=True, timeout=180, check=False)
    try:
        assert up.returncode == 0, up.stderr
        assert "real Kubernetes (1.24) is up" in up.stdout
        state = json.loads((workdir / "state.json").read_text())
        nodes = subprocess.run([kubectl, "--kubeconfig", state["kubeconfig"], "get", "nodes", "-o", "json"],
                               capture_output=True, text=True, timeout=60, check=True)
        items = json.loads(nodes.stdout)["items"]
        assert [n["metadata"]["name"] for n in items] == state["nodes"]
        assert all(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
                   for n in items)
        crds = subprocess.run([kubectl, "--kubeconfig", state["kubeconfig"], "get", "crd", "-o", "name"],
                              capture_output=True, text=True, timeout=60, check=True).stdout
        assert "imagebuilds.stagefleet.io" in crds
        nodes_dir = (workdir / "cluster" / "nodes").resolve()
        assert nodes_dir.is_dir()
    finally:
        down = subprocess.run([*cli, "down", "--workdir", str(workdir)], capture_output=True, text=True,
                              timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    assert not (workdir / "state.json").exists()
    assert mounts_under(workdir) == [] and not nodes_dir.exists()
    left = [p for p in Path("/proc").iterdir()
            if p.name.isdigit() and (_cmdline_has(p, str(workdir)) or _cmdline_has(p, str(nodes_dir)))]
    assert left == []


def _cmdline_has(proc: Path, needle: str) -> bool:
    try:
        return needle.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False
