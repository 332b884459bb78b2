"""The head start's `buildah build` (`worker.headstart`), run on a thread while the worker waits.

Never fatal: the build proper runs every step again, finding the head start's as cache hits, so a head
start that fails (or is stopped) only loses its time; the build proper reports any real error. Streaming a
build's output (`follow`) and stopping it (`end`) serve the build proper (`worker.main.run_build`) too.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from stagefleet.ignorefile import own_files
from stagefleet.worker.headstart import HeadStart
from stagefleet.worker.output import OutputTracker


def end(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """Stop a `buildah build` before the worker's cleanup removes its storage: SIGTERM, and SIGKILL when it
    has not ended after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def follow(stdout: IO[bytes], tracker: OutputTracker, line: Callable[[str], str],
           out: Callable[[str], None]) -> None:
    """Stream a `buildah build`'s output: each raw line decoded and scrubbed (``line``), accounted by
    ``tracker`` and printed stage-prefixed (``out``), until it ends."""
    for raw in stdout:
        out(tracker.feed(line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))))


def write_dockerfile(hs: HeadStart, original: Path, directory: Path) -> Path:
    """The cut Dockerfile, under the original's file name and beside copies of the original's own ignore
    files, so buildah picks the same ignore rules (and so the same COPY cache keys) as for the original."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / original.name
    path.write_text(hs.dockerfile)
    for name in own_files(original.name):
        if (original.parent / name).is_file():
            shutil.copyfile(original.parent / name, directory / name)
    return path


class HeadRun:
    def __init__(self, argv: list[str], env: Mapping[str, str], tracker: OutputTracker,
                 line: Callable[[str], str], out: Callable[[str], None], log: Callable[[str], None]) -> None:
        """``line`` scrubs one raw output line; ``out`` prints the tracked (stage-prefixed) result."""
        self.argv, self.env, self.tracker, self.line, self.out = argv, dict(env), tracker, line, out
        self.log = log
        self.started = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self.thread = threading.Thread(target=self._follow, name="head-start", daemon=True)

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.thread.start()

    def _follow(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        follow(self.proc.stdout, self.tracker, self.line, self.out)
        rc = self.proc.wait()
        self.log(f"head start done: exit status {rc} after {time.monotonic() - self.started:.1f}s")

    def wait(self) -> int:
        """Its exit status, once it has ended."""
        assert self.proc is not None
        self.thread.join()
        return self.proc.wait()

    def stop(self) -> None:
        """End it (the worker is unwinding: its storage is about to go)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        end(self.proc)
        self.thread.join(timeout=5)
