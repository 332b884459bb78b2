"""Pure: the little the worker needs to know about a Dockerfile itself.

Stage names by index (buildah prefixes parallel output with `[N/M]`) and which line an instruction that
buildah reports as failing came from. The full stage graph is `stagefleet.stages`; when it is
available it also serves as the pre-check that turns syntax mistakes into exit code 11 before building.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import dockerfile


class DockerfileSyntaxError(ValueError):
    """str(e) == "Dockerfile:3: message", like `stagefleet.stages.DockerfileError`."""

    def __init__(self, filename: str, line: int | None, message: str) -> None:
        self.filename, self.line, self.message = filename, line, message
        super().__init__(f"{filename}:{line}: {message}" if line else f"{filename}: {message}")


@dataclass(frozen=True)
class Instruction:
    line: int
    stage: str
    text: str  # normalised: whitespace runs collapsed


@dataclass(frozen=True)
class DockerfileInfo:
    filename: str
    stages: tuple[str, ...]  # by index, "stage-<i>" for unnamed ones
    instructions: tuple[Instruction, ...]
    named: tuple[bool, ...] = ()  # per stage: has an AS name
    from_words: tuple[str, ...] = ()  # per stage: FROM's image word as written, before ARG expansion

    def stage_name(self, index: int) -> str | None:
        """Name of the 0-based stage `index`, if it exists."""
        return self.stages[index] if 0 <= index < len(self.stages) else None

    def buildah_names(self) -> dict[str, str]:
        """Plan names of unnamed stages ("stage-2") → what buildah calls them (their index, "2").

        The plan names unnamed stages `stage-<index>`; buildah's --target and --build-context know
        them only by index.
        """
        return {name: str(i) for i, (name, named) in enumerate(zip(self.stages, self.named, strict=True))
                if not named}

    def stage_at(self, line: int | None) -> str | None:
        """The stage whose instructions include `line`."""
        before = [i for i in self.instructions if line is not None and i.line <= line and i.stage]
        return before[-1].stage if before else None

    def find_line(self, step: str, stage: str | None = None) -> int | None:
        """The line of the instruction buildah printed as `step` (preferring the given stage)."""
        want = _norm(step)
        if not want:
            return None
        candidates = [i for i in self.instructions if i.text == want or i.text.startswith(want)]
        if not candidates:  # buildah may print the instruction upper-cased without arguments ("FOO ")
            head = want.split()[0].upper()
            candidates = [i for i in self.instructions if i.text.split()[0].upper() == head]
        preferred = [i for i in candidates if i.stage == stage]
        best = preferred or candidates
        return best[0].line if best else None


def _norm(text: str) -> str:
    return " ".join(text.split())


def analyse(text: str, filename: str = "Dockerfile") -> DockerfileInfo:
    """Stage names and instruction lines; raises `DockerfileSyntaxError` when BuildKit's parser does."""
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as e:
        raise DockerfileSyntaxError(filename, _line_of(str(e)), str(e)) from None
    stages: list[str] = []
    named_flags: list[bool] = []
    from_words: list[str] = []
    instructions: list[Instruction] = []
    for cmd in commands:
        if cmd.cmd.upper() == "FROM":
            vals = [v for v in cmd.value]
            named = len(vals) >= 3 and vals[-2].upper() == "AS"
            stages.append(vals[-1] if named else f"stage-{len(stages)}")
            named_flags.append(named)
            from_words.append(vals[0] if vals else "")
        current = stages[-1] if stages else ""
        instructions.append(Instruction(cmd.start_line, current, _norm(cmd.original)))
    return DockerfileInfo(filename, tuple(stages), tuple(instructions), tuple(named_flags), tuple(from_words))


def _line_of(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None


def precheck(text: str, *, filename: str, target: str, build_args: Mapping[str, str]) -> None:
    """Validate with `stagefleet.stages.parse_stage_graph` when that module exists.

    Raises `DockerfileSyntaxError`; silently passes when the parser is not installed, in which case
    buildah's own output is the detector.
    """
    try:
        stages = importlib.import_module("stagefleet.stages")
    except ImportError:
        return
    try:
        stages.parse_stage_graph(text, filename=filename, target=target, build_args=dict(build_args))
    except stages.DockerfileError as e:
        raise DockerfileSyntaxError(e.filename, e.line, e.message) from None
    except Exception:  # noqa: BLE001 - a pre-check only: buildah stays the authority on what builds
        return
