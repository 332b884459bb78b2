"""The registry goes away while real workers build and push (real operator, worker, buildah, registry).

Stopped for ~10 s once the build steps run, i.e. across the pushes of layers and stage results: the
failures are transient and retried (by the worker's push backoff or by the operator running the group
again) and the build completes with an image the registry serves. Stopped for good: the build ends
Failed with a message naming the unreachable registry. The first build also mounts the canary Secret and
prints it from its RUN step; test_zz_canary checks it reached no blob, log, event or status.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.oci import manifest_digest
from stagefleet import buildenv
from stagefleet.localregistry import LocalRegistry, ensure_base_image

from .conftest import GROUP, VERSION, Api, Evidence, OperatorFactory, RCluster, pod_log, poll, terminal

pytestmark = [pytest.mark.cluster, pytest.mark.builder]

DOCKERFILE = """ARG BASE
FROM ${BASE} AS one
RUN --mount=type=secret,id=tok cat /run/secrets/tok; echo; sleep 3; echo one > /one
FROM ${BASE} AS two
RUN sleep 3; echo two > /two
FROM ${BASE} AS final
COPY --from=one /one /one
COPY --from=two /two /two
"""


@pytest.fixture
def own_registry(tmp_path: Path, evidence: Evidence, registry: LocalRegistry) -> Iterator[LocalRegistry]:
    """A registry of this test's own (it gets stopped), with the base image; `registry` (the session's)
    is requested only so the builder tools are checked the same way."""
    reg = LocalRegistry(tmp_path / "reg")
    reg.start()
    evidence.registries.append(reg.data_dir)
    root = tmp_path / "base-root"
    env = buildenv.prepare(root, insecure_registries=[reg.host])
    try:
        ensure_base_image(reg.host, env)
    finally:
        buildenv.cleanup(root, env)
    yield reg
    reg.stop()


def _manifest(name: str, reg: LocalRegistry, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "source": {"inline": {"dockerfile": DOCKERFILE}},
            "buildArgs": {"BASE": f"{reg.host}/base/busybox:1"},
            "output": {"image": f"{reg.host}/rel/{name}:latest"},
            "secrets": [{"id": "tok", "secretRef": {"name": "canary", "key": "value"}}],
            "timeout": "10m",
            **spec,
        },
    }


def _steps_running(api: Api, name: str) -> bool:
    """Both first-wave pods are past their FROM (base pulled): their RUN step has started."""
    pods = [
        p
        for p in api.pods()
        if p["metadata"]["name"].startswith(f"{name}-")
        and p["metadata"]["labels"].get("stagefleet.io/group") in ("g1", "g2")  # not the early final pod
    ]
    if len(pods) < 2:
        return False
    return all("STEP 2/2" in pod_log(api, p["metadata"]["name"]) for p in pods)


def test_registry_down_for_ten_seconds_then_back(
    api: Api, make_operator: OperatorFactory, rcluster: RCluster, own_registry: LocalRegistry
) -> None:
    op = make_operator(fake=False, registry=own_registry.host)
    api.create(_manifest("blip", own_registry))
    poll(
        lambda: _steps_running(api, "blip"), "both RUN steps started", op, timeout=120, interval=0.1
    )
    own_registry.stop()
    time.sleep(10)
    own_registry.start()
    obj = terminal(api, "blip", op, timeout=300)
    st = obj["status"]
    assert st["phase"] == "Succeeded", (st.get("message"), st.get("failure"))
    assert manifest_digest(own_registry.host, "rel/blip", "latest") == st["image"]["digest"]
    created = rcluster.ledger.names(api.namespace)
    assert all(n == 1 for n in created.values()), created


def test_registry_gone_for_good_fails_clearly(
    api: Api, make_operator: OperatorFactory, rcluster: RCluster, own_registry: LocalRegistry
) -> None:
    op = make_operator(fake=False, registry=own_registry.host)
    api.create(_manifest("gone", own_registry, retries=0))
    poll(
        lambda: _steps_running(api, "gone"), "both RUN steps started", op, timeout=120, interval=0.1
    )
    own_registry.stop()
    obj = terminal(api, "gone", op, timeout=300)
    st = obj["status"]
    assert st["phase"] == "Failed", st
    failure = st["failure"]
    assert failure.get("kind") in ("push", "pull"), failure
    assert own_registry.host in st["message"] or own_registry.host in failure.get("message", ""), failure
    assert op.alive()
