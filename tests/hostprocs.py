"""Host processes by command line: how tests prove a pod's or cluster's processes are gone."""

from __future__ import annotations

import os


def processes_with(token: str) -> list[int]:
    """PIDs whose command line contains `token`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids
