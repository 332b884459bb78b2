"""stagefleet.ocisource without a registry: references, what an unpack keeps, and that the operator's index
of an artifact (read without unpacking) is exactly what the worker's unpack puts on disk."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import pytest

from stagefleet import ocisource
from stagefleet.local.context import index_directory
from stagefleet.ocisource import ArtifactError, OciRef, parse_ref

DIGEST = "sha256:" + "ab" * 32


def test_references() -> None:
    assert parse_ref("127.0.0.1:5000/team/ctx:v1") == OciRef("127.0.0.1:5000", "team/ctx", "v1", None)
    assert parse_ref(f"reg.example/ctx@{DIGEST}") == OciRef("reg.example", "ctx", None, DIGEST)
    both = parse_ref(f"localhost/a/b:t@{DIGEST}")
    zeros = "sha256:" + "0" * 64
    assert both.reference == DIGEST and both.pinned(zeros) == f"localhost/a/b@{zeros}"
    assert str(both) == f"localhost/a/b:t@{DIGEST}"
    for bad, words in [("ctx:v1", "registry host"), ("team/ctx", "registry host"),
                       ("reg.example/Team", "repository"), ("reg.example/ctx:-x", "tag"),
                       ("reg.example/ctx@sha256:abc", "digest")]:
        with pytest.raises(ValueError, match=words):
            parse_ref(bad)


def _tar(members: list[tuple[str, bytes | None, str | None]], gz: bool = True) -> bytes:
    """(name, content, link target): a file with content, a link with a target, a directory without."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content, target in members:
            info = tarfile.TarInfo(name)
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
            elif content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return gzip.compress(raw.getvalue()) if gz else raw.getvalue()


def test_an_unpack_keeps_nothing_that_leaves_the_directory(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    layer = tmp_path / "layer"
    layer.write_bytes(_tar([
        ("./app/", None, None), ("./app/Dockerfile", b"FROM x\n", None), ("../escape", b"x", None),
        ("/abs", b"x", None), ("out", None, str(tmp_path / "outside")), ("out/planted", b"x", None),
        ("alias", None, str(tmp_path / "outside" / "file")), ("alias", b"written through", None),
    ]))
    dest = tmp_path / "ctx"
    ocisource.unpack(layer, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "alias", "app", "app/Dockerfile", "out"]
    assert list((tmp_path / "outside").iterdir()) == []
    assert (dest / "alias").is_symlink() and (dest / "app" / "Dockerfile").read_bytes() == b"FROM x\n"


def test_the_operators_index_is_what_the_worker_unpacks(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "app" / "empty").mkdir(parents=True)
    (ctx / "app" / "Dockerfile").write_text("FROM base\nCOPY . /src\n")
    (ctx / "app" / "run.sh").write_text("#!/bin/sh\n")
    (ctx / "app" / "run.sh").chmod(0o755)
    (ctx / "app" / "link").symlink_to("run.sh")
    (ctx / "top.txt").write_text("not in the context dir\n")
    layer_bytes, config, manifest = ocisource.pack(ctx)
    assert ocisource.pack(ctx) == (layer_bytes, config, manifest)  # same content, same digest
    layer = tmp_path / "layer"
    layer.write_bytes(layer_bytes)
    read = ocisource.read(layer, "app", "Dockerfile")
    assert read.dockerfile == "FROM base\nCOPY . /src\n"
    unpacked = tmp_path / "unpacked"
    ocisource.unpack(layer, unpacked)
    on_disk = index_directory(unpacked / "app").entries
    assert dict(read.entries) == {k: on_disk[k] for k in on_disk}
    assert set(read.entries) == {"Dockerfile", "run.sh", "link", "empty"}
    assert read.entries["run.sh"].startswith("100755 sha256:")
    (ctx / "app" / "run.sh").write_text("#!/bin/sh\necho changed\n")
    layer.write_bytes(ocisource.pack(ctx)[0])
    changed = ocisource.read(layer, "app", "Dockerfile").entries
    assert changed["run.sh"] != read.entries["run.sh"] and changed["Dockerfile"] == read.entries["Dockerfile"]


def test_the_artifacts_ignore_file_leaves_the_same_out_as_for_a_directory(tmp_path: Path) -> None:
    """The operator reads the context's ignore file from the layer: its index less what buildah would not
    copy equals local mode's index of the worker's unpack with the same rules."""
    from stagefleet.local import context as localcontext
    from stagefleet.stagekey import ContextIndex

    ctx = tmp_path / "ctx"
    (ctx / "app" / "node_modules").mkdir(parents=True)
    (ctx / "app" / "Dockerfile").write_text("FROM base\nCOPY . /src\n")
    (ctx / "app" / ".dockerignore").write_text("node_modules\n*.log\n!keep.log\n")
    (ctx / "app" / "node_modules" / "x.js").write_text("x\n")
    (ctx / "app" / "a.log").write_text("a\n")
    (ctx / "app" / "keep.log").write_text("k\n")
    (ctx / "app" / "app.txt").write_text("app\n")
    layer = tmp_path / "layer"
    layer.write_bytes(ocisource.pack(ctx)[0])
    read = ocisource.read(layer, "app", "Dockerfile")
    assert read.ignore is not None
    ours = ContextIndex(read.entries).without(read.ignore).entries
    assert set(ours) == {"Dockerfile", ".dockerignore", "keep.log", "app.txt"}
    unpacked = tmp_path / "unpacked"
    ocisource.unpack(layer, unpacked)
    rules = localcontext.ignore_rules(unpacked / "app", unpacked / "app" / "Dockerfile")
    on_disk = localcontext.index_directory(unpacked / "app", rules).entries
    assert dict(ours) == {k: on_disk[k] for k in on_disk}
    # A link in the ignore file's place: nothing is left out.
    (ctx / "app" / ".dockerignore").unlink()
    (ctx / "app" / ".dockerignore").symlink_to("app.txt")
    layer.write_bytes(ocisource.pack(ctx)[0])
    assert ocisource.read(layer, "app", "Dockerfile").ignore is None


def test_the_dockerfile_must_be_in_the_artifact_itself(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.write_bytes(_tar([("Dockerfile", None, "/etc/passwd"), ("sub", None, "elsewhere"),
                            ("real/Dockerfile", b"FROM x\n", None)], gz=False))
    for context_dir, dockerfile, words in [("", "Dockerfile", "Dockerfile: Dockerfile is a symbolic link"),
                                           ("sub", "Dockerfile", "sub/Dockerfile: sub is a symbolic link"),
                                           ("real", "Other", "real/Other not found"),
                                           ("missing", "Dockerfile", "context directory missing is not")]:
        with pytest.raises(ArtifactError, match=words):
            ocisource.read(layer, context_dir, dockerfile)
    assert ocisource.read(layer, "real", "Dockerfile").dockerfile == "FROM x\n"
    layer.write_bytes(b"not a tar at all")
    with pytest.raises(ArtifactError, match="not a tar"):
        ocisource.read(layer, "", "Dockerfile")


class FakeRegistry:
    """A registry answering from dicts (manifests by reference, blobs by digest)."""

    def __init__(self) -> None:
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}

    def put(self, tag: str, layer: bytes, manifest: bytes, media_type: str = ocisource.MANIFEST) -> str:
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        self.manifests[tag] = self.manifests[digest] = (media_type, manifest)
        self.blobs["sha256:" + hashlib.sha256(layer).hexdigest()] = layer
        return digest

    def get(self, path: str, headers: Mapping[str, str], sink: IO[bytes] | None
            ) -> tuple[int, Mapping[str, str], bytes]:
        kind, _, ref = path.rpartition("/")
        if kind.endswith("/manifests"):
            found = self.manifests.get(ref)
            return (200, {"content-type": found[0]}, found[1]) if found else (404, {}, b"")
        blob = self.blobs.get(ref)
        if blob is None:
            return 404, {}, b""
        assert sink is not None
        sink.write(blob)
        return 200, {}, b""


def _manifest(layers: list[dict[str, object]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": ocisource.MANIFEST, "layers": layers,
                       "config": {"mediaType": ocisource.CONFIG, "digest": DIGEST, "size": 2}}).encode()


def test_fetch_pins_the_tag_and_checks_every_digest(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM x\n")
    layer, _, manifest = ocisource.pack(ctx)
    reg = FakeRegistry()
    digest = reg.put("v1", layer, manifest)
    out = tmp_path / "layer"
    assert ocisource.fetch(parse_ref("r.example/ctx:v1"), reg.get, out) == digest
    assert out.read_bytes() == layer
    assert ocisource.fetch(parse_ref(f"r.example/ctx@{digest}"), reg.get, out) == digest
    reg.manifests[DIGEST] = reg.manifests["v1"]  # a registry serving other bytes under a digest
    with pytest.raises(ArtifactError, match="served a manifest whose digest is"):
        ocisource.fetch(parse_ref(f"r.example/ctx@{DIGEST}"), reg.get, out)
    with pytest.raises(ArtifactError, match="not found in the registry"):
        ocisource.fetch(parse_ref("r.example/ctx:v2"), reg.get, out)
    layer_digest = json.loads(manifest)["layers"][0]["digest"]
    reg.blobs[layer_digest] = layer + b"tampered"
    with pytest.raises(ArtifactError, match="does not match its digest"):
        ocisource.fetch(parse_ref("r.example/ctx:v1"), reg.get, out)


@pytest.mark.parametrize(("layers", "media_type", "words"), [
    ([], ocisource.MANIFEST, "has 0 layers"),
    ([{"mediaType": ocisource.LAYER, "digest": DIGEST, "size": 1}] * 2, ocisource.MANIFEST, "has 2 layers"),
    ([{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": DIGEST, "size": 1}],
     ocisource.MANIFEST, "is not a tar"),
    ([{"mediaType": ocisource.LAYER, "digest": DIGEST, "size": ocisource.MAX_LAYER_BYTES + 1}],
     ocisource.MANIFEST, "larger than"),
    ([], "application/vnd.oci.image.index.v1+json", "is an image index"),
])
def test_fetch_refuses_what_is_no_context(
    tmp_path: Path, layers: list[dict[str, object]], media_type: str, words: str
) -> None:
    reg = FakeRegistry()
    reg.put("v1", b"", _manifest(layers), media_type)
    with pytest.raises(ArtifactError, match=words):
        ocisource.fetch(parse_ref("r.example/ctx:v1"), reg.get, tmp_path / "layer")
    assert not os.path.exists(tmp_path / "layer")
