"""Pure: a context's `.dockerignore` / `.containerignore`, matched as the builder matches it (moby's
patternmatcher, which containers/storage's fileutils copies): so local mode's stage keys leave out what
the builder never sees, and its index does not walk or hash an ignored `node_modules`.

The rules, as in patternmatcher: one pattern a line; blank lines and lines starting with ``#`` are skipped;
surrounding spaces are trimmed; a leading ``!`` makes an exception; each pattern is cleaned like Go's
``filepath.Clean`` and loses a leading ``/``. ``*`` matches within one path component, ``?`` one character
of it, ``**`` any number of components; a path is excluded when the last pattern that matches it or one of
its parent directories is not an exception.

Ignoring too little only costs a rebuild; ignoring what the builder copies would reuse a stale result. So
what this module cannot match exactly as the builder does is not matched at all (`parse` returns None):
a character class or an escape in a pattern.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The ignore files buildah (1.28) reads at the context's root, the first one found winning, unless the
#: Dockerfile has its own (``<Dockerfile>.dockerignore``, next to it). Verified with the real buildah:
#: tests/worker/test_ignorefile_buildah.py.
ROOT_FILES = (".containerignore", ".dockerignore")
SPECIFIC_SUFFIX = ".dockerignore"


@dataclass(frozen=True)
class Pattern:
    text: str
    exception: bool
    regex: re.Pattern[str]


@dataclass(frozen=True)
class Ignore:
    """The parsed patterns of one ignore file."""

    patterns: tuple[Pattern, ...]

    @property
    def has_exceptions(self) -> bool:
        return any(p.exception for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """Whether the builder leaves ``path`` (posix, relative to the context root) out of the context."""
        parents = _parents(path)
        matched = False
        for p in self.patterns:
            if p.regex.fullmatch(path) or any(p.regex.fullmatch(d) for d in parents):
                matched = not p.exception
        return matched


def parse(text: str) -> Ignore | None:
    """The patterns of an ignore file's text; None when one of them is beyond what this module matches
    exactly (see the module's docstring)."""
    patterns: list[Pattern] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
            if not line:
                continue
        if "[" in line or "\\" in line:
            return None
        cleaned = posixpath.normpath(line).lstrip("/") or "."
        if cleaned == ".":
            continue  # (patternmatcher drops it too)
        patterns.append(Pattern(cleaned, exception, re.compile(_regex(cleaned))))
    return Ignore(tuple(patterns))


def _regex(pattern: str) -> str:
    """patternmatcher's regular expression for a cleaned pattern."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                out.append(".*" if i + 1 >= n else "(.*/)?")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _parents(path: str) -> list[str]:
    """``a/b/c`` → ``["a", "a/b"]``."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def rules(specific: str | None, root: Sequence[str | None]) -> Ignore | None:
    """The ignore rules buildah applies: the Dockerfile's own ``<Dockerfile>.dockerignore`` (``specific``,
    its text or None when absent) wins; else the first of the context root's `ROOT_FILES` present
    (``root``: their texts in that order, None for an absent one). None: nothing is ignored, or the
    winning file cannot be matched exactly (then nothing is left out of the keys)."""
    if specific is not None:
        return parse(specific)
    for text in root:
        if text is not None:
            return parse(text)
    return None


def own_files(dockerfile: str) -> tuple[str, str]:
    """The Dockerfile's own two ignore files, beside it (``dockerfile``: its path or name)."""
    return f"{dockerfile}{SPECIFIC_SUFFIX}", f"{dockerfile}.containerignore"


def candidates(dockerfile: str | None) -> tuple[str, ...]:
    """The ignore files that may apply, relative to the context: the Dockerfile's own two (``dockerfile``
    relative to the context; None: it is not in the context, so it has none), then `ROOT_FILES`."""
    return (*(own_files(dockerfile) if dockerfile else ()), *ROOT_FILES)


def from_files(found: Mapping[str, str | None], dockerfile: str | None) -> Ignore | None:
    """The rules for a context whose ignore files are ``found``: a path of `candidates` → its text, or None
    for one that is there but not as a plain file the builder would read the same way (a link, too big);
    an absent file has no key. None — nothing left out — when such an unusable file or the Dockerfile's own
    ``.containerignore`` (not verified against buildah) is there."""
    paths = candidates(dockerfile)
    if any(p in found and found[p] is None for p in paths):
        return None
    if dockerfile and paths[1] in found:
        return None
    specific = found.get(paths[0]) if dockerfile else None
    return rules(specific, [found.get(name) for name in ROOT_FILES])
