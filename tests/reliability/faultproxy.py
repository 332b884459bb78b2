"""API faults in front of a real kube-apiserver: the real tier's counterpart of the emulator's `faults`.

A TLS-terminating HTTP proxy (its serving certificate issued from the cluster's CA, so clients keep
verifying the server) that forwards every request to the API server over TLS, headers and body as they
are: a client authenticating with a bearer token (the chart ServiceAccount's, as the real-tier operator
does) is the same user through it. It takes the emulator's `Faults` settings and applies them the same
way: `latency_seconds` before each request, `error_rate`/`codes` answered by the proxy itself with a
Kubernetes Status (the request never reaches the API server), and watches ended after
`watch_drop_seconds` (counted in `watches_dropped`), between two events as the API server ends them.
Client certificates cannot pass a TLS-terminating proxy: point only token-authenticated clients at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from stagefleet.devcluster.apiserver.faults import Faults

# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy's own HTTP layer sets.
HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
       "host", "content-length"}
REASONS = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


class FaultProxy:
    def __init__(self, upstream: str, ca: Path, cert: Path, key: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = Faults()
        self._ca, self._cert, self._key = ca, cert, key
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.url = ""

    def start(self) -> None:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _start(self) -> str:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(str(self._cert), str(self._key))
        client_ctx = ssl.create_default_context(cafile=str(self._ca))
        # auto_decompress off: a gzip-encoded answer goes to the client as it came (with its header)
        self._session = ClientSession(connector=TCPConnector(ssl=client_ctx), auto_decompress=False,
                                      timeout=ClientTimeout(total=None, sock_connect=10))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        server: Any = site._server  # the bound port: TCPSite(port=0) does not report it otherwise
        port = server.sockets[0].getsockname()[1]
        return f"https://127.0.0.1:{port}"

    async def _stop(self) -> None:
        # open watches wait on the API server: end them first, or they die with the loop half-way
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        f = self.faults
        if f.latency_seconds > 0:
            await asyncio.sleep(f.latency_seconds)
        code = f.pick_error()
        if code is not None:
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": f"injected fault ({code})", "reason": REASONS.get(code, "InternalError"),
                      "code": code}
            return web.json_response(status, status=code, headers={"Retry-After": "1"} if code == 429 else {})
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read()
        watch = request.query.get("watch") in ("true", "1")
        drop = f.watch_drop_seconds if watch else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drop if drop else None
        # a body without Content-Type stays so (the API server takes it as JSON); aiohttp would add its own
        skip = () if "Content-Type" in request.headers else ("Content-Type",)
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                          data=body or None, allow_redirects=False,
                                          skip_auto_headers=skip) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in HOP:
                    resp.headers.add(k, v)
            if up.content_length is not None and deadline is None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            partial = b""  # a watch's event not yet whole: it is only passed on complete
            while True:
                try:
                    if deadline is None:
                        chunk = await up.content.readany()
                    else:
                        async with asyncio.timeout(max(0.0, deadline - loop.time())):
                            chunk = await up.content.readany()
                except TimeoutError:
                    f.watches_dropped += 1
                    break
                if not chunk:
                    chunk, partial = partial, b""
                    if not chunk:
                        break
                elif watch:
                    # the API server ends a watch between events; so does the proxy (a client given half
                    # an event and a clean end of stream would parse the half)
                    whole, nl, rest = (partial + chunk).rpartition(b"\n")
                    chunk, partial = whole + nl, rest
                    if not chunk:
                        continue
                try:
                    await resp.write(chunk)
                except (ConnectionError, RuntimeError):
                    return resp  # the client went away
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
            return resp
