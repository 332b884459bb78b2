"""Read what the test registry serves: manifest digests, image files, and every blob (for canary scans)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def _get(url: str, method: str = "GET") -> tuple[bytes, dict[str, str]]:
    req = urllib.request.Request(url, method=method, headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read(), dict(resp.headers)


def manifest_digest(host: str, repo: str, ref: str) -> str:
    """The digest the registry serves for repo:ref (Docker-Content-Digest)."""
    _, headers = _get(f"http://{host}/v2/{repo}/manifests/{ref}", "HEAD")
    return headers["Docker-Content-Digest"]


def manifest(host: str, repo: str, ref: str) -> dict[str, Any]:
    body, _ = _get(f"http://{host}/v2/{repo}/manifests/{ref}")
    data: dict[str, Any] = json.loads(body)
    return data


def image_files(host: str, repo: str, ref: str) -> dict[str, bytes]:
    """Regular files of an image, layers applied in order."""
    files: dict[str, bytes] = {}
    for layer in manifest(host, repo, ref)["layers"]:
        blob, _ = _get(f"http://{host}/v2/{repo}/blobs/{layer['digest']}")
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    f = tar.extractfile(member)
                    files["/" + member.name.lstrip("./")] = f.read() if f else b""
    return files


def blobs_containing(data_dir: Path, needle: bytes) -> list[str]:
    """Every stored registry blob (decompressed when gzip) that contains ``needle``."""
    hits = []
    for path in data_dir.rglob("data"):
        raw = path.read_bytes()
        for candidate in (raw, _gunzip(raw)):
            if candidate and needle in candidate:
                hits.append(str(path))
                break
    return hits


def _gunzip(raw: bytes) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return b""
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError):
        return b""
