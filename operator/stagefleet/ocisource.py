"""A build context pushed to a registry (`spec.source.oci`): CI hands over a context without a git server.

The artifact is a single-image manifest with exactly one layer, a tar of the context (gzip or not): what
`stagefleet context push DIR REF` writes, and the shape of Shipwright's source bundles and of `flux push
artifact`. A digest reference pins it; a tag is pinned to the digest it names when a run starts (as a git
branch is to a commit), so every worker pod of the run unpacks the same bytes.

The operator reads the Dockerfile and indexes the content from the tar without unpacking it (`read`); each
worker unpacks it (`unpack`). Both keep the same members (`safe_members`): plain files, directories and
symbolic links that stay inside the target; no absolute or `..` path, nothing at or below a path that was a
link (a later member written through it could land anywhere), no device or hard link. So the stage keys
describe exactly the files the builder sees. Sizes are capped: the layer as stored (`MAX_LAYER_BYTES`) and
unpacked (`MAX_UNPACKED_BYTES`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from stagefleet import ignorefile
from stagefleet.ignorefile import Ignore

__all__ = [
    "ArtifactError", "Contents", "OciRef", "fetch", "pack", "parse_ref", "read", "safe_members", "unpack",
]

MAX_LAYER_BYTES = 512 * 1024 * 1024
MAX_UNPACKED_BYTES = 4 * 1024 * 1024 * 1024
MAX_DOCKERFILE_BYTES = 1024 * 1024
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
#: Layer types that hold a tar of the context (compression is told by the bytes, not the type).
LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    LAYER,
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.cncf.flux.content.v1.tar+gzip",  # flux push artifact
})
SINGLE = (MANIFEST, "application/vnd.docker.distribution.manifest.v2+json")
INDEXES = ("application/vnd.oci.image.index.v1+json",
           "application/vnd.docker.distribution.manifest.list.v2+json")
ACCEPT = ", ".join((*SINGLE, *INDEXES))
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::[0-9]{1,5})?")
_REPO = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """The artifact cannot serve as a build context (missing, not one tar layer, too large, no Dockerfile)."""


@dataclass(frozen=True)
class OciRef:
    host: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What the manifest is asked for by: the digest when there is one."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        return f"{self.host}/{self.repository}@{digest}"

    def __str__(self) -> str:
        return (f"{self.host}/{self.repository}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def parse_ref(text: str) -> OciRef:
    """``host[:port]/repository[:tag][@sha256:HEX]``; raises ValueError saying what is wrong. The registry
    host must be named (no Docker Hub short names: the operator and the workers must reach the same one)."""
    rest, _, digest = text.partition("@")
    host, sep, path = rest.partition("/")
    if not sep or not _HOST.fullmatch(host) or not ("." in host or ":" in host or host == "localhost"):
        raise ValueError(f"{text!r} must start with a registry host (registry.example.com/team/context)")
    repo, tag = path, ""
    if ":" in path.rsplit("/", 1)[-1]:
        repo, _, tag = path.rpartition(":")
    if not _REPO.fullmatch(repo):
        raise ValueError(f"{text!r}: {repo!r} is not a repository name (lower case, digits, . _ - and /)")
    if tag and not _TAG.fullmatch(tag):
        raise ValueError(f"{text!r}: {tag!r} is not a tag")
    if digest and not _DIGEST.fullmatch(digest):
        raise ValueError(f"{text!r}: {digest!r} is not a digest (sha256: and 64 lower-case hex digits)")
    return OciRef(host, repo, tag or None, digest or None)


# -- members both sides keep ------------------------------------------------------------------------------


def safe_members(members: Iterable[tarfile.TarInfo]) -> Iterator[tarfile.TarInfo]:
    """The members an unpack keeps, in order (see the module docstring); names normalised (``./a`` → ``a``).
    tarfile's extraction filters are not in every Python 3.11 the builder image may have."""
    links: set[tuple[str, ...]] = set()
    for m in members:
        parts = PurePosixPath(m.name).parts
        if (not parts or m.name.startswith("/") or ".." in parts
                or not (m.isfile() or m.isdir() or m.issym())):
            continue
        if any(parts[:i] in links for i in range(1, len(parts) + 1)):
            continue  # at or below a link: the write would follow it
        if m.issym():
            links.add(parts)
        m.name = "/".join(parts)
        yield m


def _capped(members: Iterable[tarfile.TarInfo]) -> Iterator[tarfile.TarInfo]:
    total = 0
    for m in members:
        total += m.size if m.isfile() else 0
        if total > MAX_UNPACKED_BYTES:
            raise ArtifactError(f"unpacks to more than {MAX_UNPACKED_BYTES >> 30} GiB")
        yield m


def _open(layer: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(layer, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArtifactError(f"its layer is not a tar or tar+gzip ({e})") from None


def unpack(layer: Path, dest: Path) -> None:
    """Unpack the layer's kept members into ``dest`` (the worker's context)."""
    dest.mkdir(parents=True, exist_ok=True)
    with _open(layer) as tar:
        try:
            for m in _capped(safe_members(tar)):
                tar.extract(m, dest, set_attrs=not m.issym())
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArtifactError(f"unpacking its layer failed ({e})") from None


# -- the operator's read: Dockerfile and index, without unpacking -------------------------------------------


@dataclass(frozen=True)
class Contents:
    """What the planner needs of an artifact: the Dockerfile text and the context's `stagekey.ContextIndex`
    entries (path relative to the context directory → ``<mode> sha256:<hex>``, as `local.context` keys a
    directory: a file's full mode and content hash, a link's target text hash, ``<mode> dir``)."""

    dockerfile: str
    entries: Mapping[str, str]
    ignore: Ignore | None = None  # what the context's ignore file leaves out, as buildah reads it


def _content_id(tar: tarfile.TarFile, m: tarfile.TarInfo) -> str:
    if m.issym():
        return f"120000 sha256:{hashlib.sha256(os.fsencode(m.linkname)).hexdigest()}"
    if m.isdir():
        return f"{stat.S_IFDIR | (m.mode & 0o7777):06o} dir"
    h = hashlib.sha256()
    f = tar.extractfile(m)
    assert f is not None
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return f"{stat.S_IFREG | (m.mode & 0o7777):06o} sha256:{h.hexdigest()}"


def read(layer: Path, context_dir: str, dockerfile: str) -> Contents:
    """The Dockerfile at ``context_dir/dockerfile`` and the index of ``context_dir``. Raises ArtifactError
    naming the path when the Dockerfile is missing, a link, or too large (the workers would not find what
    the operator planned)."""
    prefix = context_dir.strip("/") + "/" if context_dir.strip("/") else ""
    wanted = str(PurePosixPath(prefix + dockerfile))
    entries: dict[str, str] = {}
    links: list[str] = []
    text: str | None = None
    own = PurePosixPath(dockerfile).as_posix()
    candidates = {prefix + c: c for c in ignorefile.candidates(own)}
    ignore_files: dict[str, str | None] = {}  # (None: there, but not a plain file or too big)
    with _open(layer) as tar:
        try:
            for m in _capped(safe_members(tar)):
                if m.issym():
                    links.append(m.name)
                if m.name in candidates:
                    ignore_files[candidates[m.name]] = _small_text(tar, m) if m.isfile() else None
                if m.name == wanted and m.isfile():
                    text = _small_text(tar, m)
                    if text is None:
                        raise ArtifactError(f"{wanted} is larger than {MAX_DOCKERFILE_BYTES >> 20} MiB")
                if prefix and not m.name.startswith(prefix):
                    continue
                entries[m.name[len(prefix):]] = _content_id(tar, m)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArtifactError(f"reading its layer failed ({e})") from None
    through = [link for link in links if wanted == link or wanted.startswith(link + "/")]
    if through:
        raise ArtifactError(f"{wanted}: {through[0]} is a symbolic link in the artifact; put the file itself "
                            "in the context")
    if text is None:
        if prefix and not entries:
            raise ArtifactError(f"the context directory {prefix.rstrip('/')} is not in the artifact")
        raise ArtifactError(f"{wanted} not found in the artifact")
    entries.pop("", None)

    return Contents(text, entries, ignorefile.from_files(ignore_files, own))


def _small_text(tar: tarfile.TarFile, m: tarfile.TarInfo) -> str | None:
    """A Dockerfile's or an ignore file's text; None past MAX_DOCKERFILE_BYTES."""
    if m.size > MAX_DOCKERFILE_BYTES:
        return None
    f = tar.extractfile(m)
    assert f is not None
    return f.read().decode("utf-8", errors="replace")


# -- getting the artifact ----------------------------------------------------------------------------------

#: ``get(path, headers, sink)`` → (status, lower-cased headers, body): a GET on the artifact's registry;
#: with ``sink`` a 200's body (at most MAX_LAYER_BYTES + 1 bytes) goes there instead. Raises ArtifactError
#: when the registry cannot be asked (unreachable, credentials refused).
Get = Callable[[str, Mapping[str, str], "IO[bytes] | None"], tuple[int, Mapping[str, str], bytes]]


def fetch(ref: OciRef, get: Get, layer: Path) -> str:
    """Write the artifact's layer to ``layer`` (its digest checked); the manifest's digest, which pins it."""
    status, headers, body = get(f"/v2/{ref.repository}/manifests/{ref.reference}", {"Accept": ACCEPT}, None)
    if status == 404:
        raise ArtifactError("not found in the registry")
    if status != 200:
        raise ArtifactError(f"the registry answered {status} for its manifest")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if ref.digest and digest != ref.digest:
        raise ArtifactError(f"the registry served a manifest whose digest is {digest}")
    media_type = (headers.get("content-type") or "").split(";")[0].strip()
    try:
        manifest = json.loads(body)
        media_type = media_type or str(manifest.get("mediaType") or "")
        layers = manifest["layers"] if media_type not in INDEXES else None
    except (ValueError, KeyError, TypeError, AttributeError):
        what = media_type or "unknown type"
        raise ArtifactError(f"its manifest is not an image manifest ({what})") from None
    if layers is None:
        raise ArtifactError("is an image index (several platforms); push the context as a single image "
                            "(stagefleet context push)")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        count = len(layers) if isinstance(layers, list) else "no"
        raise ArtifactError(f"has {count} layers; a context artifact has exactly one, a tar of the context")
    blob, kind, size = layers[0].get("digest"), layers[0].get("mediaType"), layers[0].get("size")
    if kind not in LAYER_TYPES:
        raise ArtifactError(f"its layer's media type {kind!r} is not a tar of the context "
                            f"({', '.join(sorted(LAYER_TYPES))})")
    if not isinstance(blob, str) or not _DIGEST.fullmatch(blob):
        raise ArtifactError(f"its layer's digest {blob!r} is not a sha256 digest")
    if not isinstance(size, int) or size > MAX_LAYER_BYTES:
        raise ArtifactError(f"its layer ({size} bytes) is larger than {MAX_LAYER_BYTES >> 20} MiB")
    with layer.open("wb") as sink:
        status, _, _ = get(f"/v2/{ref.repository}/blobs/{blob}", {}, sink)
    if status != 200:
        raise ArtifactError(f"the registry answered {status} for its layer {blob}")
    h = hashlib.sha256()
    with layer.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    if "sha256:" + h.hexdigest() != blob:
        raise ArtifactError(f"its layer's content does not match its digest {blob}")
    return digest


# -- making one (`stagefleet context push`) ----------------------------------------------------------------


def pack(directory: Path) -> tuple[bytes, bytes, bytes]:
    """(layer, config, manifest) of an artifact holding ``directory``: the same bytes for the same content
    (entries sorted, owners and times zeroed, gzip without a timestamp), so pushing an unchanged context
    again names the same digest. Links are kept as links; other special files are left out."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in [*dirs, *sorted(files)]:
                path = Path(root) / name
                info = tar.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix())
                if not (info.isfile() or info.isdir() or info.issym()):
                    continue
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                if info.isfile():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    tar_bytes = raw.getvalue()
    layer = gzip.compress(tar_bytes, compresslevel=6, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]}},
        sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                    "size": len(layer)}],
        "annotations": {"io.stagefleet.context": "true"},
    }, sort_keys=True).encode()
    return layer, config, manifest
