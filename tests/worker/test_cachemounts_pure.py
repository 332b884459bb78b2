"""worker.cachemounts, the pure parts: which cache ids a Dockerfile mounts, what a restored tarball may
write, and the tag an id is kept under."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from stagefleet.ocisource import safe_members
from stagefleet.worker.cachemounts import cache_dir, mount_ids, tag_of


def test_the_ids_are_buildahs_directory_names() -> None:
    text = """FROM busybox AS a
RUN --mount=type=cache,id=pip,target=/root/.cache/pip \\
    --mount=type=cache,target=/var/cache/apt,sharing=locked \\
    --mount=type=secret,id=token true
FROM a
RUN --mount=type=cache,id=pip,target=/elsewhere --mount=type=bind,source=/x,target=/y true
RUN --mount=type=cache,id=$ID,target=/z true
RUN --mount=type=cache,id=../escape,target=/z true
"""
    assert mount_ids(text) == ["pip", "var/cache/apt"]
    assert mount_ids("FROM busybox\nRUN true\n") == []
    assert cache_dir(Path("/t"), "var/cache/apt") == Path("/t/buildah-cache/var/cache/apt")
    assert tag_of("pip") == tag_of("pip") != tag_of("apt") and tag_of("pip").startswith("mount-")


def test_a_restored_tarball_stays_inside_its_directory() -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind in [("ok/file", tarfile.REGTYPE), ("../out", tarfile.REGTYPE),
                           ("/abs", tarfile.REGTYPE), ("dev", tarfile.CHRTYPE), ("link", tarfile.SYMTYPE),
                           ("link/through", tarfile.REGTYPE), ("link", tarfile.REGTYPE)]:
            info = tarfile.TarInfo(name)
            info.type = kind
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    with tarfile.open(fileobj=io.BytesIO(raw.getvalue())) as tar:
        # (a file where the link was would be written through it)
        assert [m.name for m in safe_members(tar.getmembers())] == ["ok/file", "link"]
