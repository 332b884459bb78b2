"""What goes when a build is done with: a finished build's worker pods and stage tags once they are due
(`stagetags`), a deleted build's pods, ConfigMaps and leftover stage tags, and the pods of builds deleted
while the operator was down. Apart from the pass: deletion events and pod events call it too."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stagefleet.controller import registry as reg
from stagefleet.controller import runs, stagetags
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube
from stagefleet.controller.podspec import BuildRef, is_stage_tag_of
from stagefleet.controller.registryclients import RegistryClients
from stagefleet.controller.spec import ImageBuildSpec, SpecError, parse_spec
from stagefleet.controller.writes import StatusWriter, log_fields

log = logging.getLogger("stagefleet.operator")


@dataclass
class Cleaner:
    kube: Kube
    config: OperatorConfig
    writer: StatusWriter
    registry_clients: RegistryClients

    def after_finish(
        self,
        ib: dict[str, Any],
        build: BuildRef,
        status: dict[str, Any],
        now: datetime,
        *,
        spec: ImageBuildSpec | None = None,
        leaving: bool = False,
    ) -> tuple[dict[str, Any], float | None]:
        """A finished build: delete its worker pods and remove its stage tags from the registry once they
        are due (`stagetags`; ``leaving``: the ImageBuild is about to be deleted, its tags go now). Returns
        the status (with ``stageTags`` once written) and the seconds until something else is due."""
        keep = self.config.keep_failed_seconds
        waits: list[float] = []
        keep_pods = self.config.keep_succeeded_pods_seconds
        pods_in = stagetags.pods_due_in(status, build.generation, keep, keep_pods, now)
        if pods_in is not None and not leaving:
            if pods_in <= 0:
                self._delete_finished_pods(build, spec)
            else:
                waits.append(pods_in)
        tags_in = stagetags.tags_due_in(status, build.generation, keep, now)
        if tags_in is not None and (tags_in <= 0 or leaving):
            try:
                spec = spec or parse_spec(ib.get("spec"))
            except SpecError:
                return status, None
            new = {**status, "stageTags": self._remove_stage_tags(ib, build, spec, status, now)}
            if self.writer.write(ib, status, new):
                status = new
            tags_in = stagetags.tags_due_in(status, build.generation, keep, now)
        if tags_in is not None:
            waits.append(max(0.5, tags_in))
        return status, min(waits) if waits else None

    def _delete_pods(self, namespace: str, uid: str) -> int:
        """Delete the build's worker pods not already being deleted; how many."""
        deleted = 0
        for pod in self.kube.list_worker_pods(namespace, uid):
            meta = pod.get("metadata") or {}
            if not meta.get("deletionTimestamp"):
                self.kube.delete_pod(namespace, str(meta.get("name")))
                deleted += 1
        return deleted

    def _delete_finished_pods(self, build: BuildRef, spec: ImageBuildSpec | None) -> None:
        deleted = self._delete_pods(build.namespace, build.uid)
        if deleted and spec is not None and spec.source.inline is not None:
            self.kube.delete_configmaps(build.namespace, build.uid)
        if deleted:
            log.info("%s/%s finished: deleted its %d worker pod(s)", build.namespace, build.name, deleted,
                     extra=log_fields(build.namespace, build.name))

    def _remove_stage_tags(
        self,
        ib: dict[str, Any],
        build: BuildRef,
        spec: ImageBuildSpec,
        status: Mapping[str, Any],
        now: datetime,
        *,
        final: bool = False,
    ) -> dict[str, Any]:
        """Remove this build's stage result tags (`registry.remove_build_tags`): the ``status.stageTags``
        entry saying how it went. Only the build's own tags; a registry refusing deletes is reported (and a
        Warning event), never a failure of the build."""
        repository = spec.stages_repository(build.namespace)
        attempts = stagetags.attempts_so_far(status) + 1
        before = status.get("stageTags") or {}
        earlier = int(before.get("deleted") or 0) if isinstance(before, Mapping) else 0
        where = reg.split_repository(repository)
        if where is None:
            return stagetags.entry(earlier, f"{repository} names no registry host: stage tags kept", now)
        host, path = where
        try:
            client = self.registry_clients.for_build(build, spec, timeout=5.0)(host)
            done, found, error = reg.remove_build_tags(client, path, lambda tag: is_stage_tag_of(build, tag))
        except reg.RegistryError as e:
            done, found, error = 0, 0, e
        except Exception as e:  # noqa: BLE001 (a clean-up must never make every pass of the build fail)
            log.exception("removing the stage tags of %s/%s failed", build.namespace, build.name)
            done, found, error = 0, 0, reg.RegistryError(f"{type(e).__name__}: {e}", transient=True)
        deleted = earlier + done
        if error is None:
            message = f"deleted {deleted} stage tag(s) of this build from {repository}"
            log.info("%s/%s: %s", build.namespace, build.name, message,
                     extra=log_fields(build.namespace, build.name))
            return stagetags.entry(deleted, message, now)
        kept = f"{found - done} of {found}" if found else "its"
        message = f"deleted {deleted} stage tag(s) of this build from {repository}, kept {kept}: {error}"
        if isinstance(error, reg.Unsupported):
            message += " (enable deletion: distribution's REGISTRY_STORAGE_DELETE_ENABLED=true)"
        retry = error.transient and attempts < stagetags.MAX_ATTEMPTS and not final
        log.warning("%s/%s: %s%s", build.namespace, build.name, message,
                    "; trying again later" if retry else "", extra=log_fields(build.namespace, build.name))
        if not retry:
            self.writer.event(ib, "Warning", "StageTagsKept", message)
        return stagetags.entry(deleted, message, now, attempts=attempts, retry=retry)

    def after_deletion(
        self, namespace: str, uid: str, last: Mapping[str, Any] | None, now: datetime
    ) -> None:
        """Remove every pod and ConfigMap of a deleted ImageBuild (owner references do it too, eventually);
        with its ``last`` state (the DELETED event's object), also the stage tags it pushed and had not
        removed yet (deleted while building, or while a failed build's were kept): one try, no retry."""
        self._delete_pods(namespace, uid)
        self.kube.delete_configmaps(namespace, uid)
        status = (last or {}).get("status") or {}
        done = status.get("stageTags")
        if last is None or "plan" not in status or (isinstance(done, Mapping) and "retryAt" not in done):
            return
        meta = last.get("metadata") or {}
        build = BuildRef(str(meta.get("name")), namespace, uid, runs.run_of(status) or 1)
        try:
            spec = parse_spec(last.get("spec"))
        except SpecError:
            return
        self._remove_stage_tags(dict(last), build, spec, status, now, final=True)

    def delete_orphan(self, pod: Mapping[str, Any], created: Collection[str]) -> bool:
        """A worker pod whose ImageBuild is gone (deleted while the operator was down): delete it."""
        meta = pod.get("metadata") or {}
        owner = next((o for o in meta.get("ownerReferences") or () if o.get("kind") == "ImageBuild"), None)
        if owner is None or meta.get("deletionTimestamp") or str(meta.get("uid")) in created:
            return False  # (a pod this process just created had a live owner; the owner reference covers a
            # deletion racing with the create)
        ib = self.kube.get_imagebuild(str(meta.get("namespace")), str(owner.get("name")))
        if ib is not None and ib["metadata"].get("uid") == owner.get("uid"):
            return False
        self.kube.delete_pod(str(meta.get("namespace")), str(meta.get("name")))
        return True
