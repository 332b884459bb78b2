"""Planning in a recycled child process (`controller.planner`): the same plans and errors as in process,
and the child is replaced after its quota (which bounds the parser's leak)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stagefleet.controller.model import plan_dockerfile
from stagefleet.controller.planner import Planner
from stagefleet.stages import DockerfileError

DOCKERFILE = (
    "FROM busybox AS a\nRUN true\nFROM busybox AS b\nRUN true\nFROM busybox AS c\nCOPY --from=a / /\n"
)


def test_plans_and_errors_are_those_of_the_pure_function() -> None:
    planner = Planner(plans_per_process=2)
    try:
        pids = set()
        for _ in range(5):
            assert planner.plan(DOCKERFILE, target=None, build_args={}) == plan_dockerfile(
                DOCKERFILE, target=None, build_args={}
            )
            pool = planner._pool
            assert pool is not None
            pids |= set(pool._processes)  # noqa: SLF001 - the child's pid: it is replaced after 2 plans
        assert len(pids) >= 2
        with pytest.raises(DockerfileError) as e:
            planner.plan("FROM a\nFROOM b\n", target=None, build_args={}, filename="app.Dockerfile")
        assert str(e.value).startswith("app.Dockerfile:2: unknown instruction: FROOM")
        assert e.value.line == 2
    finally:
        planner.close()


def test_the_child_exits_when_the_operator_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "op.py"
    script.write_text(
        "import time\n"
        "from stagefleet.controller.planner import Planner\n"
        "if __name__ == '__main__':\n"
        "    p = Planner()\n"
        "    p.plan('FROM a\\n', target=None, build_args={})\n"
        "    print(*p._pool._processes, flush=True)\n"
        "    time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, os.WNOHANG)  # (not ours: reaped by init; this only guards a zombie)
        time.sleep(0.2)
    state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(
        f"/proc/{child}").exists() else "gone"
    assert state in ("gone", "Z")
