"""The fault proxy ends a dropped watch between two events, as the API server does: a client never gets
half an event followed by a clean end of stream (kopf parses what is left at the end as one more event, and
its watcher died of `Unterminated string` on the real tier when the drop fell inside an event)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from aiohttp import ClientSession, TCPConnector, web

from stagefleet.realcluster import pki

from .faultproxy import FaultProxy

WHOLE = b'{"type":"ADDED","object":{"metadata":{"name":"a"}}}\n'
HALF = b'{"type":"MODIFIED","object":{"metadata":{"na'


async def _upstream(ca: pki.KeyPair, directory: Path) -> tuple[web.AppRunner, str]:
    """An API server stand-in whose watch sends one whole event, then half of the next, then waits."""

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(WHOLE)
        await resp.write(HALF)
        if request.query.get("watch") == "true":
            await asyncio.sleep(30)
        else:
            await resp.write(b'me":"b"}}}\n')
        await resp.write_eof()
        return resp

    cert = pki.issue(ca, directory, "upstream", cn="upstream", sans=("IP:127.0.0.1",))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert.cert), str(cert.key))
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"https://127.0.0.1:{port}"


async def _get(url: str, ca: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    async with ClientSession(connector=TCPConnector(ssl=ctx)) as s, s.get(url) as r:
        return await r.read()


def test_a_dropped_watch_ends_between_events(tmp_path: Path) -> None:
    ca = pki.make_ca(tmp_path)

    async def run() -> None:
        runner, upstream = await _upstream(ca, tmp_path)
        cert = pki.issue(ca, tmp_path, "proxy", cn="proxy", sans=("IP:127.0.0.1",))
        proxy = FaultProxy(upstream, ca.cert, cert.cert, cert.key)
        proxy.start()
        try:
            proxy.faults.update({"watch_drop_seconds": 1.0})
            watched = await _get(proxy.url + "/api/v1/pods?watch=true", ca.cert)
            listed = await _get(proxy.url + "/api/v1/pods", ca.cert)
        finally:
            proxy.stop()
            await runner.cleanup()
        assert watched == WHOLE  # the half event is held back and dropped with the watch
        assert proxy.faults.watches_dropped == 1
        assert listed == WHOLE + HALF + b'me":"b"}}}\n'  # what is not a watch passes as it comes

    asyncio.run(run())
