"""Content keys of stage results: a stage whose inputs did not change is not built again.

A stage's key is a hash of exactly what determines its result, as BuildKit's cache keys are, but per
stage: the digest of its base image, its instructions and the values of the build arguments it
declares, the target platform, the ids (never the values) of the secrets and SSH agents it mounts, the
content of every context path it reads, the keys of the stages and the digests of the images it
consumes. The worker tags each group's result with its target stage's key in the build's cache
repository (`key_tag`); before it starts a pod, the operator (and local mode) looks the key up and
reuses a result that exists.

A key that changes when the result would not costs a rebuild; the same key for a different result is
a wrong image, so where we cannot tell we take more in (a whole context, say), and a stage with an
input that is not reproducible (ADD of a URL without --checksum, of a git repository) has no key.
As in BuildKit, what a RUN fetches from the network, cache mounts and secret values are not inputs.

Pure: no I/O.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import posixpath
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from stagefleet.ignorefile import Ignore
from stagefleet.stages import Stage, StageGraph, context_path

__all__ = [
    "KEY_RE",
    "KEY_SCHEMA",
    "KEY_TAG_PREFIX",
    "ContextIndex",
    "KeyResult",
    "index_git_tree",
    "key_tag",
    "stage_keys",
    "worker_args",
]

KEY_TAG_PREFIX = "stage-"
KEY_RE = re.compile(r"^[0-9a-f]{64}$")
KEY_SCHEMA = 1  # in every keyed document: a change of what goes into keys must not reuse old results


def key_tag(key: str) -> str:
    """The tag a stage result is stored under in the cache repository: ``stage-<key>`` (70 characters,
    within the registry's 128). Stage tags of a running build (``stages:<name>-<uid>-...``) live in
    another repository and are removed when the build ends; key tags stay, as the cache does."""
    if not KEY_RE.match(key):
        raise ValueError(f"not a stage key (64 hex digits): {key!r}")
    return KEY_TAG_PREFIX + key


def worker_args(key: str, pins: Mapping[str, str]) -> list[str]:
    """The worker flags of a keyed group (operator pods and local mode alike): ``--stage-key`` to store its
    result under the key, and ``--pin-image`` for every image the key was computed from (image → digest),
    so the worker builds from exactly those; an image the Dockerfile names by digest pins itself."""
    args = ["--stage-key", key]
    for image, digest in sorted(pins.items()):
        if "@" not in image:
            args += ["--pin-image", f"{image}={image}@{digest}"]
    return args


# --------------------------------------------------------------------------------------------------
# the build context


_SYMLINK_MODE = "120000"
IGNORE_FILES = (".dockerignore", ".containerignore")
_GLOB_CHARS = frozenset("*?[\\")


@dataclass(frozen=True)
class ContextIndex:
    """The content of a build context: path (posix, relative to the context root) → content id.

    A content id starts with the git file mode: ``100644 <blob>`` from git, ``100755 sha256:<hex>`` for
    a local file; ``120000 …`` marks a symbolic link (its id is that of the link text), ``160000
    <commit>`` a submodule. Directories need no entry, except empty ones in a local context (COPY
    copies them). Only the ids are compared, never read. ``entries`` must not change afterwards
    (digests are remembered).
    """

    entries: Mapping[str, str]

    def without(self, ignore: Ignore | None) -> ContextIndex:
        """This index less what ``ignore`` leaves out of the context (`ignorefile`, as the builder reads
        the context's ignore file); the ignore files stay (they are in every key). For an index whose ids
        are at hand (a git tree's, an artifact's): every entry is read."""
        if ignore is None:
            return self
        kept = {p: cid for p, cid in self.entries.items()
                if posixpath.basename(p).endswith(IGNORE_FILES) or not ignore.excluded(p)}
        return ContextIndex(kept)

    def digest(self, patterns: Sequence[str]) -> str:
        """sha256 (hex) of the (path, id) pairs a COPY of ``patterns`` can read.

        Patterns are relative to the context root (cleaned as `stages.context_path` does, as
        `StageInputs.context_paths` are): a path is selected if it is the pattern,
        lies under it, or its leading components match the pattern's (Go filepath.Match per component;
        ``**`` selects everything under what comes before it). Over-selection is harmless, so a
        malformed glob matches anything, and a pattern that passes through a symbolic link (which the
        builder follows to a target we do not see) selects the whole context. The ignore files
        (``.dockerignore``, ``.containerignore``, ``<Dockerfile>.dockerignore``, anywhere) are always
        selected: a change in them can change what is copied.
        """
        wanted = tuple(sorted(set(patterns)))
        known = self._digests.get(wanted)
        if known is None:
            known = self._digests[wanted] = self._digest(wanted)
        return known

    def _digest(self, patterns: Sequence[str]) -> str:
        selected: set[str] = set(self._ignore_files)
        for pattern in patterns:
            paths, everything = self._select(pattern)
            if everything:
                selected = set(self.entries)
                break
            selected.update(paths)
        h = hashlib.sha256()
        for path in sorted(selected):
            h.update(f"{path}\0{self.entries[path]}\0".encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    @functools.cached_property
    def _digests(self) -> dict[tuple[str, ...], str]:
        """Stages often read the same paths (all of the context, say): each set is hashed once."""
        return {}

    @functools.cached_property
    def _paths(self) -> list[str]:
        return sorted(self.entries)

    @functools.cached_property
    def _ignore_files(self) -> list[str]:
        return [p for p in self.entries if posixpath.basename(p).endswith(IGNORE_FILES)]

    def _is_link(self, path: str) -> bool:
        return self.entries.get(path, "").startswith(_SYMLINK_MODE + " ")

    def _below(self, directory: str) -> list[str]:
        """The paths under ``directory`` ("" is the root), by bisection in the sorted paths."""
        if not directory:
            return self._paths
        lo = bisect.bisect_left(self._paths, directory + "/")
        hi = bisect.bisect_left(self._paths, directory + "0")  # "0" follows "/"
        return self._paths[lo:hi]

    def _select(self, pattern: str) -> tuple[list[str], bool]:
        """The paths ``pattern`` selects, and whether it needs the whole context (a symbolic link)."""
        pattern = context_path(pattern)
        parts = [] if pattern == "." else pattern.split("/")
        for i, part in enumerate(parts):
            if "**" in part:
                parts = parts[:i]
                break
        fixed = 0
        while fixed < len(parts) and not _GLOB_CHARS & set(parts[fixed]):
            fixed += 1
        for i in range(1, fixed + 1):
            if self._is_link("/".join(parts[:i])):
                return [], True
        head = "/".join(parts[:fixed])
        out = [head] if fixed == len(parts) and head in self.entries else []
        for path in self._below(head):
            names = path.split("/")
            depth = min(len(names), len(parts))
            if not all(_component_match(parts[i], names[i]) for i in range(fixed, depth)):
                continue
            if len(names) >= len(parts):
                out.append(path)
            if len(names) <= len(parts) and self._is_link(path):
                return [], True
        return out, False


def _component_match(pattern: str, name: str) -> bool:
    matcher = _component_regex(pattern)
    return matcher is None or matcher.fullmatch(name) is not None


@functools.lru_cache(maxsize=4096)
def _component_regex(pattern: str) -> re.Pattern[str] | None:
    """Go's filepath.Match for one path component as a regex; None for a malformed pattern."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\":
            if i + 1 >= n:
                return None
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = _char_class(pattern, i + 1, out)
            if end is None:
                return None
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _char_class(pattern: str, i: int, out: list[str]) -> int | None:
    """A ``[...]`` class starting after its ``[``: appended to ``out``, returns the index of its ``]``."""
    n = len(pattern)
    negate = i < n and pattern[i] == "^"
    i += negate
    items: list[str] = []
    while True:
        if i >= n:
            return None
        if pattern[i] == "]" and items:
            break
        lo, i = _class_char(pattern, i)
        if lo is None:
            return None
        hi = lo
        if i < n and pattern[i] == "-":
            end, i = _class_char(pattern, i + 1)
            if end is None or end < lo:
                return None
            hi = end
        items.append(re.escape(lo) if hi == lo else f"{re.escape(lo)}-{re.escape(hi)}")
    out.append("[" + ("^" if negate else "") + "".join(items) + "]")
    return i


def _class_char(pattern: str, i: int) -> tuple[str | None, int]:
    """Go's getEsc: one (maybe escaped) character of a class; ``-`` and ``]`` must be escaped."""
    if i >= len(pattern) or pattern[i] in "-]":
        return None, i
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            return None, i
    return pattern[i], i + 1


def index_git_tree(
    ls_tree_z: str, context_dir: str | None = None, *, head: str | None = None
) -> ContextIndex:
    """The context of a git checkout, from ``git ls-tree -r -z --full-tree <commit>``.

    Entries are ``<mode> SP <type> SP <object> TAB <path> NUL``; those under ``context_dir`` are kept,
    relative to it, with ``<mode> <object>`` as their id (a submodule keeps its commit). ``head``, the
    commit checked out: the worker's clone keeps its ``.git`` directory in the context when the context
    is the repository's root, so it is an entry (``.git`` → ``commit <head>``), selected by a COPY of
    ``.`` (a ``RUN git describe`` after it sees the commit, not just the tree). Pass None only when
    the context holds no ``.git`` (or the caller keys it otherwise).
    """
    prefix = _context_prefix(context_dir)
    entries: dict[str, str] = {}
    for record in ls_tree_z.split("\0"):
        if not record:
            continue
        meta, tab, path = record.partition("\t")
        fields = meta.split(" ")
        if not tab or len(fields) != 3:
            raise ValueError(f"not a git ls-tree -z entry: {record[:200]!r}")
        mode, _, obj = fields
        if prefix and not path.startswith(prefix):
            continue
        entries[path[len(prefix):]] = f"{mode} {obj}"
    if head is not None and not prefix:
        entries[".git"] = f"commit {head}"
    return ContextIndex(entries)


def _context_prefix(context_dir: str | None) -> str:
    parts = [p for p in (context_dir or "").split("/") if p not in ("", ".")]
    return "/".join(parts) + "/" if parts else ""


# --------------------------------------------------------------------------------------------------
# keys


@dataclass(frozen=True)
class KeyResult:
    """A stage's key (64 hex digits), or why it has none (one line, for the build's status)."""

    key: str | None
    reason: str | None


_PINNED = re.compile(r"@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})$")


def stage_keys(
    graph: StageGraph,
    *,
    platform: str,
    base_digests: Mapping[str, str],
    context: ContextIndex | None,
    onbuild_bases: Collection[str] = (),
) -> dict[str, KeyResult]:
    """The key of every built stage, in file order.

    ``platform``: the build's target platform (``linux/amd64``; the workers' own when the build names
    none), as given to `parse_stage_graph`. ``base_digests``: image
    reference → digest (``sha256:…`` of the manifest or of the index: the platform is in the key), for
    every `Stage.base` (the FROM image after ARG expansion, as written: ``alpine`` and
    ``docker.io/library/alpine:latest`` are different references) and every `Stage.images` entry (COPY
    --from / RUN --mount from= as written). ``scratch`` needs none, nor does a reference pinned by
    ``@sha256:…``. A stage whose base or image has no digest is not keyed. ``onbuild_bases``: base
    images whose configuration has ONBUILD triggers; those run in the stage and may read the context,
    which we cannot see, so the stages FROM them are not keyed. ``context``: None for no context (an
    inline Dockerfile alone).
    """
    index = context if context is not None else ContextIndex({})
    results: dict[str, KeyResult] = {}
    causes: dict[str, str] = {}  # unkeyed stage → the first reason in its chain
    for stage in graph.built:  # file order: a built stage only uses earlier ones
        problem, cause = _unkeyed(stage, results, causes, base_digests, onbuild_bases)
        if problem is not None:
            results[stage.name] = KeyResult(None, problem)
            causes[stage.name] = cause or problem
            continue
        document = _document(stage, results, platform, base_digests, index)
        results[stage.name] = KeyResult(_hash(document), None)
    return results


def _unkeyed(
    stage: Stage,
    results: Mapping[str, KeyResult],
    causes: Mapping[str, str],
    base_digests: Mapping[str, str],
    onbuild_bases: Collection[str],
) -> tuple[str | None, str | None]:
    """Why ``stage`` has no key (and the root cause when it is inherited), or (None, None)."""
    if stage.inputs.unkeyable is not None:
        return stage.inputs.unkeyable, None
    if stage.base is not None:
        if _digest(stage.base, base_digests) is None:
            return f"base image {stage.base} not resolved", None
        if stage.base in onbuild_bases:
            return f"base image {stage.base} has ONBUILD triggers (they may read the context)", None
    deps = [stage.base_stage] if stage.base_stage is not None else []
    for dep in [*deps, *stage.depends_on]:
        result = results.get(dep)
        if result is None:
            return f"depends on stage '{dep}', which is not built before it", None
        if result.key is None:
            return f"depends on stage '{dep}', which is not keyed: {causes[dep]}", causes[dep]
    for image in stage.images:
        if _digest(image, base_digests) is None:
            return f"image {image} not resolved", None
    return None, None


def _digest(reference: str, base_digests: Mapping[str, str]) -> str | None:
    if reference == "scratch":
        return ""
    found = base_digests.get(reference)
    if found is None:
        pinned = _PINNED.search(reference)
        found = pinned.group(1) if pinned else None
    return found


def _document(
    stage: Stage,
    results: Mapping[str, KeyResult],
    platform: str,
    base_digests: Mapping[str, str],
    index: ContextIndex,
) -> dict[str, object]:
    """Everything the stage's result is made of, as JSON."""
    inputs = stage.inputs
    if stage.base_stage is not None:
        base: dict[str, str | None] = {"stage": results[stage.base_stage].key}
    else:
        base = {"image": stage.base, "digest": _digest(stage.base or "scratch", base_digests)}
    return {
        "v": KEY_SCHEMA,
        "platform": platform,
        "stage_platform": stage.platform,
        "directives": _pairs(inputs.directives),
        "base": base,
        "instructions": list(inputs.instructions),
        "args": _pairs(inputs.args),
        "secrets": sorted({s.id for s in stage.secrets}),
        "ssh": sorted(set(stage.ssh)),
        "context": index.digest(inputs.context_paths) if inputs.context_paths else None,
        "stages": _pairs((dep, results[dep].key or "") for dep in stage.depends_on),
        "images": _pairs((image, _digest(image, base_digests) or "") for image in stage.images),
    }


def _pairs(items: Iterable[tuple[str, str]]) -> list[list[str]]:
    return [list(pair) for pair in sorted(items)]


def _hash(document: Mapping[str, object]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
