"""The offline two-platform base image (localregistry.ensure_multiarch_base_image) and builds from it with
the real buildah (chroot isolation, a fresh storage root from stagefleet.buildenv): `--platform linux/arm64`
picks the arm64 image out of the index and its RUN steps run under qemu (binfmt_misc with the F flag:
the interpreter is not in the chroot), `--platform linux/amd64` the native one; each result's config names
its architecture. docs/multiarch.md."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.oci import image_files, manifest, manifest_digest
from stagefleet import binfmt
from stagefleet.localregistry import ELF_MACHINE, LocalRegistry

pytestmark = pytest.mark.builder

UNAME = {"amd64": "x86_64", "arm64": "aarch64"}


def _split(ref: str) -> tuple[str, str, str]:
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    return host, repo, tag


def _config(host: str, repo: str, ref: str) -> dict[str, Any]:
    import urllib.request

    digest = manifest(host, repo, ref)["config"]["digest"]
    with urllib.request.urlopen(f"http://{host}/v2/{repo}/blobs/{digest}", timeout=30) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", data[:16]
    return int.from_bytes(data[18:20], "little")


def test_binfmt_handler_has_the_fix_binary_flag() -> None:
    handler = binfmt.read_handler("arm64")
    if handler is None:
        pytest.skip(f"no arm64 emulation: {binfmt.status('arm64')}")
    assert handler.enabled and handler.fix_binary, handler


def test_index_holds_a_busybox_image_per_platform(multiarch_base_image: str) -> None:
    host, repo, tag = _split(multiarch_base_image)
    index = manifest(host, repo, tag)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json", index
    listed = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert listed == [("linux", "amd64"), ("linux", "arm64")]
    for m in index["manifests"]:
        arch = m["platform"]["architecture"]
        config = _config(host, repo, m["digest"])
        assert (config["os"], config["architecture"]) == ("linux", arch), config
        files = image_files(host, repo, m["digest"])
        assert _elf_machine(files["/bin/busybox"]) == ELF_MACHINE[arch]
        assert manifest_digest(host, repo, f"{tag}-{arch}") == m["digest"]  # each image has its own tag too


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_build_for_a_platform_runs_its_binaries(
    arch: str, registry: LocalRegistry, multiarch_base_image: str, tmp_path: Path,
    buildah_env: Callable[[Path], dict[str, str]],
) -> None:
    env = buildah_env(tmp_path / "root")
    assert env["BUILDAH_ISOLATION"] == "chroot"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {multiarch_base_image}\nRUN uname -m > /m && cat /m\n")
    repo = f"multiarch/{arch}-{secrets.token_hex(4)}"
    ref = f"{registry.host}/{repo}:1"
    started = time.monotonic()
    build = subprocess.run(["buildah", "build", "--platform", f"linux/{arch}", "-f", str(ctx / "Dockerfile"),
                            "-t", ref, str(ctx)], env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert build.returncode == 0, build.stderr + build.stdout
    assert UNAME[arch] in build.stdout.split(), build.stdout  # the RUN step's own output
    push = subprocess.run(["buildah", "push", ref, f"docker://{ref}"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert push.returncode == 0, push.stderr
    config = _config(registry.host, repo, "1")
    assert (config["os"], config["architecture"]) == ("linux", arch), config
    files = image_files(registry.host, repo, "1")
    assert files["/m"].decode().strip() == UNAME[arch]
    assert _elf_machine(files["/bin/busybox"]) == ELF_MACHINE[arch]
    print(f"buildah build --platform linux/{arch}: {took:.2f} s")
