"""Resolve an ImageBuild's source to what the planner needs: the Dockerfile text and a pinned revision.

Inline sources are direct. Git sources are pinned to a commit with ``git ls-remote`` (so every worker pod
builds the same tree even if the branch moves) and only the Dockerfile is fetched: a depth-1 fetch with
``--filter=blob:none`` and a sparse checkout of that one path, never the whole context.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagefleet.controller.spec import ImageBuildSpec
from stagefleet.ctxpath import OutsideError, inside

_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_CRED_RE = re.compile(r"(://)[^/@\s]+@")


class SourceError(RuntimeError):
    """The source cannot be resolved (unreachable repository, unknown revision, missing Dockerfile)."""


@dataclass(frozen=True)
class Resolved:
    dockerfile: str
    filename: str
    status: dict[str, Any]  # recorded in status.source
    git_url: str | None = None
    git_commit: str | None = None


def redact(text: str) -> str:
    """Strip credentials embedded in URLs (https://user:token@host) before text reaches status or logs."""
    return _CRED_RE.sub(r"\1***@", text)


def _git(args: list[str], *, cwd: Path | None, env: dict[str, str], timeout: float) -> str:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise SourceError(f"git {args[0]} timed out after {timeout:.0f}s") from e
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        # The first fatal: line says what failed; ssh's own complaint (host key, publickey) precedes a generic
        # "Could not read from remote repository", so keep the line before it too.
        first = next((i for i, ln in enumerate(lines) if ln.startswith("fatal:")), len(lines) - 1)
        detail = "; ".join(ln.strip() for ln in lines[max(0, first - 1) : first + 1])[:600] if lines else ""
        if first > 0 and "Could not read from remote" not in lines[first]:
            detail = lines[first].strip()[:600]
        raise SourceError(redact(f"git {args[0]} failed: {detail or f'exit code {proc.returncode}'}"))
    return proc.stdout


def _env(ssh_key_file: Path | None, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_TERMINAL_PROMPT": "0", "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"})
    if ssh_key_file is not None:
        env["GIT_SSH_COMMAND"] = (
            f"ssh -i {ssh_key_file} -o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={home}/known_hosts"
        )
    return env


def pin_revision(url: str, revision: str, env: dict[str, str], timeout: float = 60) -> str:
    """The commit ``revision`` (branch, tag, HEAD or commit) names in ``url``."""
    if _SHA_RE.match(revision):
        return revision
    out = _git(
        ["ls-remote", "--", url, revision] if revision != "HEAD" else ["ls-remote", "--", url, "HEAD"],
        cwd=None,
        env=env,
        timeout=timeout,
    )
    refs: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref.strip()] = sha.strip()
    for candidate in (
        f"refs/tags/{revision}^{{}}",
        f"refs/tags/{revision}",
        f"refs/heads/{revision}",
        revision,
        f"refs/{revision}",
    ):
        if candidate in refs:
            return refs[candidate]
    raise SourceError(redact(f"revision {revision!r} not found in {url}"))


def fetch_file(
    url: str, commit: str, path: str, env: dict[str, str], workdir: Path, timeout: float = 120
) -> str:
    """One file at one commit: shallow, blob-less fetch plus a sparse checkout of just that path."""
    repo = workdir / "repo"
    repo.mkdir()
    _git(["init", "-q"], cwd=repo, env=env, timeout=timeout)
    _git(["remote", "add", "origin", url], cwd=repo, env=env, timeout=timeout)
    _git(["sparse-checkout", "set", "--no-cone", f"/{path}"], cwd=repo, env=env, timeout=timeout)
    try:
        _git(
            ["fetch", "-q", "--depth", "1", "--filter=blob:none", "--no-tags", "origin", commit],
            cwd=repo,
            env=env,
            timeout=timeout,
        )
    except SourceError as e:
        raise SourceError(f"{e} (fetching commit {commit[:12]} of {redact(url)})") from e
    _git(["checkout", "-q", "FETCH_HEAD"], cwd=repo, env=env, timeout=timeout)
    # A symlink in the repository (Dockerfile -> /etc/passwd, app -> ../..) must not make the operator read
    # its own files: the resolved path must stay in the checkout, and the message never quotes the target.
    for _ in range(8):  # a symlink to another file of the repository: check that one out too
        try:
            target = inside(repo, path, f"{path} (spec.source.contextDir + spec.dockerfile)")
        except OutsideError as e:
            raise SourceError(f"{e} in {redact(url)} at commit {commit[:12]}") from None
        if target.exists() or not (repo / path).is_symlink():
            break
        wanted = target.relative_to(repo.resolve()).as_posix()
        _git(["sparse-checkout", "add", f"/{wanted}"], cwd=repo, env=env, timeout=timeout)
    if not target.is_file():
        raise SourceError(f"{path} not found in {redact(url)} at commit {commit[:12]}")
    return target.read_text(encoding="utf-8", errors="replace")


def resolve(spec: ImageBuildSpec, *, ssh_key: bytes | None = None, timeout: float = 120) -> Resolved:
    """Dockerfile text and the pinned revision for ``spec``; raises SourceError with a precise message."""
    if spec.source.inline is not None:
        return Resolved(dockerfile=spec.source.inline, filename="Dockerfile", status={"inline": True})
    git = spec.source.git
    assert git is not None
    path = "/".join(p for p in (spec.source.context_dir, spec.dockerfile) if p).lstrip("/")
    with tempfile.TemporaryDirectory(prefix="stagefleet-source-") as tmp:
        home = Path(tmp)
        key_file: Path | None = None
        if ssh_key is not None:
            key_file = home / "ssh-key"
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(ssh_key if ssh_key.endswith(b"\n") else ssh_key + b"\n")
        env = _env(key_file, home)
        commit = pin_revision(git.url, git.revision, env, timeout=timeout)
        text = fetch_file(git.url, commit, path, env, home, timeout=timeout)
    return Resolved(
        dockerfile=text,
        filename=path,
        git_url=git.url,
        git_commit=commit,
        status={
            "git": {"url": redact(git.url), "revision": git.revision, "commit": commit, "dockerfile": path}
        },
    )
