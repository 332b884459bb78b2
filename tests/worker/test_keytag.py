"""`--stage-key` and `--pin-image` with the real buildah and registry: the result stored under its key tag
with the result's digest, a pin winning over what its tag names now, and no key tag for a result the
worker cannot vouch for."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry
from stagefleet.stagekey import key_tag

from .helpers import MANIFEST_TYPES, image_files, run_worker, skopeo_inspect, write_context

pytestmark = pytest.mark.builder


def served(host: str, repo: str, tag: str) -> str | None:
    """The digest of the manifest the registry serves under `tag` (its bytes hashed), None for 404."""
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return "sha256:" + hashlib.sha256(resp.read()).hexdigest()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def test_result_is_stored_under_its_key_only_when_its_base_is_pinned(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    h = registry.host
    salt = secrets.token_hex(4)
    base_digest = skopeo_inspect(base_image)["Digest"]
    base_repo = base_image.rsplit(":", 1)[0]
    ctx = write_context(tmp_path / "ctx", f"""FROM {base_image} AS one
RUN echo {salt} > /one
FROM one AS two
RUN cat /one > /two
""")
    cache = f"keys/{salt}/cache"
    key, other_key = (hashlib.sha256(f"{salt}-{i}".encode()).hexdigest() for i in (1, 2))
    common = ["--context", str(ctx), "--target", "two", "--stage", "one", "--stage", "two",
              "--cache-repo", f"{h}/{cache}", "--push", f"{h}/keys/{salt}/app:1"]
    pin = f"{base_image}={base_repo}@{base_digest}"
    r = run_worker([*common, "--stage-key", key, "--pin-image", pin], registry_host=h, tmp=tmp_path / "pod1")
    assert r.code == 0, r.stderr + r.stdout
    assert r.result["key"] == key and r.result["keyTagged"] is True
    assert served(h, cache, key_tag(key)) == r.result["digest"] == served(h, f"keys/{salt}/app", "1")
    assert f"stored as {h}/{cache}:{key_tag(key)}@{r.result['digest']} (manifest copied in " in r.stderr
    assert f"[one] STEP 1/2: FROM {base_repo}@{base_digest} AS one" in r.lines  # the pin, by digest
    assert image_files(h, cache, key_tag(key))["/two"] == f"{salt}\n".encode()

    # the result pushed under another registry name (the same registry, as far as the worker can tell
    # another one): no manifest copy across registries, `buildah push` to the key tag, the same digest
    third_key = hashlib.sha256(f"{salt}-3".encode()).hexdigest()
    elsewhere = f"localhost:{registry.port}"
    r = run_worker([*common[:-2], "--push", f"{elsewhere}/keys/{salt}/app:1",
                    "--insecure-registry", elsewhere, "--stage-key", third_key, "--pin-image", pin],
                   registry_host=h, tmp=tmp_path / "pod3")
    assert r.code == 0, r.stderr + r.stdout
    assert "cannot copy the manifest (no --push reference in its registry); pushing instead" in r.stderr
    assert r.result["keyTagged"] is True and served(h, cache, key_tag(third_key)) == r.result["digest"]

    # the same build without the pin: built and pushed as ever, but not stored under a key
    r = run_worker([*common, "--stage-key", other_key], registry_host=h, tmp=tmp_path / "pod2")
    assert r.code == 0, r.stderr + r.stdout
    assert r.result["key"] == other_key and r.result["keyTagged"] is False
    assert (f"result not stored under its key ({h}/{cache}:{key_tag(other_key)}): not every image it builds "
            f"from is pinned (--pin-image): {base_image}") in r.stderr
    assert served(h, cache, key_tag(other_key)) is None


def test_a_pin_wins_over_what_its_tag_names_now(
        registry: LocalRegistry, base_image: str, tmp_path: Path,
        buildah_env: Callable[[Path], dict[str, str]]) -> None:
    """The base's tag moves after the operator pinned it: FROM (literal and through an ARG), COPY --from
    and RUN --mount from= all build from the pinned digest, and the result gets its key tag. A storage
    root that holds the tag's newer image (a reused --storage-root) keeps the worker from vouching for
    the result: built from the pin all the same, but no key tag."""
    h = registry.host
    salt = secrets.token_hex(4)
    repo = f"pins/{salt}/base"
    ref = f"{h}/{repo}:1"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{base_image}", f"docker://{ref}"], check=True, capture_output=True, timeout=60)
    old = skopeo_inspect(ref)["Digest"]
    move = write_context(tmp_path / "move", f"FROM {ref}\nRUN echo moved > /marker\n")
    moved = run_worker(["--context", str(move), "--target", "stage-0", "--push", ref], registry_host=h,
                       tmp=tmp_path / "move-pod")
    assert moved.code == 0 and moved.result["digest"] != old, moved.stderr + moved.stdout

    ctx = write_context(tmp_path / "ctx", f"""ARG BASE
FROM ${{BASE}} AS one
RUN (cat /marker 2>/dev/null || echo {salt}) > /one
FROM {ref} AS two
COPY --from=one /one /one
COPY --from={ref} / /copied/
RUN (cat /marker 2>/dev/null || echo {salt}) > /two
RUN --mount=type=bind,from={ref},target=/m (cat /m/marker 2>/dev/null || echo {salt}) > /three
""")
    cache = f"pins/{salt}/cache"
    key = hashlib.sha256(salt.encode()).hexdigest()
    args = ["--context", str(ctx), "--target", "two", "--build-arg", f"BASE={ref}",
            "--cache-repo", f"{h}/{cache}", "--pin-image", f"{ref}={h}/{repo}@{old}",
            "--push", f"{h}/pins/{salt}/app:1"]
    r = run_worker([*args, "--stage-key", key], registry_host=h, tmp=tmp_path / "pod1")
    assert r.code == 0, r.stderr + r.stdout
    files = image_files(h, f"pins/{salt}/app", r.result["digest"])
    assert files["/one"] == files["/two"] == files["/three"] == f"{salt}\n".encode()  # no /marker anywhere
    assert "/copied/bin/busybox" in files and "/copied/marker" not in files
    assert r.result["keyTagged"] is True and served(h, cache, key_tag(key)) == r.result["digest"]

    # a storage root where the tag was pulled (by an earlier build, say) now holds the moved image
    root = tmp_path / "reused-root"
    env = buildah_env(root)
    subprocess.run(["buildah", "pull", "--quiet", f"docker://{ref}"], env=env, check=True,
                   capture_output=True, timeout=120)
    key2 = hashlib.sha256(f"{salt}-2".encode()).hexdigest()
    again = run_worker([*args, "--stage-key", key2, "--storage-root", str(root)], registry_host=h,
                       tmp=tmp_path / "pod2")
    assert again.code == 0, again.stderr + again.stdout
    assert image_files(h, f"pins/{salt}/app", again.result["digest"])["/two"] == f"{salt}\n".encode()
    assert again.result["keyTagged"] is False and served(h, cache, key_tag(key2)) is None
    assert f"{ref} was resolved by its tag to {moved.result['digest']}, not the pinned {old}" in again.stderr
