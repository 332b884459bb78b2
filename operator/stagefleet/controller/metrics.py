"""Prometheus metrics of the operator, derived from status transitions (old status → new status).

Deriving them from the status the reconciler writes, rather than counting in many places, keeps them
consistent with what `kubectl get ib` shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from stagefleet.buildstate import ready
from stagefleet.buildstate.phases import ACTIVE as S_ACTIVE
from stagefleet.buildstate.phases import SUCCEEDED as S_SUCCEEDED
from stagefleet.buildstate.phases import WAITING as S_WAITING
from stagefleet.controller.buildphase import TERMINAL
from stagefleet.controller.model import plan_groups
from stagefleet.controller.runs import run_of

STAGE_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.builds = Counter(
            "stagefleet_builds", "ImageBuilds that reached a terminal phase", ["result"], registry=r
        )
        self.stage_seconds = Histogram(
            "stagefleet_stage_duration_seconds",
            "Build time of a stage in its worker",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "stagefleet_cache_hits", "Build steps taken from the registry cache", registry=r
        )
        self.steps = Counter("stagefleet_build_steps", "Build steps executed or taken from cache", registry=r)
        self.queue_depth = Gauge(
            "stagefleet_queue_depth",
            "Groups ready to run but not started (parallelism limit, retry backoff or a missing Secret)",
            registry=r,
        )
        self.pods_running = Gauge(
            "stagefleet_worker_pods_running", "Worker pods pending or running", registry=r
        )
        self.pods_created = Counter("stagefleet_worker_pods_created", "Worker pods created", registry=r)
        self.retries = Counter(
            "stagefleet_group_retries", "Group attempts after an infrastructure failure", registry=r
        )
        self.reconciles = Counter("stagefleet_reconciles", "Reconcile passes", ["result"], registry=r)
        self.reconcile_seconds = Histogram(
            "stagefleet_reconcile_duration_seconds", "Time of one reconcile pass", registry=r
        )
        self.tracked = Gauge(
            "stagefleet_operator_tracked_entries",
            "Entries in one of the operator's per-build or per-pod maps (flat under churn)",
            ["map"],
            registry=r,
        )
        self._queue: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._active: set[str] = set()  # ImageBuilds whose last written phase is not terminal

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def record(self, key: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """Account for one status transition of the ImageBuild ``key``."""
        same_gen = run_of(old) == run_of(new)
        if new.get("phase") in TERMINAL and not (same_gen and old.get("phase") in TERMINAL):
            self.builds.labels(result=str(new["phase"])).inc()
        before = {s.get("name"): s for s in old.get("stages") or ()} if same_gen else {}
        phases: dict[str, str] = {}
        after_groups: dict[str, tuple[str, ...]] = {}
        for s in new.get("stages") or ():
            phases.setdefault(str(s.get("group")), str(s.get("phase")))
            if (
                s.get("phase") == S_SUCCEEDED
                and (before.get(s.get("name")) or {}).get("phase") != S_SUCCEEDED
            ):
                if isinstance(s.get("duration"), int | float):
                    self.stage_seconds.observe(float(s["duration"]))
                if isinstance(s.get("cachedSteps"), int):
                    self.cache_hits.inc(s["cachedSteps"])
                if isinstance(s.get("steps"), int):
                    self.steps.inc(s["steps"])
        # (A group a summarised status does not list is Waiting, status.summarise_stages.)
        for g in plan_groups(new.get("plan") or {}) if new.get("phase") not in TERMINAL else ():
            after_groups[str(g.get("id"))] = tuple(g.get("after") or ())
            phases.setdefault(str(g.get("id")), S_WAITING)
        queued = ready.queued(phases, after_groups)
        if new.get("phase") in TERMINAL:  # nothing queued or running any more: no entry to keep
            self._active.discard(key)
            self._queue.pop(key, None)
            self._running.pop(key, None)
        else:
            self._active.add(key)
            self._queue[key] = queued
            self._running[key] = sum(1 for ph in phases.values() if ph in S_ACTIVE)
        self._publish()

    def in_flight(self) -> int:
        """ImageBuilds not ended (as last written by this operator): what /healthz reports."""
        return len(self._active)

    def build_keys(self) -> set[str]:
        """The ImageBuilds (``namespace/name``) with an entry here."""
        return self._active | set(self._queue) | set(self._running)

    def forget(self, key: str) -> None:
        self._active.discard(key)
        self._queue.pop(key, None)
        self._running.pop(key, None)
        self._publish()

    def _publish(self) -> None:
        self.queue_depth.set(sum(self._queue.values()))
        self.pods_running.set(sum(self._running.values()))
