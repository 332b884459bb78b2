"""The one Service the real tier routes: ``kubernetes`` (the API server), for pods on the node's network.

The tier has no kube-proxy. Its Service CIDR is a loopback range of its own, so in-cluster clients
(KUBERNETES_SERVICE_HOST:443) in host-network pods dial a loopback address; this forwarder listens there
and passes the bytes (TLS end to end) to the API server. Pods in their own network namespace have no route
out, as before; nothing outside this machine is ever dialled.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from typing import Any


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class _Handler(socketserver.BaseRequestHandler):
    server: ServiceProxy

    def handle(self) -> None:
        try:
            upstream = socket.create_connection(self.server.target, timeout=10)
        except OSError:
            return
        upstream.settimeout(None)
        back = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
        back.start()
        _pump(self.request, upstream)
        back.join()
        upstream.close()


class ServiceProxy(socketserver.ThreadingTCPServer):
    """Forward ``listen`` (host, port) to ``target``; ``start()`` serves in a daemon thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        super().__init__(listen, _Handler)
        self._thread: threading.Thread | None = None

    def start(self) -> ServiceProxy:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        return self

    def stop(self, *_: Any) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
