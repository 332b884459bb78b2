"""Pure: paths a user gives (spec.dockerfile, spec.source.contextDir) must stay inside the source.

Checked twice: lexically when the spec is parsed (no absolute path, no ``..`` segment, no NUL), and on
disk after the checkout, following symlinks (a repository may hold ``Dockerfile -> /etc/passwd`` or
``app -> ../..``). Messages name the path and the field, never the content of what a path points to.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

# The CRD's pattern for spec.dockerfile: relative, segments separated by single slashes, none of them "..".
# (RE2 has no lookahead: a segment is one not starting with a dot, ".", ".x…" or "..x…".)
_SEGMENT = r"([^/.][^/]*|\.|\.[^/.][^/]*|\.\.[^/]+)"
DOCKERFILE_PATTERN = rf"^{_SEGMENT}(/{_SEGMENT})*$"


class OutsideError(ValueError):
    """A path leaves the source directory (after normalisation, or through a symlink)."""


def lexical_problem(path: str) -> str | None:
    """Why ``path`` cannot name something inside a directory (None: it can)."""
    if "\0" in path:
        return "must not contain a NUL character"
    if path.startswith("/"):
        return "must be a relative path inside the source (no leading /)"
    if ".." in PurePosixPath(path).parts:
        return "must stay inside the source (no .. segment)"
    return None


def normalise(path: str) -> str:
    """``./a//b/`` → ``a/b`` (call after `lexical_problem` said None)."""
    return "/".join(p for p in PurePosixPath(path).parts if p not in ("", "."))


def inside(root: Path, rel: str, what: str) -> Path:
    """``root/rel`` with every symlink resolved, which must still be below ``root`` (resolved too).

    Raises `OutsideError` naming ``what`` (e.g. "spec.dockerfile 'Dockerfile'"); the target of a symlink
    that leaves ``root`` is not named either (it may itself be a secret path).
    """
    problem = lexical_problem(rel)
    if problem:
        raise OutsideError(f"{what}: {problem}")
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(base / normalise(rel))) if normalise(rel) else base
    if target != base and base not in target.parents:
        raise OutsideError(f"{what}: leaves the source through a symlink (only paths inside it are read)")
    return target
