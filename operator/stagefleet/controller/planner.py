"""Planning (BuildKit's parser + our planner) in a child process that is replaced every N plans.

BuildKit's parser binding (the ``dockerfile`` package) leaks on every parse: strings it never releases
and Go heap, about 6.6 KB of RSS for a 7-line Dockerfile and more for a larger one (bench/README.md,
churn.py). The operator plans every build it sees, so in its own process that is memory that grows with
the number of builds for as long as the operator runs. A child process (spawned, never forked from the
operator's threads) does the planning and is replaced after ``plans_per_process`` plans, which bounds
the leak; it also takes the parse's CPU off the operator's GIL (a 1,000-stage Dockerfile takes ~200 ms).
The work is `model.plan_dockerfile`, unchanged: same result, same `DockerfileError`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from stagefleet.controller.model import PlanView, plan_dockerfile

log = logging.getLogger("stagefleet.operator")

PLANS_PER_PROCESS = 200
PLAN_TIMEOUT_SECONDS = 120.0


def _watch_parent() -> None:
    """In the child (its initializer): exit once the operator is gone, even killed (SIGKILL leaves the
    pool's worker waiting on its queue forever otherwise)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _plan_in_child(
    text: str, target: str | None, build_args: dict[str, str], filename: str
) -> tuple[Any, ...]:
    """In the child: the plan, or the DockerfileError's fields (it does not pickle as itself)."""
    from stagefleet.stages import DockerfileError

    try:
        return ("ok", plan_dockerfile(text, target=target, build_args=build_args, filename=filename))
    except DockerfileError as e:
        return ("error", e.filename, e.line, e.message)


class Planner:
    """`plan_dockerfile` in a recycled child process; thread-safe (reconcile passes call it at once)."""

    def __init__(self, plans_per_process: int = PLANS_PER_PROCESS) -> None:
        self.plans_per_process = plans_per_process
        self._pool: ProcessPoolExecutor | None = None
        self._plans = 0  # given to the current pool
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        """The pool for the next plan: a new one (a new child) once the current one had its quota; the old
        one finishes what it was given, then its child exits. (Not the executor's max_tasks_per_child:
        on Python 3.11 replacing the worker while other submissions wait can hang the pool.)"""
        with self._lock:
            if self._pool is not None and self._plans >= self.plans_per_process:
                self._pool.shutdown(wait=False)
                self._pool = None
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_watch_parent
                )
                self._plans = 0
            self._plans += 1
            return self._pool

    def plan(
        self, text: str, *, target: str | None, build_args: Mapping[str, str], filename: str = "Dockerfile"
    ) -> PlanView:
        from stagefleet.stages import DockerfileError

        for attempt in (1, 2):
            pool = self._executor()
            try:
                future = pool.submit(_plan_in_child, text, target, dict(build_args), filename)
                result = future.result(timeout=PLAN_TIMEOUT_SECONDS)
                break
            except BrokenProcessPool:  # the child died (killed, out of memory): a new one, once
                log.warning("the planning process died; starting another (attempt %d)", attempt)
                with self._lock:
                    if self._pool is pool:
                        self._pool = None
                if attempt == 2:
                    raise
        if result[0] == "error":
            raise DockerfileError(result[1], result[2], result[3])
        plan = result[1]
        assert isinstance(plan, PlanView)
        return plan

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
