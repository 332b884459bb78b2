"""Planning in a recycled child process (`controller.planner`): the same plans and errors as in process,
and the child is replaced after its quota (which bounds the parser's leak)."""

from __future__ import annotations

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
