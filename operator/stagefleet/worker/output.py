"""Pure: buildah's output lines → secret-free, stage-prefixed lines, step/cache counts and failures."""

from __future__ import annotations

import base64
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from stagefleet.worker import exitcodes
from stagefleet.worker.dockerinfo import DockerfileInfo

STEP_RE = re.compile(r"^(?:\[(?P<idx>\d+)/\d+\] )?STEP \d+/\d+: (?P<text>.*)$")
COMMIT_RE = re.compile(r"^(?:\[(?P<idx>\d+)/\d+\] )?COMMIT\b")
CACHE_HIT_RE = re.compile(r"^--> Using cache [0-9a-f]+")
ERROR_AT_STEP_RE = re.compile(r'^Error: building at STEP "(?P<step>.*?)": (?P<msg>.*)$')
REDACTED = "***"
MIN_SECRET_LEN = 4  # shorter values would turn ordinary output into asterisks
TAIL_LINES = 10


class Scrubber:
    """Replaces every known secret value (whole, trimmed, per line, base64) in text with ***."""

    def __init__(self, secrets: Iterable[bytes] = ()) -> None:
        needles: set[str] = set()
        for raw in secrets:
            for blob in {raw, raw.strip()}:
                needles.add(base64.b64encode(blob).decode())
                text = blob.decode("utf-8", errors="replace")
                needles.add(text)
                needles.update(line.strip() for line in text.splitlines() if len(line.strip()) >= 8)
        # longest first so a value that contains another is replaced as a whole
        self._needles = sorted((n for n in needles if len(n) >= MIN_SECRET_LEN), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text


@dataclass
class StageStats:
    name: str
    steps: int = 0
    cached: int = 0
    started: float | None = None
    ended: float | None = None
    step: str | None = None  # the instruction currently running
    step_output: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    earlier: float = 0.0  # seconds spent on this stage by an earlier run (a head start)

    @property
    def seconds(self) -> float:
        if self.started is None or self.ended is None:
            return round(self.earlier, 2)
        return round(self.ended - self.started + self.earlier, 2)


@dataclass(frozen=True)
class Failure:
    code: int
    message: str
    stage: str | None = None
    line: int | None = None

    @property
    def kind(self) -> str:
        return exitcodes.KIND.get(self.code, "internal")


class OutputTracker:
    """Follows one `buildah build` run line by line.

    buildah prefixes lines with `[N/M]` (the 1-based stage index) only when it builds several stages;
    unprefixed lines belong to the stage seen last (the target when none was). Counts are exact; with
    `--jobs` > 1 interleaved stages may swap unprefixed lines, which is why a group is a chain.
    """

    def __init__(self, info: DockerfileInfo, target: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.info = info
        self.clock = clock
        self.current = target
        self.stats: dict[str, StageStats] = {}
        self.tail: deque[str] = deque(maxlen=40)
        self.error_lines: list[str] = []

    def _stage(self, name: str) -> StageStats:
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = StageStats(name)
        return st

    def feed(self, line: str) -> str:
        """Account for one (already scrubbed) line; return it prefixed with its stage name."""
        now = self.clock()
        body = line
        m = STEP_RE.match(line) or COMMIT_RE.match(line)
        if m and m["idx"]:
            self.current = self.info.stage_name(int(m["idx"]) - 1) or f"stage-{int(m['idx']) - 1}"
            body = line.split("] ", 1)[1]
        st = self._stage(self.current)
        st.started = now if st.started is None else st.started
        st.ended = now
        step = STEP_RE.match(body)
        if step:
            st.step = step["text"]
            st.step_output.clear()
            if not step["text"].upper().startswith("FROM "):
                st.steps += 1
        elif CACHE_HIT_RE.match(body):
            st.cached += 1
        elif body.startswith("Error: "):
            self.error_lines.append(body)
        elif not body.startswith("--> ") and not COMMIT_RE.match(body):
            st.step_output.append(body)
        self.tail.append(body)
        return f"[{self.current}] {body}"

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stats.values())

    @property
    def cached(self) -> int:
        return sum(s.cached for s in self.stats.values())

    def failure(self, returncode: int) -> Failure:
        """Classify a failed `buildah build` from what it printed."""
        return classify(self, returncode)

    def credit(self, head: OutputTracker) -> None:
        """Count what a head start (`worker.headstart`) built as built here: the steps it ran are this
        build's cache hits but were not cached before, and its time is the stage's time too."""
        for name, h in head.stats.items():
            st = self.stats.get(name)
            if st is not None:
                st.cached = max(0, st.cached - (h.steps - h.cached))
                st.earlier += h.seconds


_PULL_WORDS = ("initializing source", "manifest unknown", "pinging container registry", "reading manifest",
               "connection refused", "no such host", "i/o timeout", "unauthorized", "denied",
               "trying to pull", "pulling image", "name unknown", "no stage or image found")


def classify(t: OutputTracker, returncode: int) -> Failure:
    """Exit code and message for a failed build: Dockerfile error, secret, failing step or pull."""
    error = t.error_lines[-1] if t.error_lines else (t.tail[-1] if t.tail else f"exit status {returncode}")
    low = error.lower()
    m = ERROR_AT_STEP_RE.match(error)
    if m:
        step, msg = m["step"], m["msg"]
        for st in t.stats.values():  # the step text itself may contain '": '
            if st.step and error.startswith(f'Error: building at STEP "{st.step}": '):
                step, msg = st.step, error[len(f'Error: building at STEP "{st.step}": '):]
        stage = next((s.name for s in t.stats.values() if s.step == step), t.current)
        line = t.info.find_line(step, stage)
        where = f"{t.info.filename}:{line}" if line else t.info.filename
        if "unknown instruction" in msg.lower() or "parse error" in msg.lower():
            short = msg.split(" &imagebuilder", 1)[0]
            return Failure(exitcodes.DOCKERFILE, f"{where}: {short}", stage, line)
        if "secret required but no secret" in msg or "could not parse secrets" in msg:
            return Failure(exitcodes.SECRET, f"{where}: {_after_colon(msg)}", stage, line)
        if "resolving mountpoints" in msg:  # the step never ran: a mount could not be set up
            return Failure(exitcodes.UNEXPECTED, f"{where}: mounts for {step!r} failed: {msg}", stage, line)
        pulling = any(w in msg.lower() for w in _PULL_WORDS)
        if step.upper().startswith("FROM ") or (" --from=" in step and pulling):
            return Failure(exitcodes.PULL, f"{where}: pulling for {step!r} failed: {msg}", stage, line)
        out = list(t.stats[stage].step_output) if stage in t.stats else []
        out = [o for i, o in enumerate(out) if i == 0 or o != out[i - 1]]
        tail = "".join(f"\n  {o}" for o in out)
        return Failure(exitcodes.BUILD_STEP, f"{where}: step {step!r} failed: {msg}"
                       + (f"\nlast output:{tail}" if tail else ""), stage, line)
    current = t.stats.get(t.current)
    line = t.info.find_line(current.step, t.current) if current and current.step else None
    where = f"{t.info.filename}:{line}: " if line else ""
    if "pushing cache" in low:  # --cache-to: a registry write, so push (retried) rather than pull
        return Failure(exitcodes.PUSH, f"{where}pushing the layer cache failed: {_strip_error(error)}",
                       t.current, line)
    if "creating build container" in low or any(w in low for w in _PULL_WORDS):
        return Failure(exitcodes.PULL, f"{where}pulling an image failed: {_strip_error(error)}",
                       t.current, line)
    if "could not parse secrets" in low or "secret" in low and "no such file" in low:
        return Failure(exitcodes.SECRET, _strip_error(error), t.current)
    if ("target" in low and "not found" in low) or "dockerfile" in low or "parse error" in low:
        return Failure(exitcodes.DOCKERFILE, f"{t.info.filename}: {_strip_error(error)}", t.current)
    return Failure(exitcodes.UNEXPECTED, f"buildah failed (exit {returncode}): {_strip_error(error)}",
                   t.current)


def _strip_error(line: str) -> str:
    return line.removeprefix("Error: ").strip()


def _after_colon(msg: str) -> str:
    return msg.rsplit(": ", 1)[-1]
