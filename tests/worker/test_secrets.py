"""A secret is readable during RUN and ends up nowhere: not in layers, config, registry, output."""

from __future__ import annotations

import base64
import gzip
import hashlib
import secrets
import zlib
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry

from .helpers import http_bytes, image_config, image_files, manifest, run_worker, write_context

pytestmark = pytest.mark.builder


def _variants(canary: str) -> list[bytes]:
    return [canary.encode(), base64.b64encode(canary.encode()), base64.b64encode((canary + "\n").encode())]


def _plain(blob: bytes) -> bytes:
    """A blob as stored, plus its decompressed form when it is gzip."""
    if blob[:2] == b"\x1f\x8b":
        try:
            return blob + gzip.decompress(blob)
        except (OSError, EOFError, zlib.error):
            return blob
    return blob


def test_secret_canary_never_leaks(registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    h = registry.host
    canary = "sf-canary-" + secrets.token_hex(16)
    secret_file = tmp_path / "secret-volume" / "token"
    secret_file.parent.mkdir()
    secret_file.write_text(canary + "\n")
    # the canary must never be in a RUN line: buildah keeps RUN text in the image history
    ctx = write_context(tmp_path / "ctx", f"""FROM {base_image} AS app
RUN --mount=type=secret,id=token sha256sum /run/secrets/token | cut -d' ' -f1 > /secret.sha256
RUN --mount=type=secret,id=token,target=/tmp/tok cat /tmp/tok; base64 /tmp/tok
RUN echo done > /done
""")
    repo = f"secrets/{secrets.token_hex(4)}"
    result_file = tmp_path / "result.json"
    r = run_worker(["--context", str(ctx), "--target", "app", "--secret", f"id=token,src={secret_file}",
                    "--cache-repo", f"{h}/{repo}-cache", "--push", f"{h}/{repo}:1",
                    "--result-file", str(result_file)], registry_host=h, tmp=tmp_path / "pod")
    assert r.code == 0, r.stderr + r.stdout

    # readable during RUN: the image holds the hash of what RUN read, and the echo was scrubbed
    files = image_files(h, repo, r.result["digest"])
    assert files["/secret.sha256"].decode().strip() == hashlib.sha256((canary + "\n").encode()).hexdigest()
    assert "***" in r.stdout

    for needle in _variants(canary):
        text = needle.decode()
        assert text not in r.stdout and text not in r.stderr and text not in result_file.read_text()
        assert needle not in image_config(h, repo, r.result["digest"])
        for layer in manifest(h, repo, r.result["digest"])["layers"]:
            assert needle not in _plain(http_bytes(f"http://{h}/v2/{repo}/blobs/{layer['digest']}"))
        assert not files or all(needle not in body for body in files.values())
    # every blob the registry holds (stage results, cache images, everything) on disk
    blobs = [p for p in registry.data_dir.rglob("*") if p.is_file()]
    assert len(blobs) > 3
    for p in blobs:
        data = _plain(p.read_bytes())
        for needle in _variants(canary):
            assert needle not in data, p
