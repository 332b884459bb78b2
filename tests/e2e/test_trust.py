"""Issue #14: what the operator trusts. A stage result taken by tag is checked against the digest the
operator recorded (item 4); worker pods the operator did not create are not adopted (item 2)."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry, _commit_and_push
from tiers import BUILD_NAMESPACE_LABELS

from .conftest import (
    Cluster,
    Kubectl,
    Operator,
    inline_manifest,
    seed_manifest,
    stage,
    wait_for,
    wait_terminal,
    wait_until,
)
from .oci import image_files, manifest_digest

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


def _arg_values(pod: dict[str, Any], flag: str) -> list[str]:
    args = pod["spec"]["containers"][0]["args"]
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


@pytest.mark.tiers("real")
def test_an_overwritten_upstream_tag_fails_the_consumer_and_it_is_retried_from_the_recorded_digest(
    kubectl: Kubectl,
    operator: Operator,
    registry: LocalRegistry,
    base_image: str,
    image_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Item 4. The final group starts early and waits for its upstream's result tag; before the upstream
    pushes, someone else pushes other content under that tag. The waiter takes it, but its result names
    the digest it consumed, which is not the one the operator records for the upstream: the final group
    fails with a digest-mismatch message (Warning GroupRetrying), is retried with the recorded digest, and
    the image the build reports — and the output tag — hold the upstream's real content."""
    # Two upstreams, so that the final stage is a group of its own (a chain would be built in one pod).
    dockerfile = (
        f"FROM {base_image} AS up\nRUN sleep 15 && mkdir -p /out && echo real > /out/marker.txt\n"
        f"FROM {base_image} AS side\nRUN sleep 15 && mkdir -p /out && echo side > /out/side.txt\n"
        f"FROM {base_image}\nCOPY --from=up /out/marker.txt /out/marker.txt\n"
        "COPY --from=side /out/side.txt /out/side.txt\n"
    )
    kubectl.apply(inline_manifest("tamper", dockerfile, registry.host, retries=2))

    def waiter() -> dict[str, Any] | None:
        for p in kubectl.pods("tamper"):
            if _arg_values(p, "--upstream-wait"):
                return p
        return None

    wait_for(kubectl, operator, "tamper", lambda o: waiter() is not None, "the final pod started early")
    pod = waiter()
    assert pod is not None
    waits = dict(w.split("=", 1) for w in _arg_values(pod, "--upstream-wait"))
    tag_ref = waits["up"]
    assert f"/stages/{kubectl.namespace}:" in tag_ref  # (item 7: stage results per namespace)

    # The impostor: other content under the upstream's result tag, pushed while the upstream still builds.
    marker = tmp_path / "marker.txt"
    marker.write_text("impostor\n")
    _commit_and_push(tag_ref, base_image, image_env, [
        lambda ctr: ["buildah", "copy", ctr, str(marker), "/out/marker.txt"],
    ])
    repo, _, tag = tag_ref.partition("/")[2].rpartition(":")
    impostor = manifest_digest(registry.host, repo, tag)

    obj = wait_terminal(kubectl, operator, "tamper", timeout=400)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    up, side, final = stage(obj, "up"), stage(obj, "side"), stage(obj, "stage-2")
    assert up["digest"] != impostor
    # The waiter's result was refused as an infrastructure failure and retried, not accepted.
    assert final["attempts"] == 2 and not final.get("restarts"), final
    retried = [e for e in kubectl.events() if e["reason"] == "GroupRetrying"]
    assert retried and all(e["type"] == "Warning" for e in retried), retried
    assert any(
        "upstream digest mismatch" in m and impostor in m and up["digest"] in m
        for m in (e["message"] for e in retried)
    ), [e["message"] for e in retried]
    # The retry was given the recorded digest, not the tag.
    pods = {p["metadata"]["name"]: p for p in kubectl.pods("tamper")}
    retry = pods[final["pod"]]
    assert sorted(_arg_values(retry, "--upstream")) == [
        f"side={side['image']}@{side['digest']}",
        f"up={up['image']}@{up['digest']}",
    ]
    # What the build reports, and what the output tag serves, is built from the real upstream.
    digest = status["image"]["digest"]
    assert manifest_digest(registry.host, "e2e/tamper", "latest") == digest
    assert image_files(registry.host, "e2e/tamper", digest)["/out/marker.txt"] == b"real\n"


@pytest.mark.tiers("real")
def test_an_impostor_pod_with_the_builds_labels_is_deleted_and_never_adopted(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    """Item 2. While a build runs, someone creates a pod with one group's labels (its current attempt),
    the build's owner reference and a termination message claiming success with a digest of its own. The
    operator never adopts it: the pod is deleted, a Warning event names it, and the build's stages and
    image are the real workers' results."""
    kubectl.apply(seed_manifest("victim", base_image, registry.host, sleep=12))

    def running() -> dict[str, Any] | None:
        for p in kubectl.pods("victim"):
            if p["metadata"]["labels"].get("stagefleet.io/group") and not _arg_values(p, "--upstream-wait"):
                return p
        return None

    wait_for(kubectl, operator, "victim", lambda o: running() is not None, "a first-wave pod")
    real = running()
    assert real is not None
    forged = "sha256:" + "e" * 64
    claim = json.dumps({"ok": True, "group": real["metadata"]["labels"]["stagefleet.io/group"],
                        "image": f"{registry.host}/e2e/victim/stages:forged", "digest": forged,
                        "cachedSteps": 0, "steps": 1, "stages": [], "error": None})
    impostor = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "impostor",
            "labels": dict(real["metadata"]["labels"]),
            "ownerReferences": real["metadata"]["ownerReferences"],
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "worker",
                "image": base_image,
                "command": ["/bin/sh", "-c", f"printf '%s' '{claim}' > /dev/termination-log"],
            }],
        },
    }
    kubectl.apply(impostor)

    obj = wait_terminal(kubectl, operator, "victim", timeout=400)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    events = [e for e in kubectl.events() if e["reason"] == "UntrustedPod"]
    assert events and all(e["type"] == "Warning" for e in events), events
    assert any("impostor" in e["message"] for e in events), [e["message"] for e in events]
    wait_until(
        lambda: kubectl.run("get", "pod", "impostor", check=False).returncode != 0,
        "the impostor pod deleted",
        operator,
        timeout=120,
    )
    for s in status["stages"]:
        assert s.get("digest") != forged and s["attempts"] == 1, s
        assert s["pod"] != "impostor" and s.get("podUID"), s
    digest = status["image"]["digest"]
    assert manifest_digest(registry.host, "e2e/victim", "latest") == digest
    files = image_files(registry.host, "e2e/victim", digest)
    assert files["/out/one.txt"] == b"built by build1\n" and files["/out/two.txt"] == b"built by build2\n"


def test_another_namespace_building_the_same_output_does_not_read_this_ones_cache(
    cluster: Cluster,
    kubectl: Kubectl,
    operator: Operator,
    registry: LocalRegistry,
    base_image: str,
    tmp_path: Path,
) -> None:
    """Item 7. Two namespaces build the same output name with the default cache: the second takes no step
    from the first's cache (it would have, from the shared <output>/cache of before), and each namespace's
    layers sit in a cache repository of its own."""
    salt = uuid.uuid4().hex
    output = {"image": f"{registry.host}/e2e/cross-{salt[:8]}/app:latest"}
    dockerfile = f"FROM {base_image} AS app\nRUN echo {salt} > /salt && echo built > /built\n"
    kubectl.apply(inline_manifest("shared", dockerfile, registry.host, output=output))
    first = wait_terminal(kubectl, operator, "shared")
    assert first["status"]["phase"] == "Succeeded", first["status"].get("message")

    other_ns = f"{kubectl.namespace[:40]}-b"
    meta = {"name": other_ns, "labels": BUILD_NAMESPACE_LABELS}
    Kubectl(cluster, "default").apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    other = Kubectl(cluster, other_ns)
    op2 = Operator(cluster, other_ns, registry.host, tmp_path / "operator-b.log")
    op2.start()
    try:
        other.apply(inline_manifest("shared", dockerfile, registry.host, output=output))
        second = wait_terminal(other, op2, "shared")
    finally:
        op2.kill()
        Kubectl(cluster, "default").run("delete", "namespace", other_ns, "--wait=false", check=False)
    assert second["status"]["phase"] == "Succeeded", second["status"].get("message")
    app = stage(second, "app")
    assert app["steps"] >= 1 and app["cachedSteps"] == 0, app
    repo = output["image"].split("/", 1)[1].rsplit(":", 1)[0]
    for ns in (kubectl.namespace, other_ns):
        url = f"http://{registry.host}/v2/{repo}/cache/{ns}/tags/list"
        tags = json.loads(urllib.request.urlopen(url, timeout=30).read())
        assert tags.get("tags"), (ns, tags)
