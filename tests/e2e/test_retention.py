"""Finished ImageBuilds go away after spec.ttlSecondsAfterFinished, and their worker pods with them."""

from __future__ import annotations

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, inline_manifest, wait_terminal, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


def test_a_finished_build_is_deleted_after_its_ttl_with_its_pods(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    dockerfile = f"FROM {base_image} AS a\nRUN echo a > /a\nFROM {base_image} AS b\nCOPY --from=a /a /a\n"
    kubectl.apply(inline_manifest("short", dockerfile, registry.host, ttlSecondsAfterFinished=3))
    kubectl.apply(inline_manifest("kept", dockerfile, registry.host))
    assert wait_terminal(kubectl, operator, "short")["status"]["phase"] == "Succeeded"
    assert wait_terminal(kubectl, operator, "kept")["status"]["phase"] == "Succeeded"

    def gone() -> bool:
        names = kubectl.run("get", "imagebuilds", "-o", "name").stdout.split()
        return "imagebuild.stagefleet.io/short" not in names and kubectl.pods("short") == []

    wait_until(gone, "ImageBuild short and its pods deleted after its TTL", operator, timeout=120)
    assert kubectl.ib("kept")["status"]["phase"] == "Succeeded"  # no TTL, no operator default: kept
    assert kubectl.pods("kept")
