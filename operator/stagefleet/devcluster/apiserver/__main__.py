"""Run the emulator alone: `python -m stagefleet.devcluster.apiserver --port 6443 --kubeconfig kc.yaml`.

For poking at it with kubectl while debugging; `stagefleet dev-cluster up` runs it with the kubelet.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
from pathlib import Path

from .api import OPENAPI_DELAY_SECONDS
from .server import APIServer, write_kubeconfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stagefleet.devcluster.apiserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for the emulator here")
    parser.add_argument("--logs-dir", type=Path, help="pod log files (default: a temporary directory)")
    parser.add_argument(
        "--openapi-delay",
        type=float,
        default=OPENAPI_DELAY_SECONDS,
        help="seconds from a CRD's Established to its OpenAPI schemas (default %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
    logs_dir = args.logs_dir or Path(tempfile.mkdtemp(prefix="stagefleet-apiserver-logs-"))
    server = APIServer(host=args.host, port=args.port, logs_dir=logs_dir, openapi_delay=args.openapi_delay)
    url = server.start_in_thread()
    print(f"API-server emulator at {url} (pod logs in {logs_dir})", flush=True)
    if args.kubeconfig:
        print(f"kubeconfig: {write_kubeconfig(args.kubeconfig, url)}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop_in_thread()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
