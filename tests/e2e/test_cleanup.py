"""What a finished build leaves behind: its stage result tags are removed from the registry and its worker
pods deleted — at once after Succeeded, after --keep-failed-seconds after Failed, or when the build is
deleted — and a tag of another build that names the same manifest is never touched (docs/operator.md,
"What a finished build leaves behind")."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Cluster, Kubectl, Operator, inline_manifest, wait_for, wait_terminal, wait_until
from .oci import ACCEPT, manifest_digest

pytestmark = [pytest.mark.cluster, pytest.mark.builder]
KEEP_FAILED = 12  # long enough for the checks made while they are kept (a few seconds)


@pytest.fixture
def cleanup_operator(cluster: Cluster, namespace: str, registry: LocalRegistry,
                     tmp_path: Path) -> Iterator[Operator]:
    """The operator's own default for succeeded pods (0: deleted at once), failed builds kept 30 s."""
    op = Operator(cluster, namespace, registry.host, tmp_path / "operator.log",
                  extra=["--keep-succeeded-pods-seconds", "0", "--keep-failed-seconds", str(KEEP_FAILED)])
    op.start()
    yield op
    op.kill()
    print(f"--- operator log ({op.log}) ---\n{op.tail(120)}")


def stage_tags(registry: LocalRegistry, repo: str) -> list[str]:
    """GET /v2/REPO/tags/list: every tag of the stages repository ([] when it has none)."""
    try:
        with urllib.request.urlopen(f"{registry.url}/v2/{repo}/tags/list", timeout=30) as resp:
            return sorted(json.loads(resp.read()).get("tags") or ())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return []
        raise


def copy_tag(registry: LocalRegistry, repo: str, source: str, tag: str) -> None:
    """Put the manifest of ``source`` under ``tag`` too: another build's tag naming the same digest."""
    req = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/{source}", headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body, media_type = resp.read(), resp.headers["Content-Type"]
    put = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/{tag}", data=body, method="PUT",
                                 headers={"Content-Type": media_type})
    with urllib.request.urlopen(put, timeout=30) as resp:
        assert resp.status == 201


def dockerfile(base_image: str, last: str) -> str:
    return (f"FROM {base_image} AS a\nRUN echo a > /a\n"
            f"FROM {base_image} AS b\nRUN echo b > /b\n"
            f"FROM {base_image} AS final\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n{last}\n")


def own(obj: dict[str, Any], tags: list[str]) -> list[str]:
    prefix = f"{obj['metadata']['name']}-{obj['metadata']['uid'][:8]}-"
    return [t for t in tags if t.startswith(prefix)]


def test_a_succeeded_build_leaves_no_stage_tags_and_no_pods(
    kubectl: Kubectl, cleanup_operator: Operator, registry: LocalRegistry, base_image: str, namespace: str
) -> None:
    op = cleanup_operator
    kubectl.apply(inline_manifest("done", dockerfile(base_image, "RUN echo final > /final"), registry.host))
    obj = wait_terminal(kubectl, op, "done")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    repo = f"e2e/done/stages/{namespace}"

    obj = wait_for(kubectl, op, "done", lambda o: "stageTags" in (o.get("status") or {}), "status.stageTags")
    assert obj["status"]["stageTags"]["deleted"] == 2, obj["status"]["stageTags"]  # groups a and b
    assert "retryAt" not in obj["status"]["stageTags"]
    assert stage_tags(registry, repo) == []
    wait_until(lambda: kubectl.pods("done") == [], "the worker pods of the succeeded build deleted", op,
               timeout=120)
    # the output image is untouched, and the build stays Succeeded
    assert manifest_digest(registry.host, "e2e/done", "latest") == obj["status"]["image"]["digest"]
    assert kubectl.ib("done")["status"]["phase"] == "Succeeded"


@pytest.mark.tiers("real")
def test_a_failed_build_keeps_its_stage_tags_and_pods_for_the_configured_time(
    kubectl: Kubectl, cleanup_operator: Operator, registry: LocalRegistry, base_image: str, namespace: str
) -> None:
    op = cleanup_operator
    kubectl.apply(inline_manifest("broken", dockerfile(base_image, "RUN false"), registry.host))
    obj = wait_terminal(kubectl, op, "broken")
    assert obj["status"]["phase"] == "Failed", obj["status"]["message"]
    repo = f"e2e/broken/stages/{namespace}"

    # Kept for debugging: the stage results of a and b, and the pods with their logs.
    mine = own(obj, stage_tags(registry, repo))
    assert len(mine) == 2, stage_tags(registry, repo)
    groups = {p["metadata"]["labels"]["stagefleet.io/group"] for p in kubectl.pods("broken")}
    assert groups >= {"g1", "g2", "g3"}, groups
    assert "stageTags" not in kubectl.ib("broken")["status"]
    # Another build's tag naming the same manifest as one of ours (an identical, fully cached stage).
    bystander = "other-0badc0de-1-g1-a1"
    copy_tag(registry, repo, mine[0], bystander)
    shared = manifest_digest(registry.host, repo, bystander)

    obj = wait_for(kubectl, op, "broken", lambda o: "stageTags" in (o.get("status") or {}),
                   f"status.stageTags after {KEEP_FAILED} s", timeout=KEEP_FAILED + 120)
    assert obj["status"]["stageTags"]["deleted"] == 2, obj["status"]["stageTags"]
    assert stage_tags(registry, repo) == [bystander]
    assert manifest_digest(registry.host, repo, bystander) == shared
    wait_until(lambda: kubectl.pods("broken") == [], "the worker pods of the failed build deleted", op,
               timeout=120)
    assert kubectl.ib("broken")["status"]["phase"] == "Failed"


def test_a_deleted_build_takes_its_kept_stage_tags_with_it(
    kubectl: Kubectl, cleanup_operator: Operator, registry: LocalRegistry, base_image: str, namespace: str
) -> None:
    op = cleanup_operator
    kubectl.apply(inline_manifest("dropped", dockerfile(base_image, "RUN false"), registry.host))
    obj = wait_terminal(kubectl, op, "dropped")
    assert obj["status"]["phase"] == "Failed", obj["status"]["message"]
    repo = f"e2e/dropped/stages/{namespace}"
    assert len(own(obj, stage_tags(registry, repo))) == 2  # kept for debugging …

    kubectl.run("delete", "imagebuild", "dropped", "--wait=false")  # … until the build is deleted
    wait_until(lambda: own(obj, stage_tags(registry, repo)) == [], "the deleted build's stage tags removed",
               op, timeout=120)
    wait_until(lambda: kubectl.pods("dropped") == [], "the deleted build's pods gone", op, timeout=120)
