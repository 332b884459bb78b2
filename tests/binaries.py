"""Where tests find the real helm and kubectl: one rule for every suite.

STAGEFLEET_HELM / STAGEFLEET_KUBECTL if set (None when not an executable file), else the copies
scripts/setup.sh installs into <repo>/.tools/bin, else PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_tool(name: str) -> str | None:
    env = os.environ.get(f"STAGEFLEET_{name.upper()}")
    if env:
        return env if Path(env).is_file() and os.access(env, os.X_OK) else None
    local = REPO / ".tools" / "bin" / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def run_tool(
    argv: list[str], env: dict[str, str], *, input: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run kubectl/helm; with `check`, a non-zero exit fails the test with the tool's stderr."""
    proc = subprocess.run(argv, input=input, text=True, capture_output=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        command = " ".join([Path(argv[0]).name, *argv[1:]])
        raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
