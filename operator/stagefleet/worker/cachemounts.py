"""`RUN --mount=type=cache` that outlives the pod: each cache id restored from, and saved to, the registry.

BuildKit keeps a cache mount in its daemon, so the second build on that machine finds the apt lists, pip
wheels and Go modules the first one downloaded. A worker pod has no such daemon: buildah keeps the mount
under `$TMPDIR/buildah-cache/<id>` (the id, or the target path without its leading slash), and the pod's
storage goes with the pod. So, with `--mount-cache-repo REPO` (the operator passes the namespace's cache
repository), the worker restores every cache id the Dockerfile mounts from `REPO:mount-<hash of the id>`
before it builds, and after a successful build pushes each id whose content changed back there, as a
one-layer image (a gzip tarball; the layer digest says whether anything changed). Builds of one namespace
share their cache ids this way, as builds on one BuildKit daemon do; another namespace's builds use another
repository (the cache repository is per namespace unless `spec.cache.repository` shares one on purpose).

As in BuildKit, a cache mount is an accelerator, never an input: the stage key and the layer cache ignore
it, a failed restore or save only logs, the last build to save an id wins, and an id larger than
`MAX_BYTES` (compressed) is not saved.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from stagefleet.ocisource import safe_members
from stagefleet.worker.registry import Session, parse_reference

__all__ = ["MAX_BYTES", "cache_dir", "mount_ids", "restore", "save", "tag_of"]

MAX_BYTES = 512 * 1024 * 1024
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ANNOTATION_ID = "io.stagefleet.cache-mount.id"
_MOUNT_OPTION = re.compile(r"(?:^|,)(\w+)=([^,]*)")


def mount_ids(text: str) -> list[str]:
    """Pure: the cache ids every `RUN --mount=type=cache` of the Dockerfile uses (its `id`, else its
    `target` without the leading slash, as buildah names the directory); ids with a variable are left out
    (their value is the build's, not the text's)."""
    import dockerfile

    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError:
        return []
    found: dict[str, None] = {}
    for c in commands:
        if c.cmd.upper() != "RUN":
            continue
        for flag in c.flags:
            if not flag.startswith("--mount="):
                continue
            opts = dict(_MOUNT_OPTION.findall(flag[len("--mount="):]))
            if opts.get("type") != "cache":
                continue
            raw = opts.get("id") or opts.get("target") or opts.get("dst") or opts.get("destination") or ""
            name = str(PurePosixPath("/" + raw)).lstrip("/")
            if name and "$" not in name and ".." not in PurePosixPath(name).parts:
                found[name] = None
    return list(found)


def tag_of(mount_id: str) -> str:
    return "mount-" + hashlib.sha256(mount_id.encode()).hexdigest()[:32]


def cache_dir(tmpdir: Path, mount_id: str) -> Path:
    """Where buildah keeps the id's content (buildah 1.28: `$TMPDIR/buildah-cache/<id>`)."""
    return tmpdir / "buildah-cache" / mount_id


def _tarball(directory: Path) -> tuple[bytes, bytes] | None:
    """(gzip bytes, tar bytes) of the directory's content, the same bytes for the same content (sorted,
    gzip without a timestamp); None when larger than MAX_BYTES."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in [*sorted(dirs), *sorted(files)]:
                path = Path(root) / name
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
            if raw.tell() > MAX_BYTES:
                return None
    data = raw.getvalue()
    packed = gzip.compress(data, compresslevel=1, mtime=0)
    return (packed, data) if len(packed) <= MAX_BYTES else None


def _blob_path(repository: str, digest: str) -> str:
    return f"/v2/{repository}/blobs/{digest}"


def restore(repo: str, ids: Sequence[str], tmpdir: Path, env: Mapping[str, str],
            log: Callable[[str], None]) -> dict[str, str]:
    """Fill each id's directory from `repo`; id → the layer digest restored (what `save` compares with)."""
    where = parse_reference(f"{repo}:x")
    if where is None or not ids:
        return {}
    session = Session(where.host, env, timeout=60.0)
    restored: dict[str, str] = {}
    for mount_id in ids:
        got = session("GET", f"/v2/{where.repository}/manifests/{tag_of(mount_id)}", {"Accept": MANIFEST})
        if got is None or got[0] != 200:
            continue  # never saved yet (404), or the registry is away: the build fills it
        try:
            layer = json.loads(got[2])["layers"][0]["digest"]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        blob = session("GET", _blob_path(where.repository, str(layer)), limit=MAX_BYTES)
        if blob is None or blob[0] != 200 or "sha256:" + hashlib.sha256(blob[2]).hexdigest() != layer:
            log(f"cache mount {mount_id}: its stored content could not be read; starting empty")
            continue
        target = cache_dir(tmpdir, mount_id)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(blob[2]), mode="r:gz") as tar:
            tar.extractall(target, members=list(safe_members(tar.getmembers())))
        restored[mount_id] = str(layer)
        log(f"cache mount {mount_id}: restored {len(blob[2])} bytes from {repo}:{tag_of(mount_id)}")
    return restored


def save(repo: str, ids: Sequence[str], tmpdir: Path, restored: Mapping[str, str], env: Mapping[str, str],
         log: Callable[[str], None]) -> list[str]:
    """Push each id whose directory changed since `restore` to `repo`; the ids saved."""
    where = parse_reference(f"{repo}:x")
    if where is None:
        return []
    session = Session(where.host, env, timeout=120.0)
    saved: list[str] = []
    for mount_id in ids:
        directory = cache_dir(tmpdir, mount_id)
        if not directory.is_dir():
            continue  # this group's stages do not mount it
        packed = _tarball(directory)
        if packed is None:
            log(f"cache mount {mount_id}: larger than {MAX_BYTES >> 20} MiB compressed; not saved")
            continue
        layer, tar = packed
        digest = "sha256:" + hashlib.sha256(layer).hexdigest()
        if restored.get(mount_id) == digest:
            continue  # unchanged
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}}).encode()
        if session.upload(where.repository, layer) is None or session.upload(
                where.repository, config) is None:
            log(f"cache mount {mount_id}: could not upload its content to {repo}; not saved")
            continue
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                       "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": digest, "size": len(layer)}],
            "annotations": {ANNOTATION_ID: mount_id},
        }).encode()
        put = session("PUT", f"/v2/{where.repository}/manifests/{tag_of(mount_id)}",
                      {"Content-Type": MANIFEST}, manifest)
        if put is None or put[0] != 201:
            answer = put[0] if put else "no answer"
            log(f"cache mount {mount_id}: the registry refused its manifest ({answer})")
            continue
        saved.append(mount_id)
        log(f"cache mount {mount_id}: saved {len(layer)} bytes to {repo}:{tag_of(mount_id)}")
    return saved
