"""Rootless workers without a cluster: the storage driver choice, the storage env a rootless buildah honours,
and the securityContext advice for each way a user namespace cannot be made (tests/realtier has the pods)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from stagefleet import buildenv
from stagefleet.buildenv import FUSE_OVERLAYFS, StorageChoice, choose_storage
from stagefleet.worker import rootless


def choose(*, rootless_: bool = True, driver: str | None = None, mount_program: str | None = None,
           kernel: str | None = None, fuse: bool = False, probe: bool = True) -> StorageChoice:
    def kernel_overlay() -> str | None:
        assert probe, "probed although the choice was made without it"
        return kernel

    return choose_storage(rootless=rootless_, driver=driver, mount_program=mount_program,
                          kernel_overlay=kernel_overlay, fuse=lambda: fuse)


def test_storage_choice() -> None:
    assert choose(rootless_=False, probe=False) == StorageChoice("overlay", None, "overlay (as root)")
    assert choose(rootless_=False, mount_program="/m", probe=False).mode == "overlay through /m (as root)"
    assert choose(driver="vfs", probe=False) == StorageChoice("vfs", None, "vfs (requested)")
    assert choose() == StorageChoice("overlay", None, "overlay (kernel, rootless)")
    assert choose(driver="overlay") == StorageChoice("overlay", None, "overlay (kernel, rootless)")
    assert choose(mount_program="/m", probe=False).mount_program == "/m"
    assert choose(kernel="no upper", fuse=True) == StorageChoice(
        "overlay", FUSE_OVERLAYFS, f"overlay through {FUSE_OVERLAYFS} (kernel overlay: no upper)")
    assert choose(kernel="EPERM") == StorageChoice(
        "vfs", None, "vfs (kernel overlay: EPERM; no usable /dev/fuse)")


def test_the_kernel_overlay_probe_mounts_on_a_local_filesystem(tmp_path: Path) -> None:
    assert buildenv.probe_kernel_overlay(tmp_path / "probe") is None
    assert not (tmp_path / "probe").exists()


def test_rootless_storage_env_points_buildah_at_the_root(tmp_path: Path) -> None:
    """Rootless buildah ignores graphroot/runroot from CONTAINERS_STORAGE_CONF but reads the per-user
    $XDG_CONFIG_HOME/containers/storage.conf; its blob-info cache follows XDG_DATA_HOME."""
    root = tmp_path / "root"
    paths = buildenv.BuildPaths(root)
    root.mkdir()
    paths.storage_conf.write_text(buildenv.storage_conf(paths.graphroot, paths.runroot))
    env = buildenv.storage_env(root, rootless=True)
    assert env == {"XDG_CONFIG_HOME": str(root / "config"), "XDG_DATA_HOME": str(root / "data")}
    user_conf = root / "config" / "containers" / "storage.conf"
    assert tomllib.loads(user_conf.read_text())["storage"]["graphroot"] == str(root / "storage")
    assert buildenv.storage_env(root, rootless=True) == env  # again: the link is kept
    assert buildenv.storage_env(root, rootless=False) == {"CONTAINERS_STORAGE_CONF": str(paths.storage_conf)}


def test_prepare_drops_the_hosts_storage_variables(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = buildenv.prepare(root, base_env={"PATH": "/bin", "XDG_CONFIG_HOME": "/h/c", "XDG_DATA_HOME": "/h/d",
                                           "CONTAINERS_STORAGE_CONF": "/h/s.conf"}, log=lambda m: None)
    try:
        assert os.geteuid() == 0  # the host suite runs as root: CONTAINERS_STORAGE_CONF is honoured
        assert env["CONTAINERS_STORAGE_CONF"] == str(root / "storage.conf")
        assert "XDG_CONFIG_HOME" not in env and "XDG_DATA_HOME" not in env
    finally:
        buildenv.cleanup(root, env)


STATUS = """Name:\tworker
NoNewPrivs:\t{nnp}
Seccomp:\t{seccomp}
CapEff:\t0000000000000000
CapBnd:\t{bnd}
"""


def status(nnp: int = 0, seccomp: int = 0, bnd: str = "00000000000000c0") -> rootless.ProcessStatus:
    return rootless.parse_status(STATUS.format(nnp=nnp, seccomp=seccomp, bnd=bnd))


def test_parse_status_and_id_maps() -> None:
    assert status() == rootless.ProcessStatus(False, 0xC0, 0)
    assert status(nnp=1, seccomp=2) == rootless.ProcessStatus(True, 0xC0, 2)
    assert rootless.parse_status("") == rootless.ProcessStatus(False, 0xFFFFFFFFFFFFFFFF, 0)
    grep = ("/proc/self/uid_map:         0       1000          1\n"
            "/proc/self/uid_map:         1     100000      65536\n"
            "/proc/self/gid_map:         0       1000          1\n")
    assert rootless.mapped_ids(grep, rootless.UID_MAP) == 65537
    assert rootless.mapped_ids(grep, rootless.GID_MAP) == 1
    assert rootless.mapped_ids("0 0 4294967295\n") == 4294967295


@pytest.mark.parametrize(("output", "st", "field"), [
    ("Error during unshare(CLONE_NEWUSER): Operation not permitted", status(seccomp=2),
     "securityContext.seccompProfile.type: Unconfined"),
    ("newuidmap: write to uid_map failed: Operation not permitted", status(nnp=1),
     "securityContext.allowPrivilegeEscalation: true"),
    ("fork/exec /usr/bin/newuidmap: operation not permitted", status(bnd="0000000000000040"),
     "add SETUID to securityContext.capabilities.add"),
    ("fork/exec /usr/bin/newgidmap: operation not permitted", status(bnd="0000000000000080"),
     "add SETGID to securityContext.capabilities.add"),
    ("", status(bnd="0000000000000000"), "add SETUID, SETGID to securityContext.capabilities.add"),
    ('no subuid ranges found for user "build" in /etc/subuid', status(), "/etc/subuid"),
    ("something else", status(), "securityContext.allowPrivilegeEscalation: true, capabilities.add SETUID"),
])
def test_diagnosis_names_the_field_to_change(output: str, st: rootless.ProcessStatus, field: str) -> None:
    message = rootless.diagnose(output, st)
    assert message.startswith("rootless buildah could not create a user namespace") and field in message
