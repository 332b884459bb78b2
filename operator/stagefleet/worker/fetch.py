"""I/O: getting the build context (local dir, git at a pinned revision, an OCI artifact, inline Dockerfile)
and keys.

Keys come from Kubernetes Secret volumes, whose files are often group/world-readable; ssh refuses such
keys, so each one is copied to a 0600 file in the worker's private directory first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stagefleet import ocisource
from stagefleet.ctxpath import OutsideError, inside
from stagefleet.gitauth import credential_env, ssh_command
from stagefleet.worker.registry import Session
from stagefleet.worker.spec import StepSpec


class FetchError(RuntimeError):
    """The build context could not be obtained (exit code 10)."""


@dataclass(frozen=True)
class Context:
    """What buildah builds from: a context directory and a Dockerfile path."""

    directory: Path
    dockerfile: Path


def private_copy(src: Path, dest: Path) -> Path:
    """Copy a key file to `dest` with mode 0600."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(src.read_bytes())
    return dest


def _git(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)


def clone(url: str, revision: str, dest: Path, *, ssh_key: Path | None, known_hosts: Path | None,
          scratch: Path, password_file: Path | None = None, username_file: Path | None = None,
          insecure_ignore_host_key: bool = False) -> None:
    """Check out `revision` of `url` into `dest`: a shallow fetch of just that revision, else a full one.

    Credentials stay in files: ssh's key (copied 0600) and known_hosts, https's password and username read
    by a credential helper (`stagefleet.gitauth`); none is in an argument, the URL or a message.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSH_ASKPASS"))}
    key = private_copy(ssh_key, scratch / "git_key") if ssh_key is not None else None
    env.update(GIT_TERMINAL_PROMPT="0", GIT_SSH_COMMAND=ssh_command(
        key, known_hosts, insecure_ignore_host_key=insecure_ignore_host_key))
    if password_file is not None:
        # the username key is optional in the Secret: its (optional) volume then has no file
        user = username_file if username_file is not None and username_file.is_file() else None
        env.update(credential_env(password_file, user))
    dest.mkdir(parents=True, exist_ok=True)
    for args in (["init", "-q"], ["remote", "add", "origin", url]):
        r = _git(args, dest, env)
        if r.returncode:
            raise FetchError(f"git {args[0]}: {r.stderr.strip()}")
    r = _git(["fetch", "-q", "--depth", "1", "origin", revision], dest, env)
    if r.returncode:
        shallow_err = r.stderr.strip()
        r = _git(["fetch", "-q", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*"], dest, env)
        if r.returncode:
            raise FetchError(f"git fetch {url}: {r.stderr.strip() or shallow_err}")
        rev = revision
    else:
        rev = "FETCH_HEAD"
    r = _git(["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", rev], dest, env)
    if r.returncode:
        r2 = _git(["checkout", "-q", "--detach", f"origin/{revision}"], dest, env)
        if r2.returncode:
            raise FetchError(f"git checkout {revision}: {r.stderr.strip()}")


def unpack_artifact(ref: str, dest: Path, env: Mapping[str, str]) -> None:
    """Unpack the context artifact ``ref`` (pinned by digest) into ``dest``, reached as buildah reaches
    registries (`Session`: insecure hosts, REGISTRY_AUTH_FILE); raises `FetchError`."""
    parsed = ocisource.parse_ref(ref)
    session = Session(parsed.host, env, timeout=60.0)

    def get(path: str, headers: Mapping[str, str], sink: IO[bytes] | None
            ) -> tuple[int, Mapping[str, str], bytes]:
        answer = session("GET", path, headers, limit=ocisource.MAX_LAYER_BYTES, sink=sink)
        if answer is None:
            raise ocisource.ArtifactError(f"registry {parsed.host} unreachable")
        if answer[0] == 401:
            raise ocisource.ArtifactError(f"registry {parsed.host} refused the credentials (401)")
        return answer

    layer = dest.parent / f"{dest.name}.layer"
    try:
        ocisource.fetch(parsed, get, layer)
        ocisource.unpack(layer, dest)
    except ocisource.ArtifactError as e:
        raise FetchError(f"context artifact {ref}: {e}") from None
    finally:
        layer.unlink(missing_ok=True)


def fetch_context(spec: StepSpec, workdir: Path, env: Mapping[str, str] | None = None) -> Context:
    """Materialise the context for `spec` below `workdir`; raises `FetchError`. ``env``: buildah's (an
    artifact is fetched the way buildah reaches registries)."""
    if spec.inline_dockerfile is not None and not spec.inline_dockerfile.is_file():
        raise FetchError(f"inline Dockerfile {spec.inline_dockerfile} not found")
    if spec.oci_source is not None:
        base = workdir / "oci"
        unpack_artifact(spec.oci_source, base, os.environ if env is None else env)
    elif spec.git_url is not None:
        base = workdir / "git"
        clone(spec.git_url, spec.git_revision or "HEAD", base, ssh_key=spec.git_ssh_key,
              known_hosts=spec.git_known_hosts, scratch=workdir, password_file=spec.git_password_file,
              username_file=spec.git_username_file,
              insecure_ignore_host_key=spec.git_insecure_ignore_host_key)
    elif spec.context is not None:
        base = spec.context
        if not base.is_dir():
            raise FetchError(f"context directory {base} not found")
    else:  # an inline Dockerfile alone builds from an empty context
        base = workdir / "context"
        base.mkdir(parents=True, exist_ok=True)
    # Both paths are checked with symlinks resolved: a repository may hold `Dockerfile -> /etc/passwd` or
    # `app -> /`, and buildah would read the target. Messages name the path, never what it points to.
    try:
        directory = inside(base, spec.context_dir or "", f"context directory {spec.context_dir!r}")
        if not directory.is_dir():
            raise FetchError(f"context sub-directory {spec.context_dir!r} not found")
        if spec.inline_dockerfile is not None:
            dockerfile = spec.inline_dockerfile
        else:  # relative to the context directory, and like it inside the fetched source
            dockerfile = inside(base, f"{spec.context_dir or '.'}/{spec.dockerfile}",
                                f"Dockerfile {spec.dockerfile!r}")
    except OutsideError as e:
        raise FetchError(str(e)) from None
    if not dockerfile.is_file():
        raise FetchError(f"{spec.dockerfile} not found in the context")
    return Context(directory, dockerfile)


class SshAgent:
    """An ssh-agent of our own holding the given keys; `stop()` kills it by PID.

    Its socket lives in a short private directory under /tmp: unix socket paths are limited to 108 bytes,
    which a deep TMPDIR easily exceeds.
    """

    def __init__(self) -> None:
        short = "/tmp" if os.path.isdir("/tmp") else None
        self.workdir = Path(tempfile.mkdtemp(prefix="sf-agent-", dir=short))
        self.socket = self.workdir / "agent.sock"
        self.pid: int | None = None

    def start(self) -> SshAgent:
        r = subprocess.run(["ssh-agent", "-s", "-a", str(self.socket)], capture_output=True, text=True)
        if r.returncode:
            self.stop()
            raise RuntimeError(f"ssh-agent failed: {r.stderr.strip()}")
        out = r.stdout
        for stmt in out.split(";"):
            key, _, val = stmt.strip().partition("=")
            if key == "SSH_AGENT_PID":
                self.pid = int(val)
        if self.pid is None:
            raise RuntimeError(f"ssh-agent printed no PID: {out!r}")
        return self

    def add(self, key: Path, name: str) -> None:
        copy = private_copy(key, self.workdir / f"ssh-key-{name}")
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.socket)}
        r = subprocess.run(["ssh-add", str(copy)], env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        copy.unlink()
        if r.returncode:
            raise ValueError(f"ssh key {name!r}: ssh-add failed: {r.stderr.strip()}")

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            self.pid = None
        shutil.rmtree(self.workdir, ignore_errors=True)
