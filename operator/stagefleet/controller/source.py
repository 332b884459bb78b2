"""Resolve an ImageBuild's source to what the planner needs: the Dockerfile text and a pinned revision.

Inline sources are direct. Git sources are pinned to a commit with ``git ls-remote`` (so every worker pod
builds the same tree even if the branch moves) and only the Dockerfile is fetched: a depth-1 fetch with
``--filter=blob:none`` and a sparse checkout of that one path, never the whole context. OCI sources
(`stagefleet.ocisource`) are pinned to a manifest digest; their one layer is streamed to a temporary file
and read without unpacking (the Dockerfile, and every file's hash for the stage keys).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from stagefleet import ignorefile, ocisource
from stagefleet.controller.spec import ImageBuildSpec
from stagefleet.ctxpath import OutsideError, inside
from stagefleet.gitauth import credential_env, ssh_command
from stagefleet.ignorefile import Ignore
from stagefleet.registryclient import Registry, RegistryError
from stagefleet.stagekey import ContextIndex
from stagefleet.worker.registry import MAX_MANIFEST_BYTES

_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_CRED_RE = re.compile(r"(://)[^/@\s]+@")


#: An ignore file larger than this is not read (nothing is left out of the keys).
MAX_IGNORE_BYTES = 1 << 20


class SourceError(RuntimeError):
    """The source cannot be resolved (unreachable repository, unknown revision, missing Dockerfile)."""


@dataclass(frozen=True)
class Resolved:
    dockerfile: str
    filename: str
    status: dict[str, Any]  # recorded in status.source
    git_url: str | None = None
    git_commit: str | None = None
    # `git ls-tree -r -z --full-tree` of the commit: every path's blob id, which keys the stages that copy
    # it (`stagekey.index_git_tree`). The blob-less fetch has every tree, so it costs no download.
    tree: str | None = None
    # An OCI source's content, indexed from its layer (less what its ignore file leaves out), and the
    # digest reference the workers unpack.
    index: ContextIndex | None = None
    oci_ref: str | None = None
    # What a git context's ignore file leaves out, as buildah reads it (`ignorefile`): not in its index.
    ignore: Ignore | None = None


def redact(text: str) -> str:
    """Strip credentials embedded in URLs (https://user:token@host) before text reaches status or logs."""
    return _CRED_RE.sub(r"\1***@", text)


class SourceTimeout(SourceError):
    """A git command did not finish before the source's deadline (an unreachable or black-holed host)."""


def _run(cmd: list[str], *, cwd: Path | None, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """``cmd`` in a session of its own, killed with all its children when ``timeout`` passes: git's helpers
    (ssh, git-remote-https) inherit its pipes, and killing git alone would leave us waiting for them."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.01))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out, err


def _git(args: list[str], *, cwd: Path | None, env: dict[str, str], timeout: float) -> str:
    try:
        code, stdout, stderr = _run(["git", *args], cwd=cwd, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SourceTimeout(f"git {args[0]} timed out") from e
    if code != 0:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        # The first fatal: line says what failed; ssh's own complaint (host key, publickey) precedes a generic
        # "Could not read from remote repository", so keep the line before it too.
        first = next((i for i, ln in enumerate(lines) if ln.startswith("fatal:")), len(lines) - 1)
        detail = "; ".join(ln.strip() for ln in lines[max(0, first - 1) : first + 1])[:600] if lines else ""
        if first > 0 and "Could not read from remote" not in lines[first]:
            detail = lines[first].strip()[:600]
        raise SourceError(redact(f"git {args[0]} failed: {detail or f'exit code {code}'}"))
    return stdout


@dataclass(frozen=True)
class GitAuth:
    """Credentials from the Secret of spec.source.git.secretRef (values, held only in memory and in 0600
    files of a private temporary directory while git runs)."""

    ssh_key: bytes | None = None
    known_hosts: bytes | None = None
    username: bytes | None = None
    password: bytes | None = None
    insecure_ignore_host_key: bool = False


def _private_file(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _env(auth: GitAuth, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSH_ASKPASS"))}
    env.update({"GIT_TERMINAL_PROMPT": "0", "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"})
    key = None
    if auth.ssh_key is not None:  # ssh wants the key's last line terminated
        key = _private_file(home / "ssh-key", auth.ssh_key.rstrip(b"\n") + b"\n")
    known = _private_file(home / "known_hosts", auth.known_hosts) if auth.known_hosts is not None else None
    env["GIT_SSH_COMMAND"] = ssh_command(key, known, insecure_ignore_host_key=auth.insecure_ignore_host_key)
    if auth.password is not None:
        user = _private_file(home / "username", auth.username) if auth.username is not None else None
        env.update(credential_env(_private_file(home / "password", auth.password), user))
    return env


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SourceTimeout("deadline passed")
    return left


def pin_revision(url: str, revision: str, env: dict[str, str], timeout: float = 60) -> str:
    """The commit ``revision`` (branch, tag, HEAD or commit) names in ``url``."""
    if _SHA_RE.match(revision):
        return revision
    out = _git(["ls-remote", "--", url, revision], cwd=None, env=env, timeout=timeout)
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
    url: str,
    commit: str,
    path: str,
    env: dict[str, str],
    workdir: Path,
    timeout: float = 120,
    also: Sequence[str] = (),
) -> tuple[str, str, dict[str, str | None]]:
    """One file at one commit, the commit's tree listing (`Resolved.tree`) and the text of each of the
    small files ``also`` that exists (None for one that is not a plain file: a link, say): shallow,
    blob-less fetch plus a sparse checkout of just those paths; every git command together within
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    repo = workdir / "repo"
    repo.mkdir()
    _git(["init", "-q"], cwd=repo, env=env, timeout=_left(deadline))
    _git(["remote", "add", "origin", url], cwd=repo, env=env, timeout=_left(deadline))
    sparse = [f"/{p}" for p in (path, *also)]
    _git(["sparse-checkout", "set", "--no-cone", *sparse], cwd=repo, env=env, timeout=_left(deadline))
    try:
        _git(
            ["fetch", "-q", "--depth", "1", "--filter=blob:none", "--no-tags", "origin", commit],
            cwd=repo,
            env=env,
            timeout=_left(deadline),
        )
    except SourceTimeout:
        raise
    except SourceError as e:
        raise SourceError(f"{e} (fetching commit {commit[:12]} of {redact(url)})") from e
    _git(["checkout", "-q", "FETCH_HEAD"], cwd=repo, env=env, timeout=_left(deadline))
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
        _git(["sparse-checkout", "add", f"/{wanted}"], cwd=repo, env=env, timeout=_left(deadline))
    if not target.is_file():
        raise SourceError(f"{path} not found in {redact(url)} at commit {commit[:12]}")
    tree = _git(["ls-tree", "-r", "-z", "--full-tree", "FETCH_HEAD"], cwd=repo, env=env,
                timeout=_left(deadline))
    extra: dict[str, str | None] = {}
    checkout = repo.resolve()
    for name in also:
        candidate = checkout / name
        if Path(os.path.realpath(candidate)) != candidate:
            # A link on the way (the file, or a directory above it): never followed, since it may lead out
            # of the checkout; such an ignore file is unusable (nothing is left out of the keys).
            extra[name] = None
        elif candidate.exists() and not candidate.is_file():
            extra[name] = None
        elif candidate.is_file():
            big = candidate.stat().st_size > MAX_IGNORE_BYTES  # (unusable: its patterns are not all read)
            extra[name] = None if big else candidate.read_text(encoding="utf-8", errors="replace")
    return target.read_text(encoding="utf-8", errors="replace"), tree, extra


def resolve_oci(spec: ImageBuildSpec, registry: Registry, timeout: float = 60) -> Resolved:
    """The artifact of spec.source.oci pinned to its manifest digest, its Dockerfile and content index,
    within ``timeout`` seconds. ``registry``: a client for the artifact's host (with the push Secret's
    credentials, if any)."""
    oci = spec.source.oci
    assert oci is not None
    ref = ocisource.parse_ref(oci.image)
    where = f"spec.source.oci.image {oci.image}"
    deadline = time.monotonic() + timeout

    def get(path: str, headers: Mapping[str, str], sink: IO[bytes] | None
            ) -> tuple[int, Mapping[str, str], bytes]:
        registry.timeout = min(60.0, _left(deadline))
        try:
            limit = ocisource.MAX_LAYER_BYTES if sink is not None else MAX_MANIFEST_BYTES
            return registry.get(path, headers, limit=limit, sink=sink)
        except RegistryError as e:
            raise ocisource.ArtifactError(str(e)) from None

    with tempfile.TemporaryDirectory(prefix="stagefleet-source-") as tmp:
        layer = Path(tmp) / "layer"
        try:
            digest = ocisource.fetch(ref, get, layer)
            contents = ocisource.read(layer, spec.source.context_dir, spec.dockerfile)
        except SourceTimeout:
            raise SourceTimeout(
                f"{where}: no answer within {timeout:.3g}s; is the registry reachable?"
            ) from None
        except ocisource.ArtifactError as e:
            if time.monotonic() >= deadline - 0.05:  # the last request ran out of the time there was
                raise SourceTimeout(
                    f"{where}: no answer within {timeout:.3g}s ({e}); is the registry reachable?"
                ) from None
            raise SourceError(f"{where}: {e}") from None
    path = "/".join(p for p in (spec.source.context_dir, spec.dockerfile) if p).lstrip("/")
    return Resolved(
        dockerfile=contents.dockerfile,
        filename=path,
        index=ContextIndex(contents.entries).without(contents.ignore),
        oci_ref=ref.pinned(digest),
        status={"oci": {"image": oci.image, "digest": digest, "dockerfile": path}},
    )


def resolve(
    spec: ImageBuildSpec,
    *,
    auth: GitAuth | None = None,
    ssh_key: bytes | None = None,
    registry: Registry | None = None,
    timeout: float = 60,
) -> Resolved:
    """Dockerfile text and the pinned revision for ``spec``, all git commands within ``timeout`` seconds;
    raises SourceError with a precise message (SourceTimeout naming spec.source.git.url when the time is
    up). ``ssh_key`` alone is ``GitAuth(ssh_key=...)``; ``registry`` reads an OCI source (`resolve_oci`)."""
    if spec.source.inline is not None:
        return Resolved(dockerfile=spec.source.inline, filename="Dockerfile", status={"inline": True})
    if spec.source.oci is not None:
        assert registry is not None, "an OCI source needs a registry client"
        return resolve_oci(spec, registry, timeout)
    git = spec.source.git
    assert git is not None
    if auth is None:
        auth = GitAuth(ssh_key=ssh_key, insecure_ignore_host_key=git.insecure_ignore_host_key)
    deadline = time.monotonic() + timeout
    path = "/".join(p for p in (spec.source.context_dir, spec.dockerfile) if p).lstrip("/")
    own = PurePosixPath(spec.dockerfile).as_posix()
    in_repo = {c: "/".join(p for p in (spec.source.context_dir.strip("/"), c) if p)
               for c in ignorefile.candidates(own)}
    with tempfile.TemporaryDirectory(prefix="stagefleet-source-") as tmp:
        home = Path(tmp)
        env = _env(auth, home)
        try:
            commit = pin_revision(git.url, git.revision, env, timeout=_left(deadline))
            text, tree, found = fetch_file(git.url, commit, path, env, home, timeout=_left(deadline),
                                           also=list(in_repo.values()))
        except SourceTimeout as e:
            raise SourceTimeout(
                f"spec.source.git.url {redact(git.url)}: no answer within {timeout:.0f}s "
                f"({e}); is the host reachable and serving git?"
            ) from None
    return Resolved(
        dockerfile=text,
        filename=path,
        git_url=git.url,
        git_commit=commit,
        tree=tree,
        ignore=ignorefile.from_files({c: found[r] for c, r in in_repo.items() if r in found}, own),
        status={
            "git": {"url": redact(git.url), "revision": git.revision, "commit": commit, "dockerfile": path}
        },
    )


def current_commit(spec: ImageBuildSpec, *, auth: GitAuth, timeout: float = 60) -> str:
    """The commit spec.source.git.revision names now (``git ls-remote``, nothing fetched): what a poll
    compares with the run's pinned commit (`polling`)."""
    git = spec.source.git
    assert git is not None
    with tempfile.TemporaryDirectory(prefix="stagefleet-poll-") as tmp:
        env = _env(auth, Path(tmp))
        try:
            return pin_revision(git.url, git.revision, env, timeout=timeout)
        except SourceTimeout as e:
            raise SourceTimeout(
                f"spec.source.git.url {redact(git.url)}: no answer within {timeout:.0f}s ({e})"
            ) from None
