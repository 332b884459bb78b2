"""What the operator writes about an ImageBuild: its status (with the metrics and the log line of a phase
change), its Events, and the fields of its log lines. One writer shared by the pass, the source jobs, the
fan-out and the clean-up, so that every status write is recorded the same way."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from stagefleet.controller import buildphase, report, runs
from stagefleet.controller.kube import Kube
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.podspec import BuildRef

log = logging.getLogger("stagefleet.operator")


def log_fields(namespace: str, name: str) -> dict[str, str]:
    """Structured fields of a JSON log line about one ImageBuild."""
    return {"imagebuild": name, "namespace": namespace}


class StatusWriter:
    def __init__(self, kube: Kube, metrics: Metrics) -> None:
        self.kube = kube
        self.metrics = metrics

    def write(self, ib: dict[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        base = dict(ib)
        base["status"] = dict(old)
        written = self.kube.write_status(base, new)
        if isinstance(written, str) and written:
            ib["metadata"]["resourceVersion"] = written  # (guards a second write in the same pass)
        if written:
            meta = ib["metadata"]
            self.metrics.record(f"{meta['namespace']}/{meta['name']}", old, new)
            if new.get("phase") != old.get("phase"):
                log.info(
                    "%s/%s: %s → %s: %s",
                    meta["namespace"],
                    meta["name"],
                    old.get("phase"),
                    new.get("phase"),
                    new.get("message"),
                    extra={
                        **log_fields(meta["namespace"], meta["name"]),
                        "phase": new.get("phase"),
                        "generation": new.get("observedGeneration"),
                    },
                )
        return bool(written)

    def event(self, ib: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.kube.event(ib, type_, reason, message)

    def finish_early(
        self,
        ib: dict[str, Any],
        build: BuildRef,
        status: dict[str, Any],
        reason: str,
        message: str,
        now: datetime,
    ) -> dict[str, Any]:
        new = report.terminal_status(
            generation=build.generation,
            phase=buildphase.FAILED,
            reason=reason,
            message=message,
            old=status,
            now=now,
            run=build.run,
        )
        if (
            runs.run_of(status) == build.generation
            and status.get("phase") == buildphase.FAILED
            and status.get("message") == message
        ):
            return status
        self.write(ib, status, new)
        self.event(ib, "Warning", reason, message)
        return new
