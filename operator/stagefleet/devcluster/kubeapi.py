"""A small asyncio client for the public Kubernetes REST API, used by the local kubelet.

Plain aiohttp rather than the `kubernetes` client: the kubelet needs long-running watches, JSON merge
patches on subresources and retries on injected faults, all in one event loop. It reads an ordinary
kubeconfig (server, bearer token, client certificate, CA), so the kubelet could join another API server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    """A non-2xx answer; `status` is the HTTP code, `body` the decoded Status object if any."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        msg = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"{what}: {status} {msg}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ClusterAccess:
    """Where the API server is and how to authenticate, taken from a kubeconfig."""

    server: str
    token: str | None = None
    ssl_context: ssl.SSLContext | bool | None = None

    @classmethod
    def from_kubeconfig(cls, path: Path | str, context: str | None = None) -> ClusterAccess:
        cfg = yaml.safe_load(Path(path).read_text())
        ctx_name = context or cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next((u.get("user") or {} for u in cfg.get("users") or [] if u["name"] == ctx.get("user")), {})
        server = cluster["server"].rstrip("/")
        sslctx: ssl.SSLContext | bool | None = None
        if server.startswith("https"):
            if cluster.get("insecure-skip-tls-verify"):
                sslctx = False
            else:
                sslctx = ssl.create_default_context(cafile=_materialise(cluster, "certificate-authority"))
                cert = _materialise(user, "client-certificate")
                key = _materialise(user, "client-key")
                if cert and key:
                    sslctx.load_cert_chain(cert, key)
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        return cls(server=server, token=token, ssl_context=sslctx)


def _materialise(section: Mapping[str, Any], key: str) -> str | None:
    if section.get(key):
        return str(section[key])
    if section.get(key + "-data"):
        fd, name = tempfile.mkstemp(prefix="stagefleet-kubeconfig-")
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(section[key + "-data"]))
        return name
    return None


class KubeAPI:
    """Retrying JSON calls and watches against one API server."""

    def __init__(self, access: ClusterAccess, *, user_agent: str = "stagefleet-devkubelet") -> None:
        self.access = access
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if access.token:
            headers["Authorization"] = f"Bearer {access.token}"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, read_bufsize=1 << 22)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        attempts: int = 8,
    ) -> Any:
        """One API call, retried on connection errors and 429/5xx (fault injection, overload)."""
        delay = 0.05
        for attempt in range(attempts):
            try:
                data = json.dumps(body) if body is not None else None
                async with self.session.request(
                    method,
                    self.access.server + path,
                    data=data,
                    params=params,
                    headers={"Content-Type": content_type} if data is not None else None,
                    ssl=self.access.ssl_context if self.access.ssl_context is not None else True,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as resp:
                    text = await resp.text()
                    try:
                        decoded: Any = json.loads(text) if text else None
                    except ValueError:
                        decoded = text
                    if resp.status < 300:
                        return decoded
                    if resp.status in RETRY_STATUSES and attempt < attempts - 1:
                        retry_after = resp.headers.get("Retry-After")
                        await asyncio.sleep(min(float(retry_after), 1.0) if retry_after else delay)
                        delay = min(delay * 2, 1.0)
                        continue
                    raise ApiError(resp.status, decoded, f"{method} {path}")
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, params=params or None)

    async def create(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Any) -> Any:
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def delete(self, path: str, body: Any = None) -> Any:
        return await self.request("DELETE", path, body=body)

    async def watch(self, path: str, resource_version: str, **params: str) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events until the server closes the stream (the caller re-lists/re-watches)."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
            **params,
        }
        async with self.session.get(
            self.access.server + path,
            params=query,
            ssl=self.access.ssl_context if self.access.ssl_context is not None else True,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=360),
        ) as resp:
            if resp.status >= 300:
                text = await resp.text()
                raise ApiError(resp.status, _try_json(text), f"WATCH {path}")
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)


def _try_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
