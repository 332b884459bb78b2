"""`RUN --mount=type=ssh` reaches the worker's ssh-agent; a private repository is cloned over ssh."""

from __future__ import annotations

import getpass
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import KeyPair, Sshd
from .gitrepo import make_repo
from .helpers import image_files, processes_mentioning, run_worker, write_context

pytestmark = pytest.mark.builder


def _bundle_ssh_add(dest: Path) -> None:
    """The host's ssh-add with its shared libraries, runnable in the busybox image via the loader."""
    dest.mkdir(parents=True)
    ssh_add = shutil.which("ssh-add")
    assert ssh_add, "openssh-client is needed"
    shutil.copy(ssh_add, dest / "ssh-add")
    ldd = subprocess.run(["ldd", ssh_add], check=True, capture_output=True, text=True).stdout
    for line in ldd.splitlines():
        parts = line.split()
        lib = parts[2] if "=>" in parts and len(parts) > 3 else parts[0]
        if lib.startswith("/"):
            shutil.copy(lib, dest / Path(lib).name)


def test_ssh_mount_reaches_agent_holding_the_key(
        registry: LocalRegistry, base_image: str, tmp_path: Path, ssh_key: KeyPair) -> None:
    h = registry.host
    ctx = write_context(tmp_path / "ctx", f"""FROM {base_image} AS app
COPY sshtools /sshtools
RUN --mount=type=ssh,id=deploy /sshtools/ld-linux-x86-64.so.2 --library-path /sshtools \\
    /sshtools/ssh-add -l > /agent.txt; cat /agent.txt
""")
    _bundle_ssh_add(ctx / "sshtools")
    pod = tmp_path / "pod"
    name = f"ssh/{secrets.token_hex(4)}"
    r = run_worker(["--context", str(ctx), "--target", "app", "--ssh", f"deploy={ssh_key.private}",
                    "--push", f"{h}/{name}:1"], registry_host=h, tmp=pod)
    assert r.code == 0, r.stderr + r.stdout
    agent_view = image_files(h, name, r.result["digest"])["/agent.txt"].decode()
    assert ssh_key.fingerprint in agent_view
    assert ssh_key.fingerprint in r.stdout
    assert "PRIVATE KEY" not in r.stdout
    assert processes_mentioning(str(pod)) == []  # the agent was killed


def test_private_repository_cloned_over_ssh_with_key_file(
        registry: LocalRegistry, base_image: str, tmp_path: Path, sshd: Sshd, ssh_key: KeyPair) -> None:
    h = registry.host
    repo = make_repo(tmp_path / "git", base_image)
    url = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd.port}{repo.bare}"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line())
    name = f"sshgit/{secrets.token_hex(4)}"
    common = ["--git-url", url, "--git-revision", repo.first, "--context-dir", "app", "--target", "app",
              "--push", f"{h}/{name}:1"]
    r = run_worker([*common, "--git-ssh-key", str(ssh_key.private), "--git-known-hosts", str(known_hosts)],
                   registry_host=h, tmp=tmp_path / "pod1")
    assert r.code == 0, r.stderr + r.stdout
    files = image_files(h, name, r.result["digest"])
    assert files["/ctx/keep.txt"] == b"v1\n"
    assert "/ctx/ignored.txt" not in files

    # without known_hosts every host key is refused (no trust on first use) …
    r = run_worker([*common, "--git-ssh-key", str(ssh_key.private)], registry_host=h, tmp=tmp_path / "pod2")
    assert r.code == 10, r.stderr + r.stdout
    assert "Host key verification failed" in r.result["error"]["message"]
    # … unless host-key checking is switched off deliberately
    r = run_worker([*common, "--git-ssh-key", str(ssh_key.private), "--git-insecure-ignore-host-key"],
                   registry_host=h, tmp=tmp_path / "pod2b")
    assert r.code == 0, r.stderr + r.stdout

    # without the key the server says no: a context failure
    r = run_worker([*common, "--git-known-hosts", str(known_hosts)], registry_host=h, tmp=tmp_path / "pod3")
    assert r.code == 10, r.stderr + r.stdout
    assert "Permission denied" in r.result["error"]["message"]

    # a host key that does not match is refused
    other = tmp_path / "other_known_hosts"
    other.write_text(f"[127.0.0.1]:{sshd.port} {ssh_key.public.read_text().split()[0]} "
                     f"{ssh_key.public.read_text().split()[1]}\n")
    r = run_worker([*common, "--git-ssh-key", str(ssh_key.private), "--git-known-hosts", str(other)],
                   registry_host=h, tmp=tmp_path / "pod4")
    assert r.code == 10, r.stderr + r.stdout
