"""Registry clients for one build, with its workers' push credentials: what the operator itself reads from
and writes to a registry (an OCI source, stored stage results, the image index, stage tags) goes through
them. Apart from the pass because the fan-out and the clean-up need the same clients."""

from __future__ import annotations

from collections.abc import Callable

from stagefleet.controller import registry as reg
from stagefleet.controller import reuse
from stagefleet.controller.kube import Kube
from stagefleet.controller.podspec import BuildRef
from stagefleet.controller.spec import ImageBuildSpec


class RegistryClients:
    def __init__(self, kube: Kube, insecure: tuple[str, ...]) -> None:
        self.kube = kube
        self.insecure = insecure  # --insecure-registry hosts: plain HTTP or unverified TLS

    def for_build(
        self, build: BuildRef, spec: ImageBuildSpec, timeout: float = reuse.LOOKUP_TIMEOUT
    ) -> Callable[[str], reg.Registry]:
        """Registry clients by host, with the workers' push credentials (a dockerconfigjson; read once,
        when first needed)."""
        clients: dict[str, reg.Registry] = {}
        auth: list[str | None] = []

        def client_for(host: str) -> reg.Registry:
            if not auth:
                raw = None
                if spec.output.push_secret:
                    raw = self.kube.read_secret_value(
                        build.namespace, spec.output.push_secret, ".dockerconfigjson"
                    )
                auth.append(raw.decode(errors="replace") if raw is not None else None)
            if host not in clients:
                clients[host] = reg.Registry(host, insecure=host in self.insecure,
                                             auth_config=auth[0], timeout=timeout)
            return clients[host]

        return client_for
