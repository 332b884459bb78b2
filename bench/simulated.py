"""The operator with the SIMULATED worker, as the control-plane benches run it (control_plane, churn, spread,
fairqueue).

`worker_command` is the operator's `--worker-command` that runs `bench/fake_worker.py` (builds nothing);
`operator` starts the real operator as a subprocess against a cluster's kubeconfig and stops it again.
"""

from __future__ import annotations

import os
import py_compile
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from procs import stop

ROOT = Path(__file__).resolve().parents[1]


def worker_command(sleep: float, *options: str) -> str:
    """`--worker-command` for the SIMULATED worker sleeping `sleep` seconds per group.

    -I -S: no site-packages and no user environment; the simulated worker needs only os/sys/time.
    Imported, not run as a script: a script is compiled on every start (~4 ms of 17 per pod), a module
    comes from its cached bytecode (written here first).
    """
    py_compile.compile(str(ROOT / "bench" / "fake_worker.py"), doraise=True)
    start = f"import sys; sys.path[:0] = [{str(ROOT / 'bench')!r}]; import fake_worker as w; " \
            "sys.exit(w.main(sys.argv[1:]))"
    return shlex.join([sys.executable, "-I", "-S", "-c", start, "--sleep", str(sleep), *options, "--"])


@contextmanager
def operator(kubeconfig: Path, namespace: str | Sequence[str], log: Path, worker: str,
             args: Sequence[str] = (), *, prefix: Sequence[str] = (),
             settle: float = 3.0) -> Iterator[subprocess.Popen[bytes]]:
    """The real operator (`stagefleet operator`, JSON logs into `log`) watching `namespace` (one, or a
    sequence of them: `--namespace` repeated); `prefix` runs it under a wrapper (e.g. the sampling
    profiler). Waits `settle` seconds for its watches, and on the way out stops it: SIGTERM, 30 s, then
    SIGKILL."""
    watched = [namespace] if isinstance(namespace, str) else list(namespace)
    argv = [sys.executable, *prefix, "-m", "stagefleet.cli", "operator", "--kubeconfig", str(kubeconfig),
            *(a for ns in watched for a in ("--namespace", ns)), "--worker-command", worker,
            "--log-format", "json", *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with log.open("ab") as out:
        op = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                              start_new_session=True)
    try:
        time.sleep(settle)
        yield op
    finally:
        stop(op)
