"""Creating a pass's worker pods: the inline Dockerfile's ConfigMap first, then one pod per `StartPod`,
each stamped with its creation token (`trust`); what the API refuses comes back per group
(`rejections`), so the pass can decide again with those groups waiting."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from stagefleet.controller import rejections, reuse, suspension, trust
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube, Refused
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.model import PlanView
from stagefleet.controller.podbook import PodBook
from stagefleet.controller.podspec import (
    BuildRef,
    ResolvedSource,
    configmap_name,
    dockerfile_configmap,
    worker_pod,
)
from stagefleet.controller.spec import ImageBuildSpec
from stagefleet.controller.status import StartPod
from stagefleet.controller.workerqueue import WorkerQueue
from stagefleet.controller.writes import log_fields
from stagefleet.ocisource import parse_ref as parse_oci_ref

log = logging.getLogger("stagefleet.operator")


class PodStarter:
    def __init__(self, kube: Kube, config: OperatorConfig, metrics: Metrics, queue: WorkerQueue,
                 podbook: PodBook, pod_changed: Callable[[Mapping[str, Any]], bool]) -> None:
        """``pod_changed``: what the reconciler does with a pod event, told of each pod created."""
        self.kube, self.config, self.metrics, self.queue, self.podbook = kube, config, metrics, queue, podbook
        self.pod_changed = pod_changed
        # The inline Dockerfile's ConfigMap created for (uid, generation) of a build: no second create.
        self.configmaps: dict[tuple[str, str], tuple[str, int]] = {}

    def start(
        self,
        build: BuildRef,
        spec: ImageBuildSpec,
        plan: PlanView,
        status: Mapping[str, Any],
        starts: list[StartPod],
        now: datetime,
        tokens: Mapping[str, str],
    ) -> tuple[list[tuple[StartPod, dict[str, Any]]], dict[str, str]]:
        """Create the pods of ``starts``, each with its group's creation token from ``tokens``: (the pods
        created, each with its StartPod; group id → why the API refused its pod,
        `rejections.rejection_text`). A pod that already exists is in neither (not ours: the next pass
        judges it, `trust`)."""
        source_status = status.get("source") or {}
        git = source_status.get("git") or {}
        created_pods: list[tuple[StartPod, dict[str, Any]]] = []
        rejected: dict[str, str] = {}
        if spec.source.inline is not None:
            key = (build.uid, build.generation)
            if self.configmaps.get((build.namespace, build.name)) != key:  # after a restart: one
                # AlreadyExists, then remembered
                try:
                    self.kube.create(dockerfile_configmap(build, spec.source.inline))
                except Refused as e:
                    self._log_refused(build, e, [s.group.id for s in starts])
                    text = rejections.rejection_text(e.kind, e.name, e.code, e.reason, e.message)
                    return [], {s.group.id: text for s in starts}
                self.configmaps[(build.namespace, build.name)] = key
            source = ResolvedSource(configmap=configmap_name(build))
        elif spec.source.oci is not None:
            oci = source_status.get("oci") or {}
            ref = parse_oci_ref(spec.source.oci.image)
            source = ResolvedSource(oci_ref=ref.pinned(str(oci["digest"])) if oci.get("digest") else str(ref))
        else:
            assert spec.source.git is not None
            source = ResolvedSource(
                git_url=spec.source.git.url, git_revision=str(git.get("commit") or "HEAD")
            )
        deadline = suspension.build_deadline(status, spec, now)
        remaining = int((deadline - now).total_seconds())  # (not suspended)
        keys, bases = reuse.recorded(status)
        for start in starts:
            pod = worker_pod(
                build=build,
                spec=spec,
                plan=plan,
                group=start.group,
                attempt=start.attempt,
                source=source,
                upstream=start.upstream,
                config=self.config.worker,
                deadline_seconds=max(remaining, 1),
                upstream_attempts=start.upstream_attempts,
                stage_key=keys.get(start.group.target),
                base_images=bases,
                arch=reuse.build_arch(spec.node_selector),
            )
            pod = trust.stamp(pod, tokens[start.group.id])
            try:
                created = self.kube.create(pod)
            except Refused as e:
                self._log_refused(build, e, [start.group.id])
                why = rejections.rejection_text(e.kind, e.name, e.code, e.reason, e.message)
                rejected[start.group.id] = why
                continue
            if created is not None:
                created_pods.append((start, created))
                # This pass decided with the pod as created: its ADDED event changes nothing (no pass),
                # and it is no orphan (no ImageBuild GET to check).
                self.pod_changed(created)
                if self.queue.enabled:
                    self.queue.started((build.namespace, build.name))  # (counted as a pod from now on)
                self.podbook.created.add(str((created.get("metadata") or {}).get("uid")))
                self.metrics.pods_created.inc()
                if start.attempt > 1 and not start.restart:
                    self.metrics.retries.inc()
                log.info(
                    "started pod %s for %s/%s group %s (%s)",
                    pod["metadata"]["name"],
                    build.namespace,
                    build.name,
                    start.group.id,
                    ", ".join(start.group.stages),
                    extra={
                        **log_fields(build.namespace, build.name),
                        "group": start.group.id,
                        "attempt": start.attempt,
                        "pod": pod["metadata"]["name"],
                    },
                )
        return created_pods, rejected

    def _log_refused(self, build: BuildRef, e: Refused, groups: list[str]) -> None:
        log.warning(
            "%s %s for %s/%s group %s refused by the API (%d %s): %s",
            e.kind,
            e.name,
            build.namespace,
            build.name,
            ", ".join(groups),
            e.code,
            e.reason,
            e.message,
            extra={**log_fields(build.namespace, build.name), "group": ", ".join(groups), "code": e.code},
        )
