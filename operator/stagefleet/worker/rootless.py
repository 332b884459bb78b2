"""Rootless buildah's user namespace: check it once before building, and say which securityContext field
to change when it cannot be made.

A worker pod runs buildah as uid 1000: buildah re-executes itself in a user namespace whose uid/gid maps
newuidmap/newgidmap write from the `build` user's /etc/subuid and /etc/subgid ranges. That fails, each in
its own way, when the container's seccomp profile refuses unshare(CLONE_NEWUSER) (RuntimeDefault), when
SETUID/SETGID are not in its bounding set (newuidmap's file capabilities then grant nothing), and under
no_new_privs (allowPrivilegeEscalation: false: file capabilities are ignored). Without the helpers buildah
falls back to mapping the one uid, and the build fails later on the first file of another owner, so a
single-id map counts as a failure too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

CAP_SETGID = 6
CAP_SETUID = 7
SECCOMP_MODE_FILTER = 2
UID_MAP = "/proc/self/uid_map"
GID_MAP = "/proc/self/gid_map"
#: The command run in buildah's user namespace: its id maps (each line prefixed with the file's name) show
#: how many ids were mapped.
PROBE_ARGV = ("buildah", "unshare", "grep", "-H", "", UID_MAP, GID_MAP)
_USERNS_WORDS = ("unshare", "user namespace", "newuidmap", "newgidmap", "uid_map", "gid_map", "setgroups")


class UserNamespaceError(RuntimeError):
    """Rootless buildah cannot get a user namespace with the subordinate id ranges mapped."""


@dataclass(frozen=True)
class ProcessStatus:
    """The parts of /proc/self/status that decide whether a user namespace can be made."""

    no_new_privs: bool
    cap_bounding: int
    seccomp_mode: int


def parse_status(text: str) -> ProcessStatus:
    """Pure: /proc/PID/status text → `ProcessStatus` (missing fields: unrestricted)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        bounding = int(fields.get("CapBnd", "ffffffffffffffff"), 16)
    except ValueError:
        bounding = ~0
    try:
        seccomp = int(fields.get("Seccomp", "0"))
    except ValueError:
        seccomp = 0
    return ProcessStatus(fields.get("NoNewPrivs", "0") == "1", bounding, seccomp)


def mapped_ids(map_text: str, name: str | None = None) -> int:
    """Pure: how many ids a /proc/PID/uid_map (or gid_map) text maps; with `name`, only the lines that
    `grep -H` prefixed with `name:`."""
    total = 0
    for line in map_text.splitlines():
        if name is not None:
            prefix, sep, line = line.partition(":")
            if not sep or prefix != name:
                continue
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            total += int(parts[2])
    return total


def diagnose(output: str, status: ProcessStatus) -> str:
    """Pure: buildah's complaint plus this process's status → the securityContext change that fixes it.

    Checked in the order the kernel applies them: a seccomp filter refusing unshare first, then the
    things that keep newuidmap/newgidmap from using their file capabilities.
    """
    head = "rootless buildah could not create a user namespace"
    text = output.lower()
    if "no subuid ranges" in text or "no subgid ranges" in text or "found no uid ranges" in text:
        return (f"{head}: the worker's user has no subordinate ids; the builder image must list it in "
                "/etc/subuid and /etc/subgid (build:100000:65536), and securityContext.runAsUser must be "
                "that user (1000)")
    refused = "unshare" in text or "operation not permitted" in text
    if status.seccomp_mode == SECCOMP_MODE_FILTER and refused:
        return (f"{head}: unshare(CLONE_NEWUSER) is refused by the container's seccomp profile; set "
                "securityContext.seccompProfile.type: Unconfined on the worker container (or pod)")
    if status.no_new_privs:
        return (f"{head}: newuidmap/newgidmap cannot use their file capabilities under no_new_privs; set "
                "securityContext.allowPrivilegeEscalation: true on the worker container")
    missing = [name for name, bit in (("SETUID", CAP_SETUID), ("SETGID", CAP_SETGID))
               if not status.cap_bounding >> bit & 1]
    if missing:
        return (f"{head}: newuidmap/newgidmap need {' and '.join(missing)} in the bounding set; add "
                f"{', '.join(missing)} to securityContext.capabilities.add on the worker container")
    if status.seccomp_mode == SECCOMP_MODE_FILTER:
        return (f"{head}: the container's seccomp profile may refuse the namespace's syscalls; set "
                "securityContext.seccompProfile.type: Unconfined on the worker container (or pod)")
    return (f"{head} with the build user's /etc/subuid and /etc/subgid ranges mapped (needs "
            "securityContext.allowPrivilegeEscalation: true, capabilities.add SETUID and SETGID, "
            "seccompProfile Unconfined, and user namespaces enabled on the node)")


def _tail(text: str, n: int = 2, width: int = 300) -> str:
    """buildah's last lines about the namespace, short: the advice before them must fit the result."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    relevant = [line for line in lines if any(w in line.lower() for w in _USERNS_WORDS)] or lines
    return " | ".join(line[:width] for line in relevant[-n:])


def check_user_namespace(env: Mapping[str, str], status_text: str | None = None) -> None:
    """Run `PROBE_ARGV` in `env`; raise `UserNamespaceError` (with `diagnose`'s advice and buildah's own
    words) unless more than one uid and gid were mapped. Costs one short buildah re-exec."""
    proc = subprocess.run(list(PROBE_ARGV), env=dict(env), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)
    uids, gids = mapped_ids(proc.stdout, UID_MAP), mapped_ids(proc.stdout, GID_MAP)
    if proc.returncode == 0 and uids > 1 and gids > 1:
        return
    if status_text is None:
        with open("/proc/self/status") as f:
            status_text = f.read()
    output = proc.stderr + proc.stdout
    detail = _tail(proc.stderr) or (f"only {uids} uid(s) and {gids} gid(s) mapped" if proc.returncode == 0
                                    else f"buildah unshare exited {proc.returncode}")
    raise UserNamespaceError(f"{diagnose(output, parse_status(status_text))} (buildah: {detail})")
