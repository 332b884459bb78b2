"""A registry's distribution API, as the operator and local mode use it: a tag's digest (HEAD), a manifest's
bytes (GET) and storing them under another tag (PUT), cross-repository blob mounts, listing and deleting tags.

The HTTP and the credentials are the worker's (`stagefleet.worker.registry`): plain HTTP first for
``--insecure-registry`` hosts, basic auth from a dockerconfigjson when the registry asks. No bearer tokens:
a registry that wants one answers `RegistryError`, and the callers build as if nothing were stored.

The distribution API deletes manifests, not tags: ``DELETE /v2/NAME/manifests/DIGEST`` removes the manifest
from the repository with every tag naming it. A registry with deletion disabled answers 405
(`Unsupported`). A tag whose digest other tags share is moved off it first (`Registry.untag`): a small
manifest of its own is put under the tag, then deleted by its digest, which removes that tag alone.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import quote

from stagefleet.worker.registry import MANIFEST_TYPES, MAX_MANIFEST_BYTES, basic_credentials, request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
#: What a HEAD accepts, so the registry answers with the manifest as stored (and its own digest), never a
#: conversion: single images and indexes, OCI and Docker.
ACCEPT = ", ".join((
    OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
))
UNTAG_ANNOTATION = "stagefleet.io/removed-tag"


class RegistryError(Exception):
    """The registry refused or failed a request; ``transient``: worth another try later (unreachable, 5xx,
    429), else final (no rights, bearer tokens, deletion disabled)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Unsupported(RegistryError):
    """405: the registry does not allow deletes (distribution: storage.delete.enabled is false)."""


def split_repository(repository: str) -> tuple[str, str] | None:
    """``host[:port]/path`` → (host, path); None when it names no registry host (Docker Hub short names)."""
    host, sep, path = repository.partition("/")
    if not sep or not path or not ("." in host or ":" in host or host == "localhost") or host == "docker.io":
        return None
    return host, path


@dataclass
class Registry:
    host: str
    insecure: bool = False
    auth_config: str | None = None  # a dockerconfigjson (the push Secret's .dockerconfigjson)
    timeout: float = 5.0
    user_agent: str = "stagefleet-operator"
    _scheme: str | None = field(default=None, init=False)

    def _call(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes | None = None,
        *, limit: int = MAX_MANIFEST_BYTES, sink: IO[bytes] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"User-Agent": self.user_agent, **(headers or {})}
        schemes = (self._scheme,) if self._scheme else (("http", "https") if self.insecure else ("https",))
        error = "no answer"
        for scheme in schemes:
            assert scheme is not None
            try:
                answer = request(scheme, self.host, method, path, headers, body,
                                 verify=not self.insecure, timeout=self.timeout, limit=limit, sink=sink)
                if answer[0] == 401 and answer[1].get("www-authenticate", "").lower().startswith("basic"):
                    creds = basic_credentials(self.auth_config, self.host) if self.auth_config else None
                    if creds is not None:
                        auth = "Basic " + base64.b64encode(creds.encode()).decode()
                        answer = request(scheme, self.host, method, path, {**headers, "Authorization": auth},
                                         body, verify=not self.insecure, timeout=self.timeout, limit=limit,
                                         sink=sink)
            except (OSError, http.client.HTTPException) as e:
                error = f"{type(e).__name__}: {e}"
                continue
            if answer[0] == 400 and scheme == "http" and len(schemes) > 1:  # an HTTPS server
                continue
            self._scheme = scheme
            status, answer_headers, _ = answer
            if status == 401:
                wanted = answer_headers.get("www-authenticate", "").split(" ", 1)[0] or "credentials"
                raise RegistryError(f"{method} {path}: 401 unauthorized ({wanted} wanted"
                                    + (", not supported)" if wanted.lower() == "bearer" else ")"))
            if status == 429 or status >= 500:
                raise RegistryError(f"{method} {path}: {status} {_error_text(answer[2])}", transient=True)
            return answer
        raise RegistryError(f"{self.host} unreachable: {error}", transient=True)

    def get(self, path: str, headers: Mapping[str, str], *, limit: int = MAX_MANIFEST_BYTES,
            sink: IO[bytes] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A GET answered as is (a 200's body into ``sink`` when given): for callers that judge the answer
        themselves (`stagefleet.ocisource`)."""
        return self._call("GET", path, headers, limit=limit, sink=sink)

    def tags(self, repository: str) -> list[str]:
        """Every tag of ``repository`` ([] when the repository does not exist)."""
        out: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list?n=1000"
        while path:
            status, headers, body = self._call("GET", path)
            if status == 404:
                return out
            if status != 200:
                raise RegistryError(f"listing tags of {repository}: {status} {_error_text(body)}")
            try:
                out += [str(t) for t in json.loads(body).get("tags") or ()]
            except (ValueError, AttributeError) as e:
                raise RegistryError(f"listing tags of {repository}: unreadable answer ({e})") from e
            link = re.search(r"<([^>]+)>;\s*rel=\"?next\"?", headers.get("link", ""))
            path = link.group(1) if link and link.group(1).startswith("/v2/") else None
        return out

    def digest(self, repository: str, tag: str) -> str | None:
        """The digest the tag names (HEAD, the registry's Docker-Content-Digest); None when it is gone."""
        status, headers, body = self._call("HEAD", f"/v2/{repository}/manifests/{quote(tag)}",
                                           {"Accept": ACCEPT})
        if status == 404:
            return None
        digest = headers.get("docker-content-digest")
        if status != 200 or not digest:
            raise RegistryError(f"HEAD {repository}:{tag}: {status}, no Docker-Content-Digest")
        return digest

    def delete(self, repository: str, digest: str) -> None:
        """Delete the manifest (and so every tag naming it) from ``repository``; gone already is fine."""
        status, _, body = self._call("DELETE", f"/v2/{repository}/manifests/{digest}")
        if status in (200, 202, 404):
            return
        if status == 405:
            raise Unsupported(f"the registry does not allow deletes (405 {_error_text(body)})")
        raise RegistryError(f"DELETE {repository}@{digest}: {status} {_error_text(body)}")

    def manifest(self, repository: str, reference: str) -> tuple[str, bytes]:
        """(media type, bytes) of a single-image manifest, as stored."""
        status, headers, body = self._call("GET", f"/v2/{repository}/manifests/{quote(reference)}",
                                           {"Accept": ACCEPT})
        if status != 200 or len(body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"GET {repository}@{reference}: {status} {_error_text(body)}")
        media_type = headers.get("content-type", "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES:
            raise RegistryError(f"GET {repository}@{reference}: not a single image ({media_type or '?'})")
        return media_type, body

    def mount_blob(self, repository: str, digest: str, source: str) -> None:
        """Make blob ``digest`` of repository ``source`` part of ``repository`` (a cross-repository mount:
        no data moves); already there is fine."""
        status, _, _ = self._call("HEAD", f"/v2/{repository}/blobs/{digest}")
        if status == 200:
            return
        path = f"/v2/{repository}/blobs/uploads/?mount={quote(digest)}&from={quote(source)}"
        status, headers, body = self._call("POST", path, {"Content-Length": "0"}, b"")
        if status == 201:
            return
        if status == 202:  # the registry would not mount: it opened an upload instead; close it unused
            location = headers.get("location", "")
            if location.startswith("/v2/"):
                self._call("DELETE", location)
        raise RegistryError(
            f"mounting {digest} from {source} into {repository}: {status} {_error_text(body)}"
        )

    def put_manifest(self, repository: str, tag: str, media_type: str, body: bytes) -> str:
        """PUT ``body`` under ``tag``; the digest the registry stored it as."""
        status, headers, answer = self._call("PUT", f"/v2/{repository}/manifests/{quote(tag)}",
                                             {"Content-Type": media_type}, body)
        if status != 201:
            raise RegistryError(f"PUT {repository}:{tag}: {status} {_error_text(answer)}")
        return headers.get("docker-content-digest") or "sha256:" + hashlib.sha256(body).hexdigest()

    def untag(self, repository: str, tag: str) -> None:
        """Remove one tag whose digest other tags share: put a manifest of its own under the tag (the
        same config, no layers, an annotation naming the tag: a digest nothing else has), then delete it."""
        status, _, body = self._call("GET", f"/v2/{repository}/manifests/{quote(tag)}", {"Accept": ACCEPT})
        if status == 404:
            return
        try:
            config = json.loads(body)["config"] if status == 200 and len(body) <= MAX_MANIFEST_BYTES else None
        except (ValueError, KeyError, TypeError):
            config = None
        if not isinstance(config, dict):
            raise RegistryError(f"untagging {repository}:{tag}: not a single image ({status})")
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {k: config[k] for k in ("mediaType", "digest", "size") if k in config},
            "layers": [],
            "annotations": {UNTAG_ANNOTATION: tag},
        }, sort_keys=True).encode()
        status, headers, answer = self._call("PUT", f"/v2/{repository}/manifests/{quote(tag)}",
                                             {"Content-Type": OCI_MANIFEST}, manifest)
        if status != 201:
            raise RegistryError(f"untagging {repository}:{tag}: PUT {status} {_error_text(answer)}")
        own = headers.get("docker-content-digest") or "sha256:" + hashlib.sha256(manifest).hexdigest()
        self.delete(repository, own)


def manifest_blobs(body: bytes) -> list[str]:
    """The config and layer digests a single-image manifest names. Pure."""
    try:
        doc = json.loads(body)
        blobs = [doc["config"]["digest"], *(layer["digest"] for layer in doc.get("layers") or ())]
    except (ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"unreadable manifest ({type(e).__name__})") from None
    return [str(b) for b in blobs]


def _error_text(body: bytes) -> str:
    """The first error of a distribution error body (`{"errors": [{"code", "message"}]}`), else the text."""
    try:
        first = (json.loads(body).get("errors") or [{}])[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, IndexError, TypeError):
        return body[:200].decode(errors="replace").strip()
