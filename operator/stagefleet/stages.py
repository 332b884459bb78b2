"""Dockerfile text → stage graph, following BuildKit's dockerfile2llb.

Pure: no I/O. The lines of the file are split into instructions by BuildKit's own Go parser (the
`dockerfile` package); everything BuildKit decides after that (stage names, what `FROM x` and
`COPY --from=x` refer to, reachability from the target, cycles) is re-implemented here, because the
operator must know the graph *before* any builder runs.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import functools
import platform as _platform
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import dockerfile

__all__ = [
    "DockerfileError",
    "SecretUse",
    "Stage",
    "StageGraph",
    "StageInputs",
    "context_path",
    "parse_stage_graph",
    "suggest",
    "validate_image_reference",
    "expand_word",
]

Expander = Callable[[str], str]


class DockerfileError(ValueError):
    """A user error in a Dockerfile; ``str(e)`` is ``"Dockerfile:3: message"``."""

    def __init__(self, filename: str, line: int | None, message: str) -> None:
        self.filename = filename
        self.line = line
        self.message = message
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class SecretUse:
    id: str
    target: str
    required: bool


@dataclass(frozen=True)
class StageInputs:
    """What a stage's result is made of, besides the images and stages it consumes: the input of its
    content key (`stagekey.stage_keys`), so that a stage whose inputs did not change is not built again.

    ``instructions``: every instruction from FROM on, continuation lines joined, heredoc bodies included.
    ``args``: the (name, value) of every ARG the stage declares (and its base's ONBUILD triggers), and
    of the global ARGs its FROM line expands, sorted; a value only known when building (it depends on
    the base image's environment) is the word as written. ``context_paths``: what the stage reads from
    the build context (COPY/ADD sources, RUN --mount=type=bind sources), cleaned, relative to the
    context root, maybe globs; ``.`` for all of it, also when a source depends on a variable we cannot
    know before the build. ``unkeyable``: why the result cannot be keyed at all (a non-reproducible
    input), as ``Dockerfile:7: message``. ``directives``: the parser directives (escape, syntax) that
    change what the text means.
    """

    instructions: tuple[str, ...] = ()
    args: tuple[tuple[str, str], ...] = ()
    context_paths: tuple[str, ...] = ()
    unkeyable: str | None = None
    directives: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    index: int
    named: bool
    base: str | None
    base_stage: str | None
    depends_on: tuple[str, ...]
    images: tuple[str, ...]
    secrets: tuple[SecretUse, ...]
    ssh: tuple[str, ...]
    cache_ids: tuple[str, ...]
    platform: str | None
    lines: tuple[int, int]
    instructions: int
    inputs: StageInputs = field(default_factory=StageInputs)
    #: (stage, line) per stage depended on: where this stage first needs it (its FROM line for a base stage
    #: and for what the base's ONBUILD triggers use), by line
    dep_lines: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class StageGraph:
    filename: str
    target: str
    stages: tuple[Stage, ...]
    built: tuple[Stage, ...]
    skipped: tuple[str, ...]


# --------------------------------------------------------------------------------------------------
# internal model


class _Error(Exception):
    """A Dockerfile error before the file name is known; turned into DockerfileError at the top."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class _Ref:
    """A reference from an instruction to a stage or image (COPY --from, RUN --mount from=)."""

    value: str
    line: int
    kind: str  # "copy" or "mount"
    mount_target: str = ""


@dataclass(frozen=True)
class _Arg:
    """An ARG with a value: a build arg or a global value (used as is), or its default (expanded)."""

    name: str
    value: str
    default: bool


@dataclass(frozen=True)
class _Env:
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Source:
    """A word naming something in the build context (COPY/ADD source, bind mount source), as written."""

    word: str
    line: int
    instruction: str  # "COPY", "ADD" or "RUN --mount"
    checksum: bool = False


_Event = _Arg | _Env | _Source


@dataclass
class _Stage:
    """A stage while it is being resolved."""

    index: int
    raw_base: str
    name: str
    named: bool
    raw_platform: str | None
    first_line: int
    last_line: int
    instructions: int = 1
    refs: list[_Ref] = field(default_factory=list)
    onbuild_refs: list[_Ref] = field(default_factory=list)
    secrets: list[SecretUse] = field(default_factory=list)
    onbuild_secrets: list[SecretUse] = field(default_factory=list)
    ssh: list[str] = field(default_factory=list)
    onbuild_ssh: list[str] = field(default_factory=list)
    cache_ids: list[str] = field(default_factory=list)
    onbuild_cache_ids: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    base: str | None = None
    base_stage: int | None = None
    platform: str | None = None
    deps: dict[int, int] = field(default_factory=dict)  # stage index → line of the first reference
    ref_deps: dict[int, int] = field(default_factory=dict)  # the same, from COPY/RUN/ONBUILD only
    images: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)  # the instructions, for the stage's key
    events: list[_Event] = field(default_factory=list)  # ARG/ENV/context reads, in order
    onbuild_events: list[_Event] = field(default_factory=list)  # the same, run in a stage FROM this one
    from_args: set[tuple[str, str]] = field(default_factory=set)  # global ARGs the FROM line expands


_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_DIRECTIVES = frozenset({"syntax", "escape", "check"})
_VAR_IN_FROM = re.compile(r"\$.")
_LINE_IN_GO_ERROR = re.compile(r"line (\d+)")

_INSTRUCTIONS = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})
_FLAGS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "COPY": frozenset({"from", "chown", "chmod", "link", "parents", "exclude"}),
    "ADD": frozenset({"chown", "chmod", "link", "keep-git-dir", "checksum", "unpack", "exclude"}),
    "RUN": frozenset({"mount", "network", "security", "device"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}
_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_MOUNT_KEYS = (
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "mode", "uid", "gid",
    "src", "dst", "destination", "ro", "rw", "readwrite", "env", "size",
)


# --------------------------------------------------------------------------------------------------
# public entry point


def parse_stage_graph(
    text: str,
    *,
    filename: str = "Dockerfile",
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    platform: str | None = None,
    build_platform: str | None = None,
) -> StageGraph:
    """Resolve the stage graph the way BuildKit would before building anything.

    ``platform``/``build_platform`` feed the built-in TARGET*/BUILD* args (default: this host).
    """
    try:
        return _parse(text, target, dict(build_args or {}), platform, build_platform, filename)
    except _Error as e:
        raise DockerfileError(filename, e.line, e.message) from None


def _parse(
    text: str,
    target: str | None,
    build_args: dict[str, str],
    target_platform: str | None,
    build_platform: str | None,
    filename: str,
) -> StageGraph:
    source, escape, directives = _prepare_source(text)
    commands = _go_parse(source)
    meta, raw = _split_stages(commands)
    global_env = _global_args(meta, build_args, escape, target_platform, build_platform)
    lines = source.split("\n")
    stages = [_build_stage(i, cmds, global_env, build_args, escape, lines) for i, cmds in enumerate(raw)]
    _resolve_bases(stages, global_env, escape)
    target_stage = _find_target(stages, target)
    _resolve_refs(stages)
    _check_cycles(stages)
    _check_image_refs(stages)
    reachable = _reachable(stages, target_stage)
    _check_forward_refs(stages, reachable)
    return _freeze(stages, target_stage, reachable, filename, escape, directives)


# --------------------------------------------------------------------------------------------------
# text → commands


def _prepare_source(text: str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """Handle parser directives ourselves: the bundled Go parser predates `# check=`.

    Directives are only valid in the leading run of `# key=value` comment lines. The escape directive
    (if any) is moved to line 1 and the others are blanked to `#`, so line numbers do not move. Also
    returns the directives that change what the instructions mean (escape, syntax), for stage keys.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    seen: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(lines):
        match = _DIRECTIVE.match(line.strip())
        if match is None or match.group(1).lower() not in _DIRECTIVES:
            break
        key = match.group(1).lower()
        if key in seen:
            raise _Error(number + 1, f"only one {key} parser directive can be used")
        seen[key] = (number, match.group(2))
    escape = "\\"
    if "escape" in seen:
        line_no, value = seen["escape"]
        if value not in ("`", "\\"):
            raise _Error(line_no + 1, f"invalid escape token '{value}' does not match ` or \\")
        escape = value
    for number, _ in seen.values():
        lines[number] = "#"
    if seen:
        lines[0] = f"# escape={escape}"
    meaning = tuple(sorted((key, value) for key, (_, value) in seen.items() if key != "check"))
    return "\n".join(lines), escape, meaning


def _go_parse(source: str) -> list[dockerfile.Command]:
    """BuildKit's line parser; its errors become ours, with a line number when it gives one."""
    try:
        return list(dockerfile.parse_string(source))
    except dockerfile.GoParseError as e:
        message = str(e)
        found = _LINE_IN_GO_ERROR.search(message)
        line = int(found.group(1)) if found else _heredoc_line(source, message)
        raise _Error(line, message) from None


def _heredoc_line(source: str, message: str) -> int | None:
    """The Go parser does not say where an unterminated heredoc starts; find the last `<<` line."""
    if "heredoc" not in message:
        return None
    candidates = [i + 1 for i, line in enumerate(source.split("\n")) if "<<" in line]
    return candidates[-1] if candidates else None


def _split_stages(
    commands: Sequence[dockerfile.Command],
) -> tuple[list[dockerfile.Command], list[list[dockerfile.Command]]]:
    """Meta ARGs before the first FROM, then one command list per stage (each starting with FROM)."""
    meta: list[dockerfile.Command] = []
    stages: list[list[dockerfile.Command]] = []
    for cmd in commands:
        name = cmd.cmd.upper()
        if name not in _INSTRUCTIONS:
            hint = suggest(name.lower(), sorted(n.lower() for n in _INSTRUCTIONS))
            raise _Error(cmd.start_line, f"unknown instruction: {name}" + _did_you_mean(hint))
        if name == "FROM":
            stages.append([cmd])
        elif stages:
            stages[-1].append(cmd)
        elif name == "ARG":
            meta.append(cmd)
        else:
            raise _Error(cmd.start_line, "no build stage in current context")
    if not stages:
        line = commands[-1].start_line if commands else None
        raise _Error(line, "no build stage in current context")
    return meta, stages


# --------------------------------------------------------------------------------------------------
# args


def _platform_args(target: str | None, build: str | None) -> dict[str, str]:
    """The built-in BUILD*/TARGET* args BuildKit defines for every FROM line."""
    build = build or _host_platform()
    target = target or build
    out: dict[str, str] = {}
    for prefix, value in (("BUILD", build), ("TARGET", target)):
        parts = value.split("/")
        out[prefix + "PLATFORM"] = value
        out[prefix + "OS"] = parts[0]
        out[prefix + "ARCH"] = parts[1] if len(parts) > 1 else ""
        out[prefix + "VARIANT"] = parts[2] if len(parts) > 2 else ""
    return out


def _host_platform() -> str:
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm/v7", "armv6l": "arm/v6", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}.get(machine, machine)
    return f"linux/{arch}"


def _arg_items(cmd: dockerfile.Command) -> Iterable[tuple[str, str | None]]:
    for item in cmd.value:
        key, eq, default = item.partition("=")
        if not key:
            raise _Error(cmd.start_line, "ARG names can not be blank")
        yield key, (default if eq else None)


def _global_args(
    meta: Sequence[dockerfile.Command],
    build_args: Mapping[str, str],
    escape: str,
    target_platform: str | None,
    build_platform: str | None,
) -> dict[str, str]:
    """Args visible to FROM: built-ins, then ARGs before the first FROM (build args override)."""
    env = _platform_args(target_platform, build_platform)
    for cmd in meta:
        for key, default in _arg_items(cmd):
            if key in build_args:
                env[key] = build_args[key]
            elif default is not None:
                env[key] = _expand(default, env, escape, cmd.start_line)
    return env


def _expand(word: str, env: Mapping[str, str], escape: str, line: int) -> str:
    try:
        return expand_word(word, env, escape)
    except ShellError as e:
        raise _Error(line, str(e)) from None


# --------------------------------------------------------------------------------------------------
# one stage


def _build_stage(
    index: int,
    cmds: Sequence[dockerfile.Command],
    global_env: Mapping[str, str],
    build_args: Mapping[str, str],
    escape: str,
    lines: Sequence[str],
) -> _Stage:
    """Parse FROM and collect what the other instructions of the stage reference."""
    head = cmds[0]
    flags = _parse_flags(head, "FROM")
    base, name = _from_args(head)
    st = _Stage(
        index=index,
        raw_base=base,
        name=name or f"stage-{index}",
        named=bool(name),
        raw_platform=flags.get("platform", [None])[-1],
        first_line=head.start_line,
        last_line=cmds[-1].end_line,
        instructions=len(cmds),
    )
    st.texts = [_instruction_text(cmd, lines) for cmd in cmds]
    for cmd in cmds[1:]:
        _collect(st, cmd, global_env, build_args, escape)
    return st


def _instruction_text(cmd: dockerfile.Command, lines: Sequence[str]) -> str:
    """The instruction as the parser joined it (heredoc bodies included). For ONBUILD the parser drops
    a heredoc body from it, so those keep their lines as written."""
    if cmd.cmd.upper() == "ONBUILD" and cmd.end_line > cmd.start_line:
        return "\n".join(lines[cmd.start_line - 1:cmd.end_line])
    return str(cmd.original)


def _from_args(cmd: dockerfile.Command) -> tuple[str, str]:
    args = list(cmd.value)
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise _Error(
                cmd.start_line,
                f'invalid name for build stage: "{args[2]}", '
                "name can't start with a number or contain symbols",
            )
        return args[0], name
    if len(args) != 1:
        raise _Error(cmd.start_line, "FROM requires either one or three arguments")
    return args[0], ""


def _parse_flags(
    cmd: dockerfile.Command, instruction: str, flags: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """BuildKit's BFlags: `--name[=value]`, names case-sensitive, unknown ones are errors."""
    raws = cmd.flags if flags is None else flags
    if not raws:
        return {}
    allowed = _FLAGS.get(instruction, frozenset())
    out: dict[str, list[str]] = {}
    for raw in raws:
        name, _, value = raw[2:].partition("=")
        if not raw.startswith("--") or name not in allowed:
            raise _Error(cmd.start_line, f"unknown flag: {name or raw}")
        out.setdefault(name, []).append(value)
    return out


def _collect(
    st: _Stage,
    cmd: dockerfile.Command,
    global_env: Mapping[str, str],
    build_args: Mapping[str, str],
    escape: str,
) -> None:
    instruction = cmd.cmd.upper()
    if instruction == "ONBUILD":
        _collect_onbuild(st, cmd, global_env, build_args, escape)
        return
    flags = _parse_flags(cmd, instruction)
    if instruction == "ARG":
        _stage_arg(st, cmd, global_env, build_args, escape)
    elif instruction == "ENV":
        _stage_env(st, cmd, escape)
    elif instruction in ("COPY", "ADD"):
        _check_copy_args(cmd, instruction)
        for value in flags.get("from", []):
            st.refs.append(_copy_ref(value, cmd.start_line))
        st.events.extend(_context_sources(cmd, instruction, flags))
    elif instruction == "RUN":
        for spec in flags.get("mount", []):
            _add_mount(st, spec, cmd.start_line, escape, onbuild=False)


def _check_copy_args(cmd: dockerfile.Command, instruction: str) -> None:
    if len(cmd.value) < 2:
        raise _Error(
            cmd.start_line,
            f"{instruction} requires at least two arguments, but only one was provided. "
            "Destination could not be determined",
        )


def _copy_ref(value: str, line: int) -> _Ref:
    if _VAR_IN_FROM.search(value):
        raise _Error(line, "'from' doesn't support variable expansion, define alias stage instead")
    return _Ref(value=value, line=line, kind="copy")


def _stage_arg(
    st: _Stage,
    cmd: dockerfile.Command,
    global_env: Mapping[str, str],
    build_args: Mapping[str, str],
    escape: str,
) -> None:
    """An ARG inside a stage: build arg, else its default, else the global (or built-in) value."""
    for key, default in _arg_items(cmd):
        if key in build_args:
            st.args[key] = build_args[key]
        elif default is not None:
            st.args[key] = _expand_lenient(default, st, escape)
        elif key in global_env:
            st.args[key] = global_env[key]
    st.events.extend(_arg_events(cmd, global_env, build_args))


def _arg_events(
    cmd: dockerfile.Command, global_env: Mapping[str, str], build_args: Mapping[str, str]
) -> Iterable[_Arg]:
    """The values an ARG instruction gives (none for a name without one), as `_stage_arg` picks them;
    lenient about blank names, which ONBUILD ARG does not check."""
    for item in cmd.value:
        key, eq, default = item.partition("=")
        if not key:
            continue
        if key in build_args:
            yield _Arg(key, build_args[key], default=False)
        elif eq:
            yield _Arg(key, default, default=True)
        elif key in global_env:
            yield _Arg(key, global_env[key], default=False)


def _stage_env(st: _Stage, cmd: dockerfile.Command, escape: str) -> None:
    values = list(cmd.value)
    for i in range(0, len(values) - 1, 2):
        st.env[values[i]] = _expand_lenient(values[i + 1], st, escape)
    st.events.append(_env_event(cmd))


def _env_event(cmd: dockerfile.Command) -> _Env:
    values = list(cmd.value)
    return _Env(tuple((values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)))


_HEREDOC_WORD = re.compile(r"^<<-?\s*[^<]*$")


def _context_sources(
    cmd: dockerfile.Command, instruction: str, flags: Mapping[str, Sequence[str]]
) -> list[_Source]:
    """COPY/ADD sources read from the build context: all of them unless --from; heredocs are inline."""
    if "from" in flags:
        return []
    checksum = any(flags.get("checksum", []))
    return [
        _Source(word, cmd.start_line, instruction, checksum)
        for word in list(cmd.value)[:-1]
        if not (cmd.heredocs and _HEREDOC_WORD.match(word))
    ]


def _expand_in_stage(word: str, st: _Stage, escape: str, line: int) -> str:
    """Expand with the stage's ARG/ENV values; most words need no expansion at all."""
    if not _needs_expansion(word, escape):
        return word
    return _expand(word, _stage_vars(st), escape, line)


def _expand_lenient(word: str, st: _Stage, escape: str) -> str:
    """ARG/ENV values are only needed for mount ids; what we cannot expand, BuildKit judges later."""
    try:
        return _expand_in_stage(word, st, escape, 0)
    except _Error:
        return word


def _stage_vars(st: _Stage) -> dict[str, str]:
    """ENV wins over ARG of the same name, as in Docker."""
    return {**st.args, **st.env}


def _collect_onbuild(
    st: _Stage,
    cmd: dockerfile.Command,
    global_env: Mapping[str, str],
    build_args: Mapping[str, str],
    escape: str,
) -> None:
    """ONBUILD triggers run in the stage built FROM this one; remember their references for it."""
    sub = (cmd.sub_cmd or "").upper()
    if not sub:
        raise _Error(cmd.start_line, "ONBUILD requires at least one argument")
    if sub == "ONBUILD":
        raise _Error(cmd.start_line, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if sub in ("FROM", "MAINTAINER"):
        raise _Error(cmd.start_line, f"{sub} isn't allowed as an ONBUILD trigger")
    if sub not in _INSTRUCTIONS:
        raise _Error(cmd.start_line, f"unknown instruction: {sub}")
    flags = _parse_flags(cmd, sub, _onbuild_flags(cmd.original))
    if sub == "COPY":
        for value in flags.get("from", []):
            st.onbuild_refs.append(_copy_ref(value, cmd.start_line))
    elif sub == "RUN":
        for spec in flags.get("mount", []):
            _add_mount(st, spec, cmd.start_line, escape, onbuild=True)
    if sub in ("COPY", "ADD"):
        st.onbuild_events.extend(_context_sources(cmd, sub, flags))
    elif sub == "ARG":
        st.onbuild_events.extend(_arg_events(cmd, global_env, build_args))
    elif sub == "ENV":
        st.onbuild_events.append(_env_event(cmd))


def _onbuild_flags(original: str) -> list[str]:
    """The Go parser drops the flags of ONBUILD's inner instruction; recover them from the text."""
    words = original.split("\n", 1)[0].split()[2:]
    flags: list[str] = []
    for word in words:
        if not word.startswith("--"):
            break
        flags.append(word.strip("\"'"))
    return flags


# --------------------------------------------------------------------------------------------------
# RUN --mount


@dataclass
class _Mount:
    type: str = "bind"
    from_: str = ""
    source: str = ""
    raw_source: str = ""  # as written: its expansion may depend on the base image's environment
    target: str = ""
    id: str = ""
    required: bool = False


def _add_mount(st: _Stage, spec: str, line: int, escape: str, *, onbuild: bool) -> None:
    mount = _parse_mount(spec, line, lambda w: _expand_in_stage(w, st, escape, line))
    refs, secrets, ssh, caches = (
        (st.onbuild_refs, st.onbuild_secrets, st.onbuild_ssh, st.onbuild_cache_ids)
        if onbuild
        else (st.refs, st.secrets, st.ssh, st.cache_ids)
    )
    if mount.from_ and mount.type != "secret":
        refs.append(_Ref(value=mount.from_, line=line, kind="mount", mount_target=mount.target))
    if mount.type == "bind" and not mount.from_:
        events = st.onbuild_events if onbuild else st.events
        events.append(_Source(mount.raw_source or ".", line, "RUN --mount"))
    if mount.type == "secret":
        secrets.append(_secret_use(mount))
    elif mount.type == "ssh":
        if mount.source:
            raise _Error(line, "ssh does not support source")
        ssh.append(mount.id or "default")
    elif mount.type == "cache":
        caches.append(mount.id or posixpath.normpath(mount.target or "/"))


def _secret_use(mount: _Mount) -> SecretUse:
    """BuildKit's dispatchSecret: id from id=/source=, else the target's basename."""
    secret_id = mount.source or mount.id or posixpath.basename(mount.target)
    target = mount.target or "/run/secrets/" + posixpath.basename(secret_id)
    return SecretUse(id=secret_id, target=target, required=mount.required)


def _parse_mount(spec: str, line: int, expand: Expander) -> _Mount:
    """BuildKit's parseMount: a CSV of key=value fields; `from` is never expanded."""
    try:
        fields = next(csv.reader([spec]), [])
    except csv.Error as e:
        raise _Error(line, f"failed to parse csv mounts: {e}") from None
    mount = _Mount()
    for item in fields:
        _mount_field(mount, item, line, expand)
    if mount.type == "secret":
        _check_secret_mount(mount, line)
    return mount


def _mount_field(mount: _Mount, item: str, line: int, expand: Expander) -> None:
    key, eq, value = item.partition("=")
    key = key.lower()
    if not eq:
        if key in ("readonly", "ro", "readwrite", "rw"):
            return
        if key == "required":
            _set_required(mount, "true", line)
            return
        raise _Error(line, f"invalid field '{item}' must be a key=value pair")
    if key == "from":
        if _VAR_IN_FROM.search(value):
            raise _Error(line, "'from' doesn't support variable expansion, define alias stage instead")
        mount.from_ = value
        return
    if key in ("source", "src"):
        mount.raw_source = value
    value = expand(value)
    if key == "type":
        if value.lower() not in _MOUNT_TYPES:
            hint = suggest(value, list(_MOUNT_TYPES), case_sensitive=True)
            raise _Error(line, f'unsupported mount type "{value}"' + _did_you_mean(hint))
        mount.type = value.lower()
    elif key in ("source", "src"):
        mount.source = value
    elif key in ("target", "dst", "destination"):
        mount.target = value
    elif key == "id":
        mount.id = value
    elif key == "required":
        _set_required(mount, value, line)
    elif key not in _MOUNT_KEYS:
        hint = suggest(key, list(_MOUNT_KEYS), case_sensitive=True)
        raise _Error(line, f"unexpected key '{key}' in '{item}'" + _did_you_mean(hint))


def _set_required(mount: _Mount, value: str, line: int) -> None:
    if mount.type not in ("secret", "ssh"):
        raise _Error(line, f"unexpected key 'required' for mount type '{mount.type}'")
    parsed = _parse_bool(value)
    if parsed is None:
        raise _Error(line, f"invalid value for required: {value}")
    mount.required = parsed


def _parse_bool(value: str) -> bool | None:
    """Go's strconv.ParseBool."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def _check_secret_mount(mount: _Mount, line: int) -> None:
    if mount.from_:
        raise _Error(line, "secret mount should not have a from")
    if not (mount.source or mount.target or mount.id):
        raise _Error(line, "invalid secret mount. one of source, target required")
    if mount.source and mount.id:
        raise _Error(line, "both source and id can't be set")


# --------------------------------------------------------------------------------------------------
# resolution


def _resolve_bases(stages: list[_Stage], global_env: Mapping[str, str], escape: str) -> None:
    """Expand FROM and --platform; FROM names a stage only if a stage AS that name came earlier.

    Stage names are our graph's ids, so a repeated name (BuildKit lets the last one win) is an error.
    """
    by_name: dict[str, _Stage] = {}
    for st in stages:
        base = _expand(st.raw_base, global_env, escape, st.first_line)
        if base == "":
            raise _Error(st.first_line, f"base name ({st.raw_base}) should not be blank")
        if st.raw_platform is not None:
            st.platform = _expand(st.raw_platform, global_env, escape, st.first_line)
            if st.platform == "":
                raise _Error(st.first_line, f"empty platform value from expression {st.raw_platform}")
        st.from_args = _used_args([st.raw_base, st.raw_platform or ""], global_env, escape)
        earlier = by_name.get(base)
        if earlier is not None and earlier.named:
            st.base_stage = earlier.index
            st.deps.setdefault(earlier.index, st.first_line)
        else:
            st.base = base
        if st.name in by_name:
            raise _Error(
                st.first_line,
                f'duplicate stage name "{st.name}", first defined on line {by_name[st.name].first_line}',
            )
        by_name[st.name] = st


def _find_target(stages: Sequence[_Stage], target: str | None) -> _Stage:
    """By name, case-insensitively. Unlike BuildKit, `stage-<index>` also names an unnamed stage:
    plans show unnamed stages that way, and a group ending in one is built with that --target."""
    if not target:
        return stages[-1]
    by_name = {st.name: st for st in stages}
    found = by_name.get(target.lower())
    if found is None:
        hint = suggest(target, [st.name for st in stages if st.named], case_sensitive=False)
        raise _Error(None, f'target stage "{target}" could not be found' + _did_you_mean(hint))
    return found


def _resolve_refs(stages: list[_Stage]) -> None:
    """COPY --from: index, else stage name (any position), else image; mounts by name only.

    ONBUILD references of a base stage become references of the stage built on it.
    """
    named = {st.name: st for st in stages if st.named}
    for st in stages:
        for ref in st.refs:
            _resolve_ref(st, ref, stages, named)
        if st.base_stage is not None:
            parent = stages[st.base_stage]
            for ref in parent.onbuild_refs:
                _resolve_ref(st, ref, stages, named)
            st.secrets.extend(parent.onbuild_secrets)
            st.ssh.extend(parent.onbuild_ssh)
            st.cache_ids.extend(parent.onbuild_cache_ids)


def _resolve_ref(st: _Stage, ref: _Ref, stages: Sequence[_Stage], named: Mapping[str, _Stage]) -> None:
    if ref.kind == "copy" and _is_go_int(ref.value):
        index = int(ref.value)
        if index < 0 or index >= len(stages):
            raise _Error(ref.line, f"invalid stage index {index}")
        st.deps.setdefault(index, ref.line)
        st.ref_deps.setdefault(index, ref.line)
        return
    other = named.get(ref.value.lower())
    if other is not None:
        st.deps.setdefault(other.index, ref.line)
        st.ref_deps.setdefault(other.index, ref.line)
    else:
        st.images.add(ref.value)


def _is_go_int(value: str) -> bool:
    """strconv.Atoi: optional sign, decimal digits."""
    return re.fullmatch(r"[+-]?[0-9]+", value) is not None


def _check_cycles(stages: Sequence[_Stage]) -> None:
    """Depth-first search in file order over COPY/RUN/ONBUILD edges (as BuildKit: FROM edges always
    point back, and a loop closed through FROM is a forward reference, caught for built stages)."""
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done
    for st in stages:
        if st.index not in state:
            _visit(st.index, stages, state)


def _visit(start: int, stages: Sequence[_Stage], state: dict[int, int]) -> None:
    """Iterative DFS, so that 1,000-stage chains do not hit the recursion limit."""
    state[start] = 1
    stack: list[tuple[int, list[int]]] = [(start, sorted(stages[start].ref_deps))]
    while stack:
        node, pending = stack[-1]
        if not pending:
            state[node] = 2
            stack.pop()
            continue
        dep = pending.pop(0)
        if state.get(dep) == 1:
            st = stages[dep]
            line = stages[node].ref_deps[dep]
            raise _Error(line, f"circular dependency detected on stage: {st.name}")
        if dep not in state:
            state[dep] = 1
            stack.append((dep, sorted(stages[dep].ref_deps)))


def _check_image_refs(stages: Sequence[_Stage]) -> None:
    """Every image name must parse as a reference, reachable or not (BuildKit parses them all)."""
    for st in stages:
        if st.base is not None:
            _check_ref(st.base, st.first_line)
        inherited = stages[st.base_stage].onbuild_refs if st.base_stage is not None else []
        for ref in [*st.refs, *inherited]:
            if ref.value in st.images:
                _check_ref(ref.value, ref.line)


def _check_ref(name: str, line: int) -> None:
    problem = validate_image_reference(name)
    if problem:
        raise _Error(line, f'failed to parse stage name "{name}": {problem}')


def _reachable(stages: Sequence[_Stage], target: _Stage) -> set[int]:
    seen = {target.index}
    todo = [target.index]
    while todo:
        for dep in stages[todo.pop()].deps:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _check_forward_refs(stages: Sequence[_Stage], reachable: set[int]) -> None:
    """BuildKit dispatches stages in file order: a built stage can only use earlier ones."""
    named = {s.name: s for s in stages if s.named}
    for st in stages:
        if st.index not in reachable:
            continue
        refs = list(st.refs)
        if st.base_stage is not None:
            refs += stages[st.base_stage].onbuild_refs
        for ref in refs:
            _check_forward_ref(st, ref, stages, named)


def _check_forward_ref(
    st: _Stage, ref: _Ref, stages: Sequence[_Stage], named: Mapping[str, _Stage]
) -> None:
    other = _ref_stage(ref, stages, named)
    if other is None or other.index < st.index:
        return
    if ref.kind == "copy":
        raise _Error(
            ref.line,
            f'cannot copy from stage "{ref.value}", it needs to be defined before current stage "{st.name}"',
        )
    raise _Error(
        ref.line,
        f'cannot mount from stage "{ref.value}" to "{ref.mount_target}", '
        "stage needs to be defined before current command",
    )


def _ref_stage(ref: _Ref, stages: Sequence[_Stage], named: Mapping[str, _Stage]) -> _Stage | None:
    if ref.kind == "copy" and _is_go_int(ref.value):
        return stages[int(ref.value)]
    return named.get(ref.value.lower())


def _used_args(words: Iterable[str], env: Mapping[str, str], escape: str) -> set[tuple[str, str]]:
    """The (name, value) of the variables of ``env`` that expanding ``words`` looks up."""
    seen = _Recorder(env)
    for word in words:
        if _needs_expansion(word, escape):
            with contextlib.suppress(ShellError):
                expand_word(word, seen, escape)
    return {(name, env[name]) for name in seen.names if name in env}


class _Recorder(Mapping[str, str]):
    """A mapping that remembers which names were looked up."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        return self.env[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


def _freeze(
    stages: Sequence[_Stage],
    target: _Stage,
    reachable: set[int],
    filename: str,
    escape: str,
    directives: tuple[tuple[str, str], ...],
) -> StageGraph:
    ends: dict[int, _Vars] = {}
    frozen_stages: list[Stage] = []
    for st in stages:  # a base stage comes before the stages built on it
        inputs, ends[st.index] = _stage_inputs(st, stages, ends, filename, escape, directives)
        frozen_stages.append(_freeze_stage(st, stages, inputs))
    frozen = tuple(frozen_stages)
    built = tuple(s for s in frozen if s.index in reachable)
    skipped = tuple(s.name for s in frozen if s.index not in reachable)
    return StageGraph(filename=filename, target=target.name, stages=frozen, built=built, skipped=skipped)


def _freeze_stage(st: _Stage, stages: Sequence[_Stage], inputs: StageInputs) -> Stage:
    return Stage(
        name=st.name,
        index=st.index,
        named=st.named,
        base=st.base,
        base_stage=stages[st.base_stage].name if st.base_stage is not None else None,
        depends_on=tuple(sorted({stages[i].name for i in st.deps})),
        images=tuple(sorted(st.images)),
        secrets=tuple(_unique(st.secrets)),
        ssh=tuple(sorted(set(st.ssh))),
        cache_ids=tuple(sorted(set(st.cache_ids))),
        platform=st.platform,
        lines=(st.first_line, st.last_line),
        instructions=st.instructions,
        inputs=inputs,
        dep_lines=_dep_lines(st, stages),
    )


def _dep_lines(st: _Stage, stages: Sequence[_Stage]) -> tuple[tuple[str, int], ...]:
    lines = dict(st.deps)
    if st.base_stage is not None and stages[st.base_stage].onbuild_refs:
        named = {s.name: s for s in stages if s.named}
        for ref in stages[st.base_stage].onbuild_refs:  # they run right after FROM
            other = _ref_stage(ref, stages, named)
            if other is not None:
                lines[other.index] = st.first_line
    return tuple(sorted(((stages[i].name, line) for i, line in lines.items()), key=lambda e: (e[1], e[0])))


def _unique(secrets: Iterable[SecretUse]) -> list[SecretUse]:
    return sorted(set(secrets), key=lambda s: (s.id, s.target, s.required))


# --------------------------------------------------------------------------------------------------
# stage inputs: what a stage's result is made of (for its content key)


@dataclass
class _Vars:
    """A stage's variables at one point, as far as the Dockerfile tells.

    The worker's buildah lets ENV (the stage's own and the base image's) win over an ARG of the same
    name, whatever their order; BuildKit lets the later one win. So an ARG value is only sure when no
    ENV can set the name: ``complete`` says that ``env`` holds every name the image's environment may
    set (false for an image we have not seen); a None value is one we cannot know.
    """

    env: dict[str, str | None]
    complete: bool
    args: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def of_image(cls, base: str | None) -> _Vars:
        """buildah gives a scratch stage a PATH; any other image may set anything."""
        return cls({"PATH": None}, complete=True) if base == "scratch" else cls({}, complete=False)

    def value(self, name: str) -> str | None:
        """The value of ``name`` (None: only known when building); KeyError when it is surely unset."""
        if name in self.env:
            value = self.env[name]
            if name in self.args and self.args[name] != value:
                return None  # which one wins depends on the builder
            return value
        if not self.complete:
            return None
        if name in self.args:
            return self.args[name]
        raise KeyError(name)


class _Lookup(Mapping[str, str]):
    """`_Vars` as the environment of `expand_word`: notes the names used and whether one was unknown."""

    def __init__(self, variables: _Vars) -> None:
        self.variables = variables
        self.names: set[str] = set()
        self.unknown = False

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        value = self.variables.value(name)
        if value is None:
            self.unknown = True
            return ""
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _expand_known(word: str, variables: _Vars, escape: str) -> tuple[str | None, set[str]]:
    """``word`` expanded, or None when its value is only known when building; and the names used."""
    if not _needs_expansion(word, escape):
        return word, set()
    lookup = _Lookup(variables)
    try:
        value = expand_word(word, lookup, escape)
    except ShellError:
        return None, lookup.names
    return (None if lookup.unknown else value), lookup.names


def _stage_inputs(
    st: _Stage,
    stages: Sequence[_Stage],
    ends: Mapping[int, _Vars],
    filename: str,
    escape: str,
    directives: tuple[tuple[str, str], ...],
) -> tuple[StageInputs, _Vars]:
    """Replay the stage's ARG/ENV/context reads (after its base stage's ONBUILD triggers, which run
    first); also returns the variables at its end (the ENV part is what a stage FROM it starts with)."""
    if st.base_stage is not None:
        parent = stages[st.base_stage]
        variables = _Vars(dict(ends[parent.index].env), ends[parent.index].complete)
        events = [*((e, parent.name) for e in parent.onbuild_events), *((e, "") for e in st.events)]
    else:
        variables = _Vars.of_image(st.base)
        events = [(e, "") for e in st.events]
    args = set(st.from_args)
    paths: set[str] = set()
    problems: list[tuple[int, str]] = []
    for event, trigger_of in events:
        if isinstance(event, _Arg):
            value = _expand_known(event.value, variables, escape)[0] if event.default else event.value
            variables.args[event.name] = value
            args.add((event.name, event.value if value is None else value))
        elif isinstance(event, _Env):
            _replay_env(event, variables, escape)
        else:
            problem = _read_context(event, variables, escape, paths)
            if problem:
                where = f" (an ONBUILD trigger of stage '{trigger_of}')" if trigger_of else ""
                problems.append((event.line, f"{filename}:{event.line}: {problem}{where}"))
    inputs = StageInputs(
        instructions=tuple(st.texts),
        args=tuple(sorted(args)),
        context_paths=tuple(sorted(paths)),
        unkeyable=min(problems)[1] if problems else None,
        directives=directives,
    )
    return inputs, variables


def _replay_env(event: _Env, variables: _Vars, escape: str) -> None:
    """All values of one ENV are expanded before any is set (BuildKit); one that uses a name set by the
    same instruction is not known (builders differ)."""
    assigned: set[str] = set()
    values: list[tuple[str, str | None]] = []
    for name, word in event.pairs:
        value, used = _expand_known(word, variables, escape)
        values.append((name, None if used & assigned else value))
        assigned.add(name)
    variables.env.update(values)


def _read_context(event: _Source, variables: _Vars, escape: str, paths: set[str]) -> str | None:
    """Add what one source reads from the context to ``paths``; or say why the stage cannot be keyed."""
    value = _expand_known(event.word, variables, escape)[0]
    if value is None:
        if event.instruction == "ADD":  # it may name a URL
            return f"ADD source {event.word} cannot be expanded before the build (it may name a URL)"
        paths.add(".")
        return None
    if event.instruction != "RUN --mount":
        remote = _remote_source(value)
        if remote == "a URL" and event.instruction == "ADD" and event.checksum:
            return None
        if remote is not None:
            checksum = " without --checksum" if remote == "a URL" and event.instruction == "ADD" else ""
            return f"{event.instruction} of {remote}{checksum}"
    paths.add(context_path(value))
    return None


_SCP_LIKE = re.compile(r"^[A-Za-z0-9_.+-]+@[A-Za-z0-9_.-]+:")


def _remote_source(source: str) -> str | None:
    """What a COPY/ADD source fetches from elsewhere, if it does (BuildKit's ParseGitRef, generously)."""
    lower = source.lower()
    if lower.startswith(("http://", "https://")):
        path = re.split(r"[?#]", source, maxsplit=1)[0]
        return "a git repository" if path.endswith(".git") else "a URL"
    if lower.startswith(("git://", "ssh://", "git@", "github.com/")) or _SCP_LIKE.match(source):
        return "a git repository"
    if "://" in source:
        return "a remote source"
    return None


def context_path(source: str) -> str:
    """A COPY source as BuildKit reads it from the context: cleaned, relative to its root (``..`` cannot
    leave it), ``.`` for the root itself. Glob characters stay."""
    return posixpath.normpath("/" + source).lstrip("/") or "."


# --------------------------------------------------------------------------------------------------
# image references (distribution/reference) and suggestions


_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"^({_NAME})(?::{_TAG})?(?:@{_DIGEST})?$")


@functools.lru_cache(maxsize=4096)
def validate_image_reference(name: str) -> str | None:
    """Why `name` is not a valid image reference (docker's messages), or None if it is."""
    if name == "scratch":
        return None
    if re.fullmatch(r"[a-f0-9]{64}", name):
        return f"invalid repository name ({name}), cannot specify 64-byte hexadecimal strings"
    match = _REFERENCE.match(name)
    if match is None:
        if _REFERENCE.match(name.lower()):
            return "invalid reference format: repository name must be lowercase"
        return "invalid reference format"
    if len(match.group(1)) > 255:
        return "repository name must not be more than 255 characters"
    return None


def suggest(value: str, options: Sequence[str], *, case_sensitive: bool = False) -> str | None:
    """BuildKit's suggest.WrapError: the closest option within Levenshtein distance 2."""
    wanted = value if case_sensitive else value.lower()
    match: str | None = None
    best = 3
    for option in options:
        candidate = option if case_sensitive else option.lower()
        if candidate == wanted:
            return None
        dist = _levenshtein(wanted, candidate)
        if dist < best:
            match, best = (candidate if case_sensitive else _match_case(candidate, value)), dist
    return match


def _did_you_mean(hint: str | None) -> str:
    return f" (did you mean {hint}?)" if hint else ""


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _match_case(value: str, original: str) -> str:
    if original == original.lower():
        return value.lower()
    if original == original.upper():
        return value.upper()
    return value


# --------------------------------------------------------------------------------------------------
# word expansion (BuildKit's shell lexer, ProcessWord): quotes, escapes, $V, ${V}, ${V:-d} ...


class ShellError(ValueError):
    """A word that cannot be expanded."""


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class _Lexer:
    """One pass over a word; `pos` moves forward only, so expansion is linear in the word."""

    def __init__(self, word: str, env: Mapping[str, str], escape: str) -> None:
        self.word = word
        self.env = env
        self.escape = escape
        self.pos = 0

    def peek(self) -> str:
        return self.word[self.pos] if self.pos < len(self.word) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch

    def run(self, stops: str = "") -> str:
        """Expand up to the end of the word or the first unquoted character in `stops`."""
        out: list[str] = []
        while True:
            ch = self.peek()
            if ch == "" or ch in stops:
                return "".join(out)
            self.next()
            if ch == self.escape:
                out.append(self.next())
            elif ch == "'":
                out.append(self.single_quoted())
            elif ch == '"':
                out.append(self.double_quoted())
            elif ch == "$":
                out.append(self.dollar())
            else:
                out.append(ch)

    def single_quoted(self) -> str:
        end = self.word.find("'", self.pos)
        if end < 0:
            raise ShellError("unexpected end of statement while looking for matching single-quote")
        text = self.word[self.pos:end]
        self.pos = end + 1
        return text

    def double_quoted(self) -> str:
        out: list[str] = []
        while True:
            ch = self.next()
            if ch == "":
                raise ShellError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
            elif ch == self.escape and self.peek() in ('"', "$", self.escape):
                out.append(self.next())
            else:
                out.append(ch)

    def name(self) -> str:
        start = self.pos
        while self.peek() and self.peek() in _NAME_CHARS:
            self.pos += 1
        return self.word[start:self.pos]

    def dollar(self) -> str:
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.next()
        name = self.name()
        if not name:
            raise ShellError(f"bad substitution: {self.word}")
        ch = self.next()
        if ch == "":
            raise ShellError(f"syntax error: missing '}}' in {self.word}")
        if ch == "}":
            return self.env.get(name, "")
        if ch in ("#", "%", "/"):
            return self.pattern_op(name, ch)
        colon = ch == ":"
        if colon:
            ch = self.next()
        if ch not in ("-", "+", "?"):
            raise ShellError(f"unsupported modifier ({ch}) in substitution: {self.word}")
        word = self.run(stops="}")
        self.close()
        return self.modify(name, ch, colon, word)

    def close(self) -> None:
        if self.next() != "}":
            raise ShellError(f"syntax error: missing '}}' in {self.word}")

    def pattern_op(self, name: str, op: str) -> str:
        """${V#glob} ${V##glob} ${V%glob} ${V%%glob} ${V/glob/repl} ${V//glob/repl} (dockerfile 1.7)."""
        greedy = self.peek() == op
        if greedy:
            self.next()
        pattern = self.run(stops="/}" if op == "/" else "}")
        replacement = ""
        if op == "/" and self.peek() == "/":
            self.next()
            replacement = self.run(stops="}")
        self.close()
        value = self.env.get(name, "")
        glob = re.compile(fnmatch.translate(pattern))
        if op == "#":
            return _strip_prefix(value, glob, longest=greedy)
        if op == "%":
            return _strip_suffix(value, glob, longest=greedy)
        return _replace(value, glob, replacement, every=greedy)

    def modify(self, name: str, op: str, colon: bool, word: str) -> str:
        value = self.env.get(name)
        present = value is not None and (value != "" or not colon)
        if op == "-":
            return value if present and value is not None else word
        if op == "+":
            return word if present else ""
        if not present:
            default = "is not allowed to be empty" if colon else "is not allowed to be unset"
            raise ShellError(f"{name}: {word or default}")
        return value or ""


def _strip_prefix(value: str, glob: re.Pattern[str], *, longest: bool) -> str:
    ends = range(len(value), -1, -1) if longest else range(len(value) + 1)
    return next((value[i:] for i in ends if glob.match(value[:i])), value)


def _strip_suffix(value: str, glob: re.Pattern[str], *, longest: bool) -> str:
    starts = range(len(value) + 1) if longest else range(len(value), -1, -1)
    return next((value[:i] for i in starts if glob.match(value[i:])), value)


def _replace(value: str, glob: re.Pattern[str], replacement: str, *, every: bool) -> str:
    """Replace the longest match at the leftmost position (once, or everywhere)."""
    out: list[str] = []
    i = 0
    while i < len(value):
        end = next((j for j in range(len(value), i, -1) if glob.match(value[i:j])), None)
        if end is None:
            out.append(value[i])
            i += 1
            continue
        out.append(replacement)
        i = end
        if not every:
            out.append(value[i:])
            return "".join(out)
    return "".join(out)


def _needs_expansion(word: str, escape: str) -> bool:
    return "$" in word or "'" in word or '"' in word or escape in word


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand one word the way BuildKit expands FROM/ARG values (quotes removed, escapes applied)."""
    if not _needs_expansion(word, escape):
        return word
    return _Lexer(word, env, escape).run()
