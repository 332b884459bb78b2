"""Fixtures for the worker tests: an ssh key pair and a throw-away sshd on a loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stagefleet.localregistry import free_port


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path

    @property
    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-l", "-f", str(self.public)], check=True, capture_output=True,
                             text=True).stdout
        return out.split()[1]


def make_key(path: Path) -> KeyPair:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stagefleet-test", "-f", str(path)],
                   check=True)
    return KeyPair(path, path.with_suffix(".pub"))


@pytest.fixture
def ssh_key(tmp_path: Path) -> KeyPair:
    """A fresh ed25519 key pair; the private file is left world-readable like a Secret volume file."""
    (tmp_path / "keys").mkdir()
    key = make_key(tmp_path / "keys" / "id_test")
    key.private.chmod(0o644)
    return key


@dataclass(frozen=True)
class Sshd:
    port: int
    host_key: KeyPair
    authorized: KeyPair

    def known_hosts_line(self) -> str:
        kind, body = self.host_key.public.read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {body}\n"


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("sshd did not listen")


@pytest.fixture
def sshd(tmp_path: Path, ssh_key: KeyPair) -> Iterator[Sshd]:
    """sshd on 127.0.0.1:<free port> that lets `ssh_key` in as the current user; stopped by PID."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).exists():
        pytest.skip("openssh-server not installed")
    d = tmp_path / "sshd"
    d.mkdir()
    host = make_key(d / "host_ed25519")
    (d / "authorized_keys").write_text(ssh_key.public.read_text())
    port = free_port()
    config = d / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host.private}
AuthorizedKeysFile {d / 'authorized_keys'}
PidFile {d / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
LogLevel ERROR
""")
    privsep = Path("/run/sshd")  # sshd insists on its privilege-separation directory
    made_privsep = not privsep.exists()
    if made_privsep:
        privsep.mkdir(mode=0o755, parents=True)
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                stderr=log)
    try:
        _wait_port(port, proc)
        yield Sshd(port, host, ssh_key)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        if made_privsep:
            shutil.rmtree(privsep, ignore_errors=True)
