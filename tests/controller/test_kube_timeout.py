"""Every API call of the operator has a deadline: a server that accepts and never answers cannot wedge a
reconcile thread (and with it every later pass of that build)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import urllib3
from kubernetes import client

from stagefleet.controller import kube


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections, reads the request, never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for c in held:
        c.close()


def test_calls_time_out_instead_of_waiting_forever(
    silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube, "REQUEST_TIMEOUT", (1.0, 0.5))
    cfg = client.Configuration()
    cfg.host = silent_server
    k = kube.Kube(kube._TimeoutApiClient(cfg))
    pool = ThreadPoolExecutor(1)
    try:
        call = pool.submit(
            k.custom.get_namespaced_custom_object,
            "stagefleet.io",
            "v1alpha1",
            "ns",
            "imagebuilds",
            "b",
            _preload_content=False,
        )
        with pytest.raises(urllib3.exceptions.MaxRetryError, match="Read timed out") as err:
            call.result(timeout=30)  # without the default deadline: concurrent.futures.TimeoutError here
    finally:
        pool.shutdown(wait=False)
    assert kube._transient(err.value)  # so the operator's own retry (tenacity) takes it from here
