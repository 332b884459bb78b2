"""Where tests find the real helm and kubectl: one rule for every suite.

STAGEFLEET_HELM / STAGEFLEET_KUBECTL if set (None when not an executable file), else the copies
scripts/setup.sh installs into <repo>/.tools/bin, else PATH.
"""

from __future__ import annotations

import os
import shutil
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
