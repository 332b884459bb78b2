"""The content of a local build context directory as a `stagekey.ContextIndex`, for local mode's stage keys.

A git context's index comes from its tree (`stagekey.index_git_tree`); a directory has no such list, so it
is walked: every entry below the root by its relative posix path, never following a symbolic link (a link
is an entry of its own, its id the hash of its target text: a link out of the context is never read).
Ids carry the full mode, not git's two file modes, as ``COPY`` keeps permission bits: a regular file is
``<mode> sha256:<hex of its content>`` (``100644 sha256:…``), a link ``120000 sha256:<hex of its target>``,
a directory ``<mode> dir`` (``COPY`` creates empty ones and keeps their modes), anything else ``<mode>
special``.

What the context's ignore file leaves out (`ignorefile`, as buildah reads it) is not in the index: a
change there changes no key, and an ignored directory is not walked. Walking costs one ``lstat`` per
entry; a file's content is hashed only when a key selects it (most stages copy a few paths, and a
context may hold gigabytes they never read). A file that cannot be read then raises `OSError`, from
inside `stagekey.stage_keys`: the caller keys nothing rather than key what it cannot see.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from stagefleet import ignorefile
from stagefleet.ignorefile import Ignore
from stagefleet.stagekey import IGNORE_FILES, ContextIndex

__all__ = ["ignore_rules", "index_directory"]

_CHUNK = 1 << 20
_LINK_MODE = "120000"  # what `ContextIndex` recognises links by


def index_directory(root: Path, ignore: Ignore | None = None) -> ContextIndex:
    """The index of the directory ``root`` (walked now, hashed lazily), without what ``ignore`` leaves out
    of the context (`ignore_rules`; the ignore files themselves always stay: they are part of every key).
    Raises `OSError` when a directory cannot be listed: what it holds is unknown, so no key could be
    trusted."""
    return ContextIndex(_Entries(root, dict(_walk(root, ignore))))


def ignore_rules(root: Path, dockerfile: Path | None) -> Ignore | None:
    """The ignore rules the builder applies to the context ``root`` (`ignorefile.from_files`): the
    Dockerfile's own ignore file next to it wins (None: the Dockerfile is not in the context, so only the
    root's count)."""
    relative = None
    if dockerfile is not None:
        try:
            relative = dockerfile.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            relative = None

    found: dict[str, str | None] = {}
    for path in ignorefile.candidates(relative):
        target = root / path
        if target.is_symlink():
            found[path] = None
        elif target.exists():
            found[path] = target.read_text(errors="replace") if target.is_file() else None
    return ignorefile.from_files(found, relative)


def _walk(root: Path, ignore: Ignore | None) -> Iterator[tuple[str, int]]:
    """(relative posix path, lstat mode) of every entry below ``root`` that ``ignore`` keeps, depth first.
    An ignored directory is not entered unless an exception might bring something under it back."""
    descend_ignored = ignore is not None and ignore.has_exceptions
    pending = [("", str(root))]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                path = prefix + entry.name
                kept = ignore is None or entry.name.endswith(IGNORE_FILES) or not ignore.excluded(path)
                left_out = not kept
                if not left_out:
                    yield path, mode
                if stat.S_ISDIR(mode) and (not left_out or descend_ignored):
                    pending.append((path + "/", entry.path))


class _Entries(Mapping[str, str]):
    """path → content id, computed (and kept) when first asked for."""

    def __init__(self, root: Path, modes: dict[str, int]) -> None:
        self._root = root
        self._modes = modes
        self._ids: dict[str, str] = {}

    def __getitem__(self, path: str) -> str:
        known = self._ids.get(path)
        if known is None:
            known = self._ids[path] = content_id(self._root / path, self._modes[path])
        return known

    def __iter__(self) -> Iterator[str]:
        return iter(self._modes)

    def __len__(self) -> int:
        return len(self._modes)

    def __contains__(self, path: object) -> bool:
        return path in self._modes


def content_id(path: Path, mode: int) -> str:
    """The id of one entry whose ``lstat`` mode is ``mode`` (see the module's docstring)."""
    if stat.S_ISLNK(mode):
        target = os.fsencode(os.readlink(path))
        return f"{_LINK_MODE} sha256:{hashlib.sha256(target).hexdigest()}"
    bits = f"{stat.S_IFMT(mode) | stat.S_IMODE(mode):06o}"
    if stat.S_ISREG(mode):
        return f"{bits} sha256:{_file_sha256(path)}"
    if stat.S_ISDIR(mode):
        return f"{bits} dir"
    return f"{bits} special"


def _file_sha256(path: Path) -> str:
    """The content's hash; a link put in the file's place since the walk is not followed (ELOOP)."""
    h = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
