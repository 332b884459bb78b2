"""The in-namespace container init (`nsinit.py`) run for real under `unshare -m --propagation private`.

Needs root (bind mounts); every mount lives in the child's private namespace and vanishes with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from stagefleet.devcluster import kubelet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


def exec_nsinit(spec_file: Path) -> subprocess.CompletedProcess[str]:
    """nsinit exactly as the kubelet starts it: in a private mount namespace, isolated Python."""
    argv = ["unshare", "-m", "--propagation", "private", "--", sys.executable, "-I", kubelet.NSINIT]
    return subprocess.run([*argv, str(spec_file)], capture_output=True, text=True, timeout=60, check=False)


def run_init(
    tmp_path: Path, mounts: list[dict[str, Any]], script: str, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    spec = {
        "mounts": mounts,
        "argv": ["sh", "-c", script],
        "env": {"PATH": "/usr/bin:/bin", "X": "y"},
        "cwd": cwd,
        "staging": str(tmp_path / "staging"),
        "start_error_file": str(tmp_path / "start-error"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return exec_nsinit(tmp_path / "spec.json")


def test_mounts_are_private_readonly_and_leave_the_host_untouched(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "password").write_text("hunter2")
    term = tmp_path / "term"
    term.write_text("")
    tag = uuid.uuid4().hex[:8]
    secret_dir = f"/etc/sf-test-{tag}/creds"  # /etc exists, the rest does not: mirrored, not created
    script = (
        f"cat {secret_dir}/password; echo; "
        f"touch {secret_dir}/new 2>/dev/null && echo WRITABLE || echo read-only; "
        "echo done > /dev/termination-log; echo $X; pwd"
    )
    res = run_init(
        tmp_path,
        [
            {"source": str(vol), "target": secret_dir, "read_only": True},
            {"source": str(term), "target": "/dev/termination-log", "read_only": False, "is_file": True},
        ],
        script,
        cwd=str(tmp_path / "wd"),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n") == ["hunter2", "read-only", "y", str(tmp_path / "wd"), ""]
    assert term.read_text() == "done\n"
    assert not os.path.exists(f"/etc/sf-test-{tag}")
    assert not os.path.exists("/dev/termination-log")
    assert not (vol / "new").exists()


def test_missing_top_level_directory_is_created_on_the_host(tmp_path: Path) -> None:
    target = f"/sf-test-{uuid.uuid4().hex[:8]}"
    vol = tmp_path / "vol"
    vol.mkdir()
    try:
        res = run_init(
            tmp_path,
            [{"source": str(vol), "target": target + "/work", "read_only": False}],
            f"echo hi > {target}/work/out",
        )
        assert res.returncode == 0, res.stderr
        assert (vol / "out").read_text() == "hi\n"
        assert os.listdir(target + "/work") == []  # on the host: an empty mount point only
    finally:
        os.rmdir(target + "/work")
        os.rmdir(target)


def test_nested_mount_creates_its_mount_point_inside_the_outer_volume(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    (inner / "f").write_text("inner")
    res = run_init(
        tmp_path,
        [
            {"source": str(outer), "target": str(tmp_path / "mnt")},
            {"source": str(inner), "target": str(tmp_path / "mnt" / "sub")},
        ],
        f"cat {tmp_path}/mnt/sub/f",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "inner"
    assert (outer / "sub").is_dir()


def test_exit_status_and_exec_failure(tmp_path: Path) -> None:
    assert run_init(tmp_path, [], "exit 7").returncode == 7
    spec = json.loads((tmp_path / "spec.json").read_text())
    spec["argv"] = ["no-such-command-xyz"]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = exec_nsinit(tmp_path / "spec.json")
    assert res.returncode == 128
    assert (
        tmp_path / "start-error"
    ).read_text() == 'exec: "no-such-command-xyz": executable file not found in $PATH'


def test_worker_pod_layout_under_existing_system_dirs(tmp_path: Path) -> None:
    """The operator's worker pod layout: several mounts below /run and /var/lib, none left on the host."""
    tag = uuid.uuid4().hex[:8]
    vols = {}
    for name in ("storage", "dockerfile", "secret0", "secret1"):
        vols[name] = tmp_path / name
        vols[name].mkdir()
        (vols[name] / "f").write_text(name)
    run_dir, lib_dir = f"/run/sf-{tag}", f"/var/lib/sf-{tag}"
    mounts = [
        {"source": str(vols["storage"]), "target": lib_dir},
        {"source": str(vols["dockerfile"]), "target": f"{run_dir}/dockerfile", "read_only": True},
        {"source": str(vols["secret0"]), "target": f"{run_dir}/secrets/0", "read_only": True},
        {"source": str(vols["secret1"]), "target": f"{run_dir}/secrets/1", "read_only": True},
    ]
    files = f"{lib_dir}/f {run_dir}/dockerfile/f {run_dir}/secrets/0/f {run_dir}/secrets/1/f"
    script = f"cat {files}; echo; ls /run | wc -l"
    res = run_init(tmp_path, mounts, script)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert "".join(lines[:-2]) == "storagedockerfilesecret0secret1"
    assert int(lines[-2]) == len(os.listdir("/run")) + 1  # the host's /run entries, plus ours
    assert not os.path.exists(run_dir) and not os.path.exists(lib_dir)


def test_mount_point_inside_a_read_only_volume_does_not_write_into_it(tmp_path: Path) -> None:
    ro, inner = tmp_path / "ro", tmp_path / "inner"
    ro.mkdir()
    inner.mkdir()
    (ro / "keep").write_text("k")
    (inner / "f").write_text("inner")
    target = tmp_path / "mnt"
    res = run_init(
        tmp_path,
        [
            {"source": str(ro), "target": str(target), "read_only": True},
            {"source": str(inner), "target": str(target / "sub")},
        ],
        f"cat {target}/keep {target}/sub/f",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "kinner"
    assert sorted(os.listdir(ro)) == ["keep"]
