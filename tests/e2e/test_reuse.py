"""Stage reuse (docs/operator.md, "Unchanged stages are not built again"): a stage whose content key — base
image digest, instructions, build args, platform, the context files it copies, the stages it consumes — has a
stored result starts no pod. With a git source and the real builder and registry, on both tiers:

1. the first build runs every group and stores each group's result under its key tag;
2. a new generation that changes nothing a stage depends on starts 0 worker pods, and its output tags are
   written by copying the stored manifest (the same digest);
3. changing one file that one branch copies re-runs only that branch and the final stage;
4. a new digest under the base image's tag re-runs everything.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, git_run, wait_terminal
from .oci import ACCEPT, image_files

pytestmark = [pytest.mark.cluster, pytest.mark.builder]

DOCKERFILE = """ARG BASE
FROM ${BASE} AS left
COPY left.txt /left.txt
RUN cat /left.txt > /left.out
FROM ${BASE} AS right
COPY right.txt /right.txt
FROM ${BASE} AS final
COPY --from=left /left.out /left.out
COPY --from=right /right.txt /right.txt
"""


def _request(url: str, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read(), dict(resp.headers)


def base_copy(registry: LocalRegistry, base_image: str, tag: str, note: str | None = None) -> str:
    """The base image's manifest under another tag of its repository (``note``: with an annotation, which
    gives the same content another digest — a base image rebuilt under the same tag); its reference."""
    repo, _, src = base_image.removeprefix(f"{registry.host}/").rpartition(":")
    body, headers = _request(f"{registry.url}/v2/{repo}/manifests/{src}", headers={"Accept": ACCEPT})
    if note is not None:
        doc = json.loads(body)
        doc["annotations"] = {**doc.get("annotations", {}), "e2e.stagefleet.io/note": note}
        body = json.dumps(doc).encode()
    _request(f"{registry.url}/v2/{repo}/manifests/{tag}", "PUT", body,
             {"Content-Type": headers["Content-Type"]})
    return f"{registry.host}/{repo}:{tag}"


def generation_pods(kubectl: Kubectl, name: str, generation: int) -> list[str]:
    """The groups that got a worker pod in ``generation``, each named once: a pod may fail for the
    infrastructure (on a real node, e.g. refused by the kubelet's admission) and its group run again as
    attempt 2 (CI saw g1 twice once, cause not recorded); what counts here is which groups ran at all."""
    return sorted({
        p["metadata"]["labels"]["stagefleet.io/group"]
        for p in kubectl.pods(name)
        if p["metadata"]["labels"]["stagefleet.io/generation"] == str(generation)
    })


def built(kubectl: Kubectl, operator: Operator, manifest: dict[str, Any]) -> dict[str, Any]:
    kubectl.apply(manifest)
    obj = wait_terminal(kubectl, operator, manifest["metadata"]["name"])
    assert obj["status"]["phase"] == "Succeeded", obj["status"].get("message")
    return obj


@pytest.mark.tiers("real")
def test_unchanged_stages_start_no_pod(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str,
    git_daemon: tuple[Path, str], namespace: str,
) -> None:
    served, url = git_daemon
    repo = served / "repo"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "Dockerfile").write_text(DOCKERFILE)
    (repo / "app" / "left.txt").write_text("left 1\n")
    (repo / "app" / "right.txt").write_text("right 1\n")
    git_run(repo, "init", "-q", "-b", "main")
    git_run(repo, "add", ".")
    git_run(repo, "commit", "-qm", "first")
    git_run(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    git_run(repo, "config", "uploadpack.allowFilter", "true")
    base = base_copy(registry, base_image, f"reuse-{namespace}")

    def manifest(timeout: str) -> dict[str, Any]:
        return {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": "reuse"},
            "spec": {
                "source": {"git": {"url": f"{url}/repo", "revision": "main"}, "contextDir": "app"},
                "buildArgs": {"BASE": base},
                "output": {"image": f"{registry.host}/e2e/reuse:v1"},
                "timeout": timeout,  # each change of it is a new generation, planned afresh
            },
        }

    # 1. every group built; each result stored under its key tag in the namespace's cache repository
    first = built(kubectl, operator, manifest("10m"))
    retried = [e["message"] for e in kubectl.events() if e["reason"] == "GroupRetrying"]
    assert generation_pods(kubectl, "reuse", 1) == ["g1", "g2", "g3"], (retried, first["status"]["stages"])
    keys = {s["name"]: s["key"] for s in first["status"]["stages"]}
    assert len(set(keys.values())) == 3 and all(len(k) == 64 for k in keys.values()), keys
    assert first["status"]["reuse"]["reused"] == 0
    tags, _ = _request(f"{registry.url}/v2/e2e/reuse/cache/{namespace}/tags/list")
    assert {f"stage-{k}" for k in keys.values()} <= set(json.loads(tags)["tags"])

    # 2. nothing changed: no pod at all, the same image
    again = built(kubectl, operator, manifest("11m"))
    st = again["status"]
    assert generation_pods(kubectl, "reuse", 2) == []
    assert st["image"]["digest"] == first["status"]["image"]["digest"]
    assert all(s["phase"] == "Succeeded" and s["reused"] and s["attempts"] == 0 for s in st["stages"]), st
    assert st["reuse"]["reused"] == 3
    events = [e for e in kubectl.events() if e["reason"] == "StagesReused"]
    assert events and "no pod started" in events[-1]["message"]

    # 3. one file of one branch changed: that branch and the final stage, nothing else
    (repo / "app" / "right.txt").write_text("right 2\n")
    git_run(repo, "commit", "-qam", "right changed")
    third = built(kubectl, operator, manifest("12m"))
    assert generation_pods(kubectl, "reuse", 3) == ["g2", "g3"]
    by_name = {s["name"]: s for s in third["status"]["stages"]}
    assert by_name["left"]["reused"] and by_name["left"]["key"] == keys["left"]
    assert by_name["right"]["key"] != keys["right"] and by_name["final"]["key"] != keys["final"]
    files = image_files(registry.host, "e2e/reuse", third["status"]["image"]["digest"])
    assert files["/right.txt"] == b"right 2\n" and files["/left.out"] == b"left 1\n"

    # 4. the base image's tag names a new digest: every stage built on it runs again
    base_copy(registry, base_image, f"reuse-{namespace}", note="rebuilt")
    fourth = built(kubectl, operator, manifest("13m"))
    assert generation_pods(kubectl, "reuse", 4) == ["g1", "g2", "g3"]
    assert not any(s.get("reused") for s in fourth["status"]["stages"])
    pinned = {b["image"]: b["digest"] for b in fourth["status"]["baseImages"]}
    assert pinned[base] != {b["image"]: b["digest"] for b in third["status"]["baseImages"]}[base]
