"""Multi-platform builds (docs/operator.md, "Several platforms"): `spec.platforms: [linux/amd64, linux/arm64]`
builds each platform in an ImageBuild of its own and pushes an OCI image index under the output tag. On
both tiers, with the real builder and registry, from an offline two-platform busybox base: the index lists
both images, each image's config names its architecture, and the binary a RUN step copied into the arm64
image is an AArch64 ELF (and `uname -m` in its RUN said aarch64: the step ran under emulation). On the dev
tier a node says it is arm64 and the arm64 build is placed there; the real tier's nodes are all amd64, so
the arm64 build runs on one of them under emulation (binfmt_misc, qemu-user-static)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Cluster, Kubectl, Operator, inline_manifest, pod_states, wait_terminal
from .oci import image_files, manifest, manifest_digest

pytestmark = [pytest.mark.cluster, pytest.mark.builder]

ELF_MACHINE = {"amd64": 0x3E, "arm64": 0xB7}  # e_machine: EM_X86_64, EM_AARCH64
UNAME = {"amd64": b"x86_64", "arm64": b"aarch64"}


@pytest.fixture
def arm64_node(cluster: Cluster, kubectl: Kubectl) -> Iterator[str | None]:
    """Dev tier: its second node says it is arm64 for this test (its pods run on this machine, so the arm64
    build is emulated all the same). Real tier: None (every node is amd64)."""
    if cluster.dev is None:
        yield None
        return
    node = cluster.node_names[-1]
    label = ["label", "node", node, "--overwrite"]
    kubectl.run(*label, "kubernetes.io/arch=arm64")
    try:
        yield node
    finally:
        kubectl.run(*label, "kubernetes.io/arch=amd64")


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", data[:16]
    return int.from_bytes(data[18:20], "little")


def test_two_platforms_make_one_index_of_real_images(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, multiarch_base_image: str,
    arm64_node: str | None,
) -> None:
    dockerfile = (f"FROM {multiarch_base_image}\n"
                  "RUN uname -m > /arch && cp /bin/busybox /busybox-copy\n")
    doc = inline_manifest("multi", dockerfile, registry.host, platforms=["linux/amd64", "linux/arm64"])
    kubectl.apply(doc)
    obj = wait_terminal(kubectl, operator, "multi", timeout=600)
    status = obj["status"]
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1), pod_states(kubectl, "multi-arm64"))
    assert [(p["platform"], p["imageBuild"], p["phase"]) for p in status["platforms"]] == [
        ("linux/amd64", "multi-amd64", "Succeeded"), ("linux/arm64", "multi-arm64", "Succeeded")]

    repo = "e2e/multi"
    index = manifest(registry.host, repo, "latest")
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json", index
    assert manifest_digest(registry.host, repo, "latest") == status["image"]["digest"]
    listed = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert listed == {p["platform"].split("/")[1]: p["digest"] for p in status["image"]["platforms"]}

    for arch, digest in listed.items():
        image = manifest(registry.host, repo, digest)
        config: dict[str, Any] = json.loads(_blob(registry.host, repo, image["config"]["digest"]))
        assert (config["architecture"], config["os"]) == (arch, "linux"), config
        files = image_files(registry.host, repo, digest)
        assert files["/arch"].strip() == UNAME[arch], files["/arch"]
        assert _elf_machine(files["/busybox-copy"]) == ELF_MACHINE[arch]
        assert manifest_digest(registry.host, repo, f"latest-linux-{arch}") == digest

    children = {c["metadata"]["name"]: c for c in kubectl.json("get", "imagebuild")["items"]
                if c["metadata"]["name"].startswith("multi-")}
    assert sorted(children) == ["multi-amd64", "multi-arm64"]
    for c in children.values():
        owner = c["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("ImageBuild", obj["metadata"]["uid"])
    [arm_pod] = kubectl.pods("multi-arm64")
    selector = arm_pod["spec"].get("nodeSelector") or {}
    if arm64_node is not None:  # placed on the node of its architecture
        assert selector.get("kubernetes.io/arch") == "arm64" and arm_pod["spec"]["nodeName"] == arm64_node
    else:  # no arm64 node: built under emulation wherever it landed
        assert "kubernetes.io/arch" not in selector
        assert "--platform" in arm_pod["spec"]["containers"][0]["args"]


def _blob(host: str, repo: str, digest: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://{host}/v2/{repo}/blobs/{digest}", timeout=30) as resp:
        return bytes(resp.read())
