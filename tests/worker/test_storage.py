"""The chart's default storage driver (vfs, no /dev/fuse needed) builds the same image."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry

from .helpers import image_files, run_worker, write_context

pytestmark = pytest.mark.builder


def test_vfs_storage_driver(registry: LocalRegistry, base_image: str, tmp_path: Path,
                            buildah_env: Callable[[Path], dict[str, str]]) -> None:
    h = registry.host
    root = tmp_path / "root"
    buildah_env(root)  # removed again at the end of the test
    ctx = write_context(tmp_path / "ctx", f"FROM {base_image} AS app\nRUN echo vfs > /driver\n")
    repo = f"vfs/{secrets.token_hex(4)}"
    r = run_worker(["--context", str(ctx), "--target", "app", "--storage-root", str(root),
                    "--push", f"{h}/{repo}:1"], registry_host=h, tmp=tmp_path / "pod",
                   env={"STAGEFLEET_STORAGE_DRIVER": "vfs"})
    assert r.code == 0, r.stderr + r.stdout
    assert 'driver = "vfs"' in (root / "storage.conf").read_text()
    assert (root / "storage" / "vfs").is_dir() and not (root / "storage" / "overlay").exists()
    assert image_files(h, repo, r.result["digest"])["/driver"] == b"vfs\n"
