"""A dev-cluster controller on its own event loop in a daemon thread, started and stopped by DevCluster.

A controller is an object with ``async run()`` (until cancelled; it closes its own API client) and a
``ready`` event set after its first pass. The Deployment controller and the node lifecycle controller
both run this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar


class Controller(Protocol):
    ready: asyncio.Event

    async def run(self) -> None: ...


C = TypeVar("C", bound=Controller)


class ControllerThread(Generic[C]):
    """``make()`` builds the controller inside the thread's loop (its API client belongs to that loop)."""

    def __init__(self, name: str, make: Callable[[], C]) -> None:
        self.name = name
        self._make = make
        self.loop = asyncio.new_event_loop()
        self.controller: C | None = None
        self._thread: threading.Thread | None = None
        self._main: asyncio.Future[None] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self.loop.run_forever, name=self.name, daemon=True)
        self._thread.start()

        async def create() -> None:
            self.controller = self._make()
            self._main = asyncio.ensure_future(self.controller.run())
            await self.controller.ready.wait()

        self.call(create(), timeout)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run ``coro`` on the controller's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._thread is None:
            return
        main = self._main

        async def cancel() -> None:
            if main is not None:
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await main

        with contextlib.suppress(Exception):
            self.call(cancel(), 15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=15)
        self._thread = None
        if not self.loop.is_running():
            self.loop.close()
