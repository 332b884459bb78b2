"""`stagefleet demo` (what `./scripts/demo` runs) end to end, and that it leaves nothing running."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 900  # a hung demo fails the test instead of hanging the suite; not an assertion


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path)
    return subprocess.run([sys.executable, "-m", "stagefleet.cli", "demo", "--sleep", "2", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def port_closed(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.builder
def test_demo_local_builds_the_seed_and_tears_down() -> None:
    proc = demo("--local")
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr + out[-3000:]
    registry = re.search(r"^registry +(127\.0\.0\.1:\d+) ", out, re.M)
    assert registry, out[:2000]
    image = rf"^image: {re.escape(registry.group(1))}/stagefleet/seed:demo@sha256:[0-9a-f]{{64}}$"
    assert re.search(image, out, re.M)
    assert re.search(r"parallel speed-up \d+\.\d\dx", out)
    assert port_closed(registry.group(1))


@pytest.mark.builder
@pytest.mark.cluster
def test_demo_on_the_dev_cluster_reaches_succeeded_and_tears_down() -> None:
    proc = demo("--timeout", "600")
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:] + out[-5000:]
    registry = re.search(r"^registry +(127\.0\.0\.1:\d+) ", out, re.M)
    operator = re.search(r"^operator +pid (\d+) ", out, re.M)
    assert registry and operator, out[:2000]
    assert "$ kubectl apply -f examples/seed/imagebuild.yaml" in out
    assert re.search(r"imagebuild/seed  Succeeded$", out, re.M)
    # each stage was reported on its way, and the table at the end has all three done
    for stage in ("build1", "build2", "final"):
        assert re.search(rf"^ *\d+\.\ds  {stage} +Succeeded", out, re.M), stage
    assert re.search(rf"^image +{re.escape(registry.group(1))}/stagefleet/seed:demo@sha256:[0-9a-f]{{64}}"
                     r"  \(served by the registry\)$", out, re.M)
    assert re.search(r"^speed-up +\d+\.\d\dx: stages took", out, re.M)
    assert re.search(r"^parallel +build1 and build2 ran side by side for \d+\.\ds$", out, re.M)
    assert port_closed(registry.group(1))
    assert pid_gone(int(operator.group(1)))
