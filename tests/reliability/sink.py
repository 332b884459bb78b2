"""The SIMULATED worker's counterpart when it runs in real worker pods (`bench/fake_worker.py --sink URL`):
an HTTP service on the test machine's loopback, which real-tier worker pods reach through the node's
network (the chart's `worker.hostNetwork`, as for the test registry).

* `PUT /marker/<ref>` (body: digest) and `GET /marker/<ref>` (404 until put): the simulated registry, by
  which a pod started early waits for its upstream results (the dev tier uses a shared directory);
* `POST /record` (body: the run's JSON record): written as `<records>/<n>.json`, the files
  `read_records` reads on both tiers. A run whose pod was lost with its node still reports here, as it
  still pushes in a real cluster: its containers run on without a kubelet.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class Sink:
    def __init__(self, records: Path) -> None:
        self.records = records
        self.markers: dict[str, str] = {}
        self.lock = threading.Lock()
        self.count = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
                pass

            def _body(self) -> str:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()

            def _answer(self, code: int, text: str = "") -> None:
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                ref = unquote(self.path.removeprefix("/marker/"))
                with sink.lock:
                    digest = sink.markers.get(ref)
                self._answer(404) if digest is None else self._answer(200, digest)

            def do_PUT(self) -> None:
                body = self._body()
                with sink.lock:
                    sink.markers[unquote(self.path.removeprefix("/marker/"))] = body
                self._answer(204)

            def do_POST(self) -> None:
                body = self._body()
                json.loads(body)  # a torn record fails the run's POST (retried), never a later read
                with sink.lock:
                    sink.count += 1
                    n = sink.count
                (sink.records / f"{n:05d}.json").write_text(body)
                self._answer(204)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-worker-sink", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
