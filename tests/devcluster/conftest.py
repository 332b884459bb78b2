"""Shared dev-cluster fixtures: a running API-server emulator (the kubelet teammate may add more)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stagefleet.devcluster.apiserver import APIServer, write_kubeconfig


@dataclass
class RunningAPIServer:
    server: APIServer
    url: str
    kubeconfig: Path
    logs_dir: Path


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[RunningAPIServer]:
    """A fresh emulator on a free loopback port, with a kubeconfig pointing at it; stopped afterwards."""
    logs_dir = tmp_path / "pod-logs"
    logs_dir.mkdir()
    server = APIServer(logs_dir=logs_dir)
    url = server.start_in_thread()
    try:
        yield RunningAPIServer(server, url, write_kubeconfig(tmp_path / "kubeconfig", url), logs_dir)
    finally:
        server.stop_in_thread()
