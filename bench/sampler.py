"""A poor man's sampling profiler (py-spy is not installed here): every few ms, the stack of every thread.

    from sampler import Sampler; s = Sampler(); s.start(); ...; s.stop(); s.write(path)
    python bench/sampler.py --out FILE -m module args...    # run a module under it (e.g. the operator)

Writes CPU seconds per thread (from /proc), collapsed stacks ("thread;outer;...;inner count" per line,
flamegraph.pl's input) and the hottest functions, by own and by inclusive samples, per thread. A thread's
stack is counted only when the thread used CPU since the previous sample (/proc clock ticks), so waiting
threads (I/O, locks, the GIL) do not show up; coarse (10-ms ticks) but enough to find where time goes.
SIGTERM of a module run under it still writes the file.
"""

from __future__ import annotations

import collections
import gc
import os
import runpy
import signal
import sys
import threading
from pathlib import Path
from types import FrameType


def _frames(frame: FrameType | None) -> list[str]:
    out: list[str] = []
    while frame is not None:
        code = frame.f_code
        out.append(f"{code.co_name} ({Path(code.co_filename).name}:{code.co_firstlineno})")
        frame = frame.f_back
    out.reverse()
    return out


def _current_frames() -> dict[int, FrameType]:
    """sys._current_frames() with the garbage collector off.

    It holds the interpreter's thread-list lock while it builds its dict; a collection triggered by that
    allocation which frees a threading.local takes the same lock again (Python 3.11, local_clear) and the
    sampler deadlocks holding the GIL: the whole profiled operator froze twice in 300-build runs.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()


class Sampler:
    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
        self.samples = 0
        self.cpu: dict[str, int] = {}  # thread name → CPU clock ticks while sampled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = threading.get_ident()
        last: dict[int, int] = {}
        while not self._stop.wait(self.interval):
            threads = {t.ident: t for t in threading.enumerate()}
            for ident, frame in _current_frames().items():
                t = threads.get(ident)
                if ident == me or t is None or t.native_id is None:
                    continue
                # Count a thread only when it used CPU since the previous sample (a thread waiting in C,
                # for I/O or for the GIL, shows a Python frame too): CPU time from /proc, in clock ticks.
                ticks = _cpu_ticks(t.native_id)
                prev = last.get(t.native_id)
                last[t.native_id] = ticks
                self.cpu[t.name] = self.cpu.get(t.name, 0) + (ticks - prev if prev is not None else 0)
                if prev is None or ticks == prev:
                    continue
                self.stacks[(t.name, *_frames(frame))] += 1
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def write(self, path: Path, top: int = 40) -> None:
        own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        busy: collections.Counter[str] = collections.Counter()
        for (thread, *stack), n in self.stacks.items():
            busy[thread] += n
            own[thread][stack[-1]] += n
            for f in set(stack):
                incl[thread][f] += n
        hz = os.sysconf("SC_CLK_TCK")
        lines = [f"# {self.samples} samples every {self.interval * 1000:.0f} ms; CPU seconds per thread:"]
        top_cpu = sorted(self.cpu.items(), key=lambda kv: -kv[1])[:top]
        lines += [f"#   {t}: {n / hz:.1f} s" for t, n in top_cpu]
        lines.append("# samples on CPU per thread:")
        lines += [f"#   {t}: {n}" for t, n in busy.most_common(top)]
        for thread, _ in busy.most_common(8):
            lines.append(f"# --- {thread}: own")
            lines += [f"#   {n:7d}  {f}" for f, n in own[thread].most_common(top)]
            lines.append(f"# --- {thread}: inclusive")
            lines += [f"#   {n:7d}  {f}" for f, n in incl[thread].most_common(top)]
        lines += [f"{';'.join(s)} {n}" for s, n in self.stacks.most_common()]
        path.write_text("\n".join(lines) + "\n")


def _cpu_ticks(tid: int) -> int:
    """utime + stime of one thread of this process, in clock ticks (0 when it is gone)."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--out" or argv[2] != "-m":
        print(__doc__, file=sys.stderr)
        return 2
    out, module, rest = Path(argv[1]), argv[3], argv[4:]
    sampler = Sampler()
    sampler.start()

    def finish(*_: object) -> None:
        sampler.stop()
        sampler.write(out)

    def on_signal(signum: int, _frame: object) -> None:
        finish()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_signal)
    sys.argv = [module, *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        if not sampler._stop.is_set():
            finish()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
