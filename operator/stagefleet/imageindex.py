"""An OCI image index of per-platform images, as `docker buildx build --platform a,b --push` leaves one.

Shared by the operator (`controller.platforms`) and local mode (`stagefleet build --platform a,b`): each
platform's image is pushed under a tag of its own (`platform_tag`), then one index listing them is put under
every output tag (`write_index`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from stagefleet import registryclient

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# A platform as BuildKit and OCI image indexes spell it: OS/ARCH[/VARIANT] (linux/amd64, linux/arm/v7).
PLATFORM_RE = re.compile(r"^linux/[a-z0-9_]{1,16}(/v[0-9]{1,2})?$")


def fit(text: str, limit: int, suffix: str) -> str:
    """``text``-``suffix`` within ``limit`` characters, shortened with a hash of ``text`` if need be."""
    full = f"{text}-{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: limit - len(suffix) - 10]}-{digest}-{suffix}"


def platform_tag(tag: str, platform: str) -> str:
    """The tag a platform's image is pushed under before the index joins them, e.g. 1.0-linux-arm64."""
    return fit(tag, 128, platform.replace("/", "-"))


@dataclass(frozen=True)
class PlatformImage:
    """One platform's pushed image, as the index lists it."""

    platform: str
    media_type: str
    digest: str
    size: int


def index_document(images: Sequence[PlatformImage]) -> bytes:
    """The OCI image index of ``images`` (their order kept), as bytes whose sha256 is the index digest."""
    manifests = []
    for im in images:
        parts = im.platform.split("/")
        plat: dict[str, str] = {"architecture": parts[1], "os": parts[0]}
        if len(parts) > 2:
            plat["variant"] = parts[2]
        manifests.append({"mediaType": im.media_type, "digest": im.digest, "size": im.size, "platform": plat})
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return json.dumps(doc, indent=2, sort_keys=False).encode()


def write_index(client: registryclient.Registry, repository: str, tags: Sequence[str],
                images: Sequence[tuple[str, str]]) -> str:
    """Put the index of ``images`` ((platform, manifest digest), all in ``repository`` of ``client``'s
    registry) under every tag of ``tags``; the index's digest. Raises `registryclient.RegistryError`."""
    listed = []
    for platform, digest in images:
        media_type, body = client.manifest(repository, digest)
        listed.append(PlatformImage(platform, media_type, digest, len(body)))
    doc = index_document(listed)
    digest = "sha256:" + hashlib.sha256(doc).hexdigest()
    for tag in tags:
        stored = client.put_manifest(repository, tag, OCI_INDEX, doc)
        if stored != digest:
            raise registryclient.RegistryError(f"{repository}:{tag}: the registry stored {stored}, not "
                                               f"{digest}")
    return digest
