"""`APIServer`: the aiohttp app around the emulated control plane, runnable in a loop or its own thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import yaml
from aiohttp import web

from .api import OPENAPI_DELAY_SECONDS, Core
from .faults import Faults
from .gc import GarbageCollector
from .handlers import Handlers


class APIServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        logs_dir: Path,
        faults: Faults | None = None,
        history_size: int = 2000,
        openapi_delay: float = OPENAPI_DELAY_SECONDS,
    ) -> None:
        self.host = host
        self.port = port
        self.logs_dir = Path(logs_dir)
        self.faults = faults or Faults()
        self.history_size = history_size
        self.openapi_delay = openapi_delay  # seconds from a CRD's Established to its OpenAPI schemas
        self.url = ""
        self.core: Core | None = None
        self._runner: web.AppRunner | None = None
        self._gc_task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> str:
        """Bind and serve; returns the URL (http://host:port)."""
        self.core = Core(self.history_size, self.openapi_delay)
        handlers = Handlers(self.core, self.logs_dir, self.faults)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handlers.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self._gc_task = asyncio.get_running_loop().create_task(GarbageCollector(self.core).run())
        return self.url

    async def stop(self) -> None:
        if self.core is not None:
            self.core.store.close_watchers()
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task
            self._gc_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- thread runner -------------------------------------------------------------------------------------
    def start_in_thread(self) -> str:
        """Run the server on its own event loop in a daemon thread (for sync callers and tests)."""
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:  # report bind errors to the caller
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=main, name="stagefleet-apiserver", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self.url

    def stop_in_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._thread = None
            self._loop = None


def write_kubeconfig(path: Path, server: str, *, namespace: str = "default") -> Path:
    """A kubeconfig for the emulator: plain HTTP, an empty-token user."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "stagefleet-dev",
        "clusters": [{"name": "stagefleet-dev", "cluster": {"server": server}}],
        "users": [{"name": "stagefleet-dev", "user": {"token": ""}}],
        "contexts": [
            {
                "name": "stagefleet-dev",
                "context": {"cluster": "stagefleet-dev", "user": "stagefleet-dev", "namespace": namespace},
            }
        ],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
