"""Build secrets from a Kubernetes Secret (scoped to the pod that uses them, never leaked) and the registry
cache shared between ImageBuilds."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from stagefleet import health
from stagefleet.controller.podspec import secret_names_in_pod
from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, inline_manifest, stage, wait_for, wait_terminal
from .oci import blobs_containing, image_files

pytestmark = [pytest.mark.cluster, pytest.mark.builder]


@pytest.mark.tiers("real")
def test_missing_secret_stalls_then_secret_is_scoped_and_never_leaks(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    dockerfile = (
        f"FROM {base_image} AS withsecret\n"
        'RUN --mount=type=secret,id=token,required=true test "$(wc -c < /run/secrets/token)" -gt 0 '
        "&& echo used > /used\n"
        f"FROM {base_image} AS plain\nRUN echo plain > /plain\n"
        f"FROM {base_image} AS final\nCOPY --from=withsecret /used /used\nCOPY --from=plain /plain /plain\n"
    )
    manifest = inline_manifest(
        "secret",
        dockerfile,
        registry.host,
        secrets=[{"id": "token", "secretRef": {"name": "build-token", "key": "token"}}],
    )
    kubectl.apply(manifest)

    # No Secret yet: Stalled, naming the Secret and the field that refers to it; no pod starts.
    obj = wait_for(
        kubectl,
        operator,
        "secret",
        lambda o: any(
            c["type"] == "Stalled" and c["status"] == "True"
            for c in (o.get("status") or {}).get("conditions") or ()
        ),
        "Stalled",
    )
    msg = obj["status"]["message"]
    assert 'Secret "build-token"' in msg and "spec.secrets[0].secretRef" in msg
    assert (
        next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")["reason"] == "SecretNotFound"
    )
    assert health.convention_problems(obj) == []
    assert kubectl.pods("secret") == []

    # The Secret appears: the build goes on by itself.
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "build-token"},
            "type": "Opaque",
            "data": {"token": base64.b64encode(canary.encode()).decode()},
        }
    )
    obj = wait_terminal(kubectl, operator, "secret")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    files = image_files(registry.host, "e2e/secret", obj["status"]["image"]["digest"])
    assert files["/used"] == b"used\n"

    # Only the pod of the stage that uses the secret mounts the Secret.
    pods = {p["metadata"]["annotations"]["stagefleet.io/target"]: p for p in kubectl.pods("secret")}
    assert secret_names_in_pod(pods["withsecret"]) == ["build-token"]
    assert secret_names_in_pod(pods["plain"]) == [] and secret_names_in_pod(pods["final"]) == []

    # The canary is nowhere: image files, registry blobs, pod logs, events, status, operator log.
    assert not any(canary.encode() in content for content in files.values())
    assert blobs_containing(registry.data_dir, canary.encode()) == []
    for name in (p["metadata"]["name"] for p in pods.values()):
        assert canary not in kubectl.run("logs", name).stdout
    assert canary not in json.dumps(kubectl.events())
    assert canary not in json.dumps(kubectl.ib("secret"))
    assert canary not in operator.log.read_text(errors="replace")


@pytest.mark.tiers("real")
def test_second_build_takes_steps_from_the_registry_cache(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str, namespace: str
) -> None:
    # No stage-local ARG: buildah (1.x) never answers an ARG step from a remote cache, which would
    # invalidate every later step of the stage (see the report on the seed's `ARG SLEEP`).
    dockerfile = (
        f"FROM {base_image} AS build1\nRUN sleep 1 && echo one > /one\n"
        f"FROM {base_image} AS build2\nRUN sleep 1 && echo two > /two\n"
        f"FROM {base_image} AS final\nCOPY --from=build1 /one /one\nCOPY --from=build2 /two /two\n"
    )
    # The layer cache itself: stage reuse off, or the second build would start no pod at all (test_reuse.py)
    cache = {"repository": f"{registry.host}/e2e/{namespace}/cache", "reuseStages": False}
    kubectl.apply(inline_manifest("first", dockerfile, registry.host, cache=cache))
    first = wait_terminal(kubectl, operator, "first")
    assert first["status"]["phase"] == "Succeeded", first["status"]["message"]
    assert stage(first, "build1")["cachedSteps"] == 0

    kubectl.apply(inline_manifest("second", dockerfile, registry.host, cache=cache))
    second = wait_terminal(kubectl, operator, "second")
    assert second["status"]["phase"] == "Succeeded", second["status"]["message"]
    for name in ("build1", "build2"):
        s = stage(second, name)
        assert s["cachedSteps"] >= 1 and s["cachedSteps"] == s["steps"], s
    assert second["status"]["image"]["digest"] == first["status"]["image"]["digest"]



@pytest.mark.tiers("real")
def test_cache_mounts_are_shared_by_the_namespaces_builds(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str, namespace: str
) -> None:
    """`RUN --mount=type=cache` outlives the worker pod (worker.cachemounts): a later build with the same
    cache repository finds what an earlier one left in the id, as on one BuildKit daemon."""
    dockerfile = (f"FROM {base_image}\nARG WHO\n"
                  'RUN --mount=type=cache,id=downloads,target=/cache echo "$WHO" >> /cache/log '
                  "&& cp /cache/log /seen\n")
    cache = {"repository": f"{registry.host}/e2e/{namespace}/mounts"}
    seen = []
    for who in ("first", "second"):
        kubectl.apply(inline_manifest(f"mount-{who}", dockerfile, registry.host, cache=cache,
                                      buildArgs={"WHO": who}))
        done = wait_terminal(kubectl, operator, f"mount-{who}")
        assert done["status"]["phase"] == "Succeeded", done["status"]["message"]
        digest = done["status"]["image"]["digest"]
        seen.append(image_files(registry.host, f"e2e/mount-{who}", digest)["/seen"])
    assert seen == [b"first\n", b"first\nsecond\n"]


@pytest.mark.tiers("real")
def test_secret_without_the_key_stalls_naming_the_key(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    dockerfile = (
        f"FROM {base_image} AS app\n"
        "RUN --mount=type=secret,id=npm,required=true test -s /run/secrets/npm && echo ok > /ok\n"
    )
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "tokens"},
            "type": "Opaque",
            "data": {"other": base64.b64encode(b"x").decode()},
        }
    )
    kubectl.apply(
        inline_manifest(
            "keyed",
            dockerfile,
            registry.host,
            secrets=[{"id": "npm", "secretRef": {"name": "tokens", "key": "npm"}}],
        )
    )
    obj = wait_for(
        kubectl,
        operator,
        "keyed",
        lambda o: "has no key" in (o.get("status") or {}).get("message", ""),
        "a message naming the missing key",
    )
    assert 'Secret "tokens" has no key "npm" (spec.secrets[0].secretRef.key)' in obj["status"]["message"]
    assert kubectl.pods("keyed") == []
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "tokens"},
            "type": "Opaque",
            "data": {"other": base64.b64encode(b"x").decode(), "npm": base64.b64encode(b"t0k").decode()},
        }
    )
    obj = wait_terminal(kubectl, operator, "keyed")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
