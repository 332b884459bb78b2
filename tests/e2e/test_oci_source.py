"""An OCI-artifact source (`spec.source.oci`): CI pushes the context with `stagefleet context push`, the
operator pins the tag to a digest and plans from the Dockerfile in it, each worker unpacks it. The stage
keys come from the artifact's content, so a new artifact with one branch's file changed re-runs only that
branch; an artifact that is not there fails naming the field. Real builder, registry and both tiers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, wait_terminal
from .oci import image_files
from .test_reuse import DOCKERFILE, generation_pods

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


def push_context(directory: Path, ref: str) -> str:
    """`stagefleet context push`: the digest reference it prints."""
    out = subprocess.run([sys.executable, "-m", "stagefleet.cli", "context", "push", str(directory), ref],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def manifest(name: str, image: str, base: str, registry: LocalRegistry,
             timeout: str = "10m") -> dict[str, Any]:
    return {
        "apiVersion": "stagefleet.io/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "source": {"oci": {"image": image}, "contextDir": "app"},
            "buildArgs": {"BASE": base},
            "output": {"image": f"{registry.host}/e2e/{name}:v1"},
            "timeout": timeout,  # each change of it is a new generation, planned afresh
        },
    }


@pytest.mark.tiers("real")
def test_a_pushed_context_is_built_and_keys_its_stages(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str, tmp_path: Path,
    namespace: str,
) -> None:
    kubectl.apply(manifest("nothere", f"{registry.host}/e2e/ctx-{namespace}:missing", base_image, registry))
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "app" / "left.txt").write_text("left 1\n")
    (ctx / "app" / "right.txt").write_text("right 1\n")
    (ctx / "outside-the-context-dir.bin").write_bytes(b"\0" * 4096)
    tag = f"{registry.host}/e2e/ctx-{namespace}:main"
    pinned = push_context(ctx, tag)
    assert pinned.startswith(f"{registry.host}/e2e/ctx-{namespace}@sha256:")
    assert push_context(ctx, tag) == pinned  # the same content pushes the same digest

    kubectl.apply(manifest("fromoci", tag, base_image, registry))
    first = wait_terminal(kubectl, operator, "fromoci")["status"]
    assert first["phase"] == "Succeeded", first.get("message")
    assert first["source"]["oci"] == {"image": tag, "digest": pinned.split("@")[1],
                                      "dockerfile": "app/Dockerfile"}, first["source"]
    files = image_files(registry.host, "e2e/fromoci", first["image"]["digest"])
    assert files["/left.out"] == b"left 1\n" and files["/right.txt"] == b"right 1\n"
    for pod in kubectl.pods("fromoci"):
        args = pod["spec"]["containers"][0]["args"]
        assert args[args.index("--oci-source") + 1] == pinned and "--git-url" not in args
        assert args[args.index("--context-dir") + 1] == "app"

    # The tag moves to an artifact whose right.txt changed: the left branch is reused, without a pod.
    (ctx / "app" / "right.txt").write_text("right 2\n")
    moved = push_context(ctx, tag)
    assert moved != pinned
    kubectl.apply(manifest("fromoci", tag, base_image, registry, timeout="11m"))
    second = wait_terminal(kubectl, operator, "fromoci")["status"]
    assert second["phase"] == "Succeeded", second.get("message")
    assert second["source"]["oci"]["digest"] == moved.split("@")[1]
    by_name = {s["name"]: s for s in second["stages"]}
    assert by_name["left"]["reused"] and not by_name["right"].get("reused"), second["stages"]
    assert not by_name["final"].get("reused")
    assert len(generation_pods(kubectl, "fromoci", 2)) == 2
    files = image_files(registry.host, "e2e/fromoci", second["image"]["digest"])
    assert files["/left.out"] == b"left 1\n" and files["/right.txt"] == b"right 2\n"

    missing = wait_terminal(kubectl, operator, "nothere")["status"]
    assert missing["phase"] == "Failed" and missing["failure"]["reason"] == "SourceUnavailable", missing
    assert f"spec.source.oci.image {registry.host}/e2e/ctx-{namespace}:missing: not found in the registry" \
        in missing["message"], missing["message"]
    assert kubectl.pods("nothere") == []


def test_a_change_the_dockerignore_leaves_out_starts_no_pod(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str, tmp_path: Path,
    namespace: str,
) -> None:
    """`COPY . /app/` from an artifact whose .dockerignore leaves out logs: the operator reads the ignore
    file with the Dockerfile and keys the stage without what buildah never copies, so a new artifact that
    only changes a log is satisfied from the stored result, without a pod."""
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "Dockerfile").write_text("ARG BASE\nFROM ${BASE} AS app\nCOPY . /srv/\n")
    (ctx / "app" / ".dockerignore").write_text("*.log\n")
    (ctx / "app" / "app.txt").write_text("app 1\n")
    (ctx / "app" / "debug.log").write_text("log 1\n")
    tag = f"{registry.host}/e2e/ign-{namespace}:main"
    push_context(ctx, tag)
    kubectl.apply(manifest("ignored", tag, base_image, registry))
    first = wait_terminal(kubectl, operator, "ignored")["status"]
    assert first["phase"] == "Succeeded", first.get("message")
    files = image_files(registry.host, "e2e/ignored", first["image"]["digest"])
    assert files["/srv/app.txt"] == b"app 1\n" and "/srv/debug.log" not in files

    (ctx / "app" / "debug.log").write_text("log 2\n")
    push_context(ctx, tag)
    kubectl.apply(manifest("ignored", tag, base_image, registry, timeout="11m"))
    second = wait_terminal(kubectl, operator, "ignored")["status"]
    assert second["phase"] == "Succeeded", second.get("message")
    assert second["stages"][0].get("reused"), second["stages"]
    assert generation_pods(kubectl, "ignored", 2) == []
    assert second["image"]["digest"] == first["image"]["digest"]
