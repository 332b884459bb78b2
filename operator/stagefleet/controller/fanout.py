"""The pass of a multi-platform ImageBuild (`platforms`): one child ImageBuild per platform, followed until
each has built its image, then joined into one image index under the output tags. Apart from the pass of
an ordinary build, which plans and starts pods; this one only creates, patches and reads ImageBuilds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stagefleet.controller import buildphase, platforms, reuse, runs
from stagefleet.controller import registry as reg
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube, Refused
from stagefleet.controller.podspec import ARCH_LABEL, BuildRef
from stagefleet.controller.policy import REASON as POLICY_REASON
from stagefleet.controller.policy import violations
from stagefleet.controller.registryclients import RegistryClients
from stagefleet.controller.spec import ImageBuildSpec
from stagefleet.controller.writes import StatusWriter
from stagefleet.imageindex import write_index


@dataclass
class FanOut:
    kube: Kube
    config: OperatorConfig
    writer: StatusWriter
    registry_clients: RegistryClients

    def run(
        self, ib: dict[str, Any], build: BuildRef, spec: ImageBuildSpec, status: dict[str, Any], now: datetime
    ) -> float | None:
        """A pass of a multi-platform build (`platforms`): make its children what its spec says, follow
        them, and write the image index once every platform's image is built."""
        if runs.run_of(status) != build.generation:
            refused = violations(spec, self.config.policy, self.config.worker.builder_image, build.namespace)
            if refused:
                self.writer.finish_early(ib, build, status, POLICY_REASON, "; ".join(refused), now)
                return None
        native: list[set[str] | None] = []  # the nodes' architectures, listed once, only for a new child
        children: list[platforms.Child] = []
        for i, p in enumerate(spec.platforms):
            arch = p.split("/")[1]
            name = platforms.child_name(build.name, p)
            obj = self.kube.get_imagebuild(build.namespace, name)
            if obj is not None and platforms.owned_by(obj, build.uid):
                # Placed when it was created: a node coming or going later must not patch it into a new run.
                here = platforms.placed_natively(obj, arch)
            else:
                if not native:
                    native.append(self._native_arches())
                here = arch in native[0] if native[0] is not None else arch == reuse.build_arch({})
            if not here and not self.config.platform_emulation:
                self.writer.finish_early(ib, build, status, "PlatformUnavailable", (
                    f"spec.platforms[{i}]: {p}: no Ready node of architecture {arch}, and this operator does "
                    "not build under emulation (--no-platform-emulation)"), now)
                return None
            wanted = platforms.child_manifest(ib, p, here, build.run.rebuild if build.run else None)
            try:
                if obj is None:
                    self.kube.create(wanted)
                elif not platforms.owned_by(obj, build.uid):
                    self.writer.finish_early(ib, build, status, "PlatformBuildConflict", (
                        f"spec.platforms[{i}]: {p}: ImageBuild {name} exists and is not this build's: "
                        "rename or delete it"), now)
                    return None
                elif (patch := platforms.spec_difference(obj, wanted)) is not None:
                    self.kube.patch_imagebuild(build.namespace, name, patch)
                    obj = None  # (read again when its next event triggers this pass)
            except Refused as e:
                self.writer.finish_early(ib, build, status, "PlatformBuildRefused", (
                    f"spec.platforms[{i}]: {p}: the API refused ImageBuild {name} ({e.code} {e.reason}): "
                    f"{e.message}"), now)
                return None
            children.append(platforms.Child(p, name, obj))
        index_digest, failure, again = None, None, 10.0
        if all(c.phase == buildphase.SUCCEEDED for c in children):
            commits = {c.platform: ((c.status.get("source") or {}).get("git") or {}).get("commit")
                       for c in children}
            if len(set(commits.values())) > 1:
                failure = ("the platforms were built from other commits (the branch moved meanwhile): "
                           + ", ".join(f"{p} {str(c)[:12]}" for p, c in commits.items()) + "; rebuild it")
            else:
                try:
                    index_digest = self._write_index(build, spec, children)
                except reg.RegistryError as e:
                    if not e.transient:
                        failure = f"writing the image index to {spec.output.repository} failed: {e}"
                    again = 5.0
        new, events = platforms.fan_status(
            build=build, spec_suspend=spec.suspend, status=status, children=children,
            image=spec.output.image, tags=spec.output.refs, index_digest=index_digest, failure=failure,
            now=now,
        )
        self.writer.write(ib, status, new)
        for ev in events:
            self.writer.event(ib, ev.type, ev.reason, ev.message)
        return None if new["phase"] in buildphase.TERMINAL else again

    def _native_arches(self) -> set[str] | None:
        """The architectures of the Ready nodes (None: the nodes cannot be read)."""
        try:
            nodes, _ = self.kube.list_nodes()
        except Exception:  # noqa: BLE001 (no node access: rbac.nodes off)
            return None
        out: set[str] = set()
        for n in nodes:
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (n.get("status") or {}).get("conditions") or ())
            arch = ((n.get("metadata") or {}).get("labels") or {}).get(ARCH_LABEL)
            if ready and arch:
                out.add(str(arch))
        return out

    def _write_index(self, build: BuildRef, spec: ImageBuildSpec, children: list[platforms.Child]) -> str:
        """Put the OCI index of the children's images under every output tag; its digest."""
        where = reg.split_repository(spec.output.repository)
        if where is None:
            raise reg.RegistryError(f"{spec.output.repository} names no registry host")
        client = self.registry_clients.for_build(build, spec)(where[0])
        images = [(c.platform, str((c.status.get("image") or {}).get("digest"))) for c in children]
        return write_index(client, where[1], [ref.rpartition(":")[2] for ref in spec.output.refs], images)
