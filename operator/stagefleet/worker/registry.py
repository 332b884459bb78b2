"""Asking a registry what it serves under a tag, so the worker can skip re-pushing an image already there.

A rebuild whose every step came from the layer cache ends with exactly the image an earlier run pushed;
`buildah push` would still start a process, set up storage and check every blob to find that out. One
manifest GET per reference answers the same question. The answer counts only when the manifest's
config is our image's config (the image ID is the config digest), so a stale or different image under
the tag is never reported as ours; anything unexpected (token auth, TLS trouble, an index, an error)
answers None and the caller pushes as before.

The same request tells a pod started early whether its upstream's result tag exists yet (`tag_state`,
polled by `--upstream-wait`); `Session` also copies a result's manifest to its key tag (`worker.keytag`).

`http.client` is imported only when a check runs: the worker's start-up stays as short as it was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

from stagefleet.buildenv import insecure_from_env

#: Single-image manifest types buildah pushes (an index under the tag is never our image).
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit
_REPO = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str


def parse_reference(ref: str) -> Reference | None:
    """`host[:port]/repo[:tag]` → its parts; None for digest references and for references that do not
    name their registry (Docker Hub short names), which are left to buildah."""
    if "@" in ref:
        return None
    host, sep, rest = ref.partition("/")
    if not sep or not ("." in host or ":" in host or host == "localhost") or host == "docker.io":
        return None
    repo, _, tag = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "latest")
    if not _REPO.fullmatch(repo) or not _TAG.fullmatch(tag):
        return None
    return Reference(host, repo, tag)


def basic_credentials(auth_text: str, host: str) -> str | None:
    """The `user:password` a dockerconfigjson holds for `host` (keys may carry a scheme or a path)."""
    try:
        auths = json.loads(auth_text).get("auths", {})
    except (json.JSONDecodeError, AttributeError):
        return None
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if key.split("://", 1)[-1].split("/", 1)[0] != host or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return f"{entry['username']}:{entry['password']}"
        try:
            return base64.b64decode(str(entry.get("auth", "")), validate=True).decode() or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def manifest_digest_if_config(status: int, headers: Mapping[str, str], body: bytes,
                              config_digest: str) -> str | None:
    """Pure: the digest of a manifest answer when it is a single image whose config is `config_digest`."""
    if status != 200 or len(body) > MAX_MANIFEST_BYTES:
        return None
    if headers.get("content-type", "").split(";")[0].strip() not in MANIFEST_TYPES:
        return None
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if headers.get("docker-content-digest", digest) != digest:
        return None
    try:
        config = json.loads(body).get("config", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return digest if isinstance(config, dict) and config.get("digest") == config_digest else None


def served_digest(ref: str, config_digest: str, env: Mapping[str, str], timeout: float = 5.0) -> str | None:
    """Digest of the manifest the registry serves under `ref` if that manifest is our image, else None.

    Registries that want a bearer token answer None (buildah pushes).
    """
    answer = fetch_manifest(ref, env, timeout)
    return None if answer is None else manifest_digest_if_config(*answer, config_digest)


def tag_state(ref: str, env: Mapping[str, str], timeout: float = 2.0) -> tuple[bool | None, str | None]:
    """Whether the registry serves `ref`'s tag: (True, its manifest digest, or None if the answer does not
    prove one), (False, None) when it does not know the tag (404), (None, None) when it would not say
    (a token wanted, unreachable, anything else). What `--upstream-wait` polls with."""
    answer = fetch_manifest(ref, env, timeout)
    if answer is None or answer[0] not in (200, 404):
        return None, None
    status, headers, body = answer
    if status == 404:
        return False, None
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    fits = len(body) <= MAX_MANIFEST_BYTES and headers.get("docker-content-digest", digest) == digest
    return True, digest if fits else None


def fetch_manifest(ref: str, env: Mapping[str, str],
                   timeout: float) -> tuple[int, dict[str, str], bytes] | None:
    """GET `ref`'s manifest the way buildah reaches the registry (`Session`). None when the reference names
    no registry host or no scheme got an answer."""
    parsed = parse_reference(ref)
    if parsed is None:
        return None
    return Session(parsed.host, env, timeout)("GET", f"/v2/{parsed.repository}/manifests/{parsed.tag}",
                                              {"Accept": ", ".join(MANIFEST_TYPES)})


class Session:
    """Requests to one registry as buildah makes them: hosts in STAGEFLEET_INSECURE_REGISTRIES over plain
    HTTP (tried first) or unverified HTTPS, others over verified HTTPS; the scheme that answers first is
    kept. Basic-auth credentials from REGISTRY_AUTH_FILE once the registry asks for them (a bearer token
    is never fetched: the 401 is the answer)."""

    def __init__(self, host: str, env: Mapping[str, str], timeout: float = 5.0) -> None:
        self.host, self.env, self.timeout = host, env, timeout
        self.insecure = host in insecure_from_env(env)
        self.scheme: str | None = None
        self.authorization: str | None = None

    def __call__(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                 body: bytes | None = None, limit: int = MAX_MANIFEST_BYTES, sink: IO[bytes] | None = None
                 ) -> tuple[int, dict[str, str], bytes] | None:
        """(status, lower-cased headers, body of at most ``limit`` + 1 bytes; a 200's goes to ``sink`` when
        given), or None when no scheme got an answer."""
        import http.client  # here, not at the top: see the module docstring

        schemes = (self.scheme,) if self.scheme else ("http", "https") if self.insecure else ("https",)
        for scheme in schemes:
            try:
                answer = self._send(scheme, method, path, headers or {}, body, limit, sink)
            except (OSError, http.client.HTTPException):  # refused, TLS, timeout: try the next scheme
                continue
            if answer[0] == 400 and scheme == "http" and self.scheme is None:  # HTTPS spoken to in HTTP
                continue
            self.scheme = scheme
            return answer
        return None

    def upload(self, repository: str, data: bytes) -> str | None:
        """Put a blob (unless the registry has it): its digest, or None on failure."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        head = self("HEAD", f"/v2/{repository}/blobs/{digest}")
        if head is not None and head[0] == 200:
            return digest
        start = self("POST", f"/v2/{repository}/blobs/uploads/", {"Content-Length": "0"}, b"")
        if start is None or start[0] != 202 or not start[1].get("location"):
            return None
        location = start[1]["location"]
        if "://" in location:  # an absolute URL: keep its path (same registry)
            location = "/" + location.split("://", 1)[1].split("/", 1)[1]
        sep = "&" if "?" in location else "?"
        put = self("PUT", f"{location}{sep}digest={digest}",
                   {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}, data)
        return digest if put is not None and put[0] == 201 else None

    def _send(self, scheme: str, method: str, path: str, headers: Mapping[str, str],
              body: bytes | None, limit: int, sink: IO[bytes] | None = None
              ) -> tuple[int, dict[str, str], bytes]:
        """One request, once more with basic auth when the registry asks for it and we have some."""
        sent = {"User-Agent": "stagefleet-worker", **headers}
        if self.authorization:
            sent["Authorization"] = self.authorization
        answer = request(scheme, self.host, method, path, sent, body, verify=not self.insecure,
                         timeout=self.timeout, limit=limit, sink=sink)
        if (answer[0] == 401 and self.authorization is None
                and answer[1].get("www-authenticate", "").lower().startswith("basic")):
            creds = _credentials(self.env, self.host)
            if creds is not None:
                self.authorization = "Basic " + base64.b64encode(creds.encode()).decode()
                sent["Authorization"] = self.authorization
                answer = request(scheme, self.host, method, path, sent, body, verify=not self.insecure,
                                 timeout=self.timeout, limit=limit, sink=sink)
        return answer


def request(scheme: str, host: str, method: str, path: str, headers: Mapping[str, str],
            body: bytes | None = None, *, verify: bool,
            timeout: float, limit: int = MAX_MANIFEST_BYTES,
            sink: IO[bytes] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One registry request: (status, lower-cased headers, at most ``limit`` + 1 bytes of the body: a
    manifest's limit unless the caller reads a blob). With ``sink``, a 200's body is written there in
    chunks instead (the same limit) and the body returned is empty: a blob need not fit in memory.
    ``verify=False`` is buildah's `insecure = true` for HTTPS. Raises OSError / http.client.HTTPException
    when nothing answers. (Also the operator's, `stagefleet.controller.registry`.)"""
    import http.client

    conn: http.client.HTTPConnection
    if scheme == "https":
        import ssl

        ctx = ssl.create_default_context()
        if not verify:  # buildah's `insecure = true`
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers))
        resp = conn.getresponse()
        if sink is not None and resp.status == 200 and method == "GET":
            left = limit + 1
            while left > 0 and (chunk := resp.read(min(left, 1 << 20))):
                sink.write(chunk)
                left -= len(chunk)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, b""
        data = b"" if method == "HEAD" else resp.read(limit + 1)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def _credentials(env: Mapping[str, str], host: str) -> str | None:
    path = env.get("REGISTRY_AUTH_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return basic_credentials(f.read(), host)
    except OSError:
        return None
