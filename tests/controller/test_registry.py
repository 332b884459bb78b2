"""The operator's registry client (controller/registry.py) against a real docker-registry (distribution 2.8):
a build's stage tags removed, a digest another tag shares never deleted, basic auth from a dockerconfigjson,
and deletion disabled reported as `Unsupported` (405)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagefleet.controller.registry import Registry, RegistryError, Unsupported, remove_build_tags
from stagefleet.localregistry import LocalRegistry

USER, PASSWORD = "robot", "pw-31b7c0e2d4"
REPO = "e2e/app/stages/ns"
pytestmark = pytest.mark.skipif(shutil.which("docker-registry") is None, reason="docker-registry missing")


def _call(reg: LocalRegistry, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = dict(headers or {})
    if reg.htpasswd is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    req = urllib.request.Request(reg.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def push(reg: LocalRegistry, tag: str, content: str) -> str:
    """A tiny image (a config blob, no layers) under ``tag``; the same ``content`` gives the same digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "content": content,
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    _, headers, _ = _call(reg, "POST", f"/v2/{REPO}/blobs/uploads/")
    location = headers["Location"].replace(reg.url, "")
    sep = "&" if "?" in location else "?"
    status, _, _ = _call(reg, "PUT", f"{location}{sep}digest={digest}", config,
                         {"Content-Type": "application/octet-stream"})
    assert status == 201
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest, "size": len(config)},
                           "layers": []}).encode()
    status, headers, _ = _call(reg, "PUT", f"/v2/{REPO}/manifests/{tag}", manifest,
                               {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 201
    return headers["Docker-Content-Digest"]


def tags(reg: LocalRegistry) -> set[str]:
    status, _, body = _call(reg, "GET", f"/v2/{REPO}/tags/list")
    return set(json.loads(body).get("tags") or ()) if status == 200 else set()


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:  # pragma: no cover - Python >= 3.13
            pytest.skip("no crypt module to make a bcrypt htpasswd entry")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"{USER}:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    with LocalRegistry(tmp_path / "reg", htpasswd=htpasswd) as reg:
        yield reg


def dockerconfigjson(host: str) -> str:
    return json.dumps({"auths": {host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}})


def test_own_tags_go_and_a_shared_digest_keeps_the_other_builds_tag(auth_registry: LocalRegistry) -> None:
    reg = auth_registry
    push(reg, "mine-1-g1-a1", "only mine")
    push(reg, "mine-1-g1-a2", "only mine")  # same digest, both ours: one DELETE
    shared = push(reg, "mine-1-g2-a1", "identical stage")
    assert push(reg, "theirs-1-g2-a1", "identical stage") == shared
    push(reg, "theirs-1-g1-a1", "theirs")
    client = Registry(reg.host, insecure=True, auth_config=dockerconfigjson(reg.host))

    done, found, error = remove_build_tags(client, REPO, lambda t: t.startswith("mine-"))

    assert (done, found, error) == (3, 3, None)
    assert tags(reg) == {"theirs-1-g2-a1", "theirs-1-g1-a1"}
    assert client.digest(REPO, "theirs-1-g2-a1") == shared  # its manifest is still there
    assert remove_build_tags(client, REPO, lambda t: t.startswith("mine-")) == (0, 0, None)
    assert remove_build_tags(client, "e2e/none/stages/ns", lambda t: True) == (0, 0, None)  # no such repo


def test_without_credentials_the_registry_refusal_is_reported(auth_registry: LocalRegistry) -> None:
    push(auth_registry, "mine-1-g1-a1", "x")
    with pytest.raises(RegistryError, match="401 unauthorized") as e:
        remove_build_tags(Registry(auth_registry.host, insecure=True), REPO, lambda t: True)
    assert not e.value.transient
    assert tags(auth_registry) == {"mine-1-g1-a1"}


def test_deletion_disabled_is_unsupported_and_keeps_the_tags(tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "reg", delete=False) as reg:
        push(reg, "mine-1-g1-a1", "x")
        done, found, error = remove_build_tags(Registry(reg.host, insecure=True), REPO, lambda t: True)
        assert (done, found) == (0, 1)
        assert isinstance(error, Unsupported) and "405" in str(error) and not error.transient
        assert tags(reg) == {"mine-1-g1-a1"}


def test_an_unreachable_registry_is_a_transient_error(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "reg")  # never started: nothing listens on its port
    with pytest.raises(RegistryError) as e:
        Registry(reg.host, insecure=True, timeout=1.0).tags(REPO)
    assert e.value.transient


def test_a_stored_result_is_copied_to_the_output_tags_with_its_digest(auth_registry: LocalRegistry) -> None:
    """What a fully reused build does instead of a pod (`reuse.copy_image`): the manifest of the result
    stored under its key tag is put under every output tag of another repository, the blobs mounted
    across repositories (no data moves), and every output tag names the very same digest."""
    from stagefleet.controller.reuse import copy_image

    reg = auth_registry
    stored = push(reg, "stage-" + "a" * 64, "a reused result")
    client = Registry(reg.host, insecure=True, auth_config=dockerconfigjson(reg.host))
    targets = [f"{reg.host}/team/app:v1", f"{reg.host}/team/app:latest"]

    copy_image(client, f"{reg.host}/{REPO}:stage-{'a' * 64}", stored, targets)

    for tag in ("v1", "latest"):
        assert client.digest("team/app", tag) == stored
    config = json.loads(client.manifest("team/app", "v1")[1])["config"]["digest"]
    status, _, body = _call(reg, "GET", f"/v2/team/app/blobs/{config}")
    assert status == 200 and b"a reused result" in body
    with pytest.raises(RegistryError, match="not in registry"):
        copy_image(client, f"{reg.host}/{REPO}:x", stored, ["other.example:5000/team/app:v1"])
    with pytest.raises(RegistryError, match="404"):
        copy_image(client, f"{reg.host}/{REPO}:x", "sha256:" + "0" * 64, targets)
