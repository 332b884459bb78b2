"""Layer cache in the registry (`--cache-from/--cache-to`) and `RUN --mount=type=cache` on one worker."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry

from .helpers import image_files, run_worker, skopeo_inspect, write_context

pytestmark = pytest.mark.builder


def test_second_run_on_fresh_storage_takes_every_step_from_registry_cache(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    h = registry.host
    salt = secrets.token_hex(4)  # keeps this test's steps out of other tests' cache
    ctx = write_context(tmp_path / "ctx", f"""FROM {base_image} AS app
ENV SALT={salt}
RUN echo one > /one
RUN echo two > /two && sleep 1
COPY hello.txt /hello.txt
RUN cat /one /two /hello.txt > /all
""", {"hello.txt": "hello\n"})
    args = ["--context", str(ctx), "--target", "app", "--cache-repo", f"{h}/cache/{salt}",
            "--push", f"{h}/cached/{salt}:1"]
    cold = run_worker(args, registry_host=h, tmp=tmp_path / "pod1")
    assert cold.code == 0, cold.stderr + cold.stdout
    assert cold.result["cachedSteps"] == 0 and cold.result["steps"] == 5
    assert not any("Using cache" in line for line in cold.lines)

    warm = run_worker(args, registry_host=h, tmp=tmp_path / "pod2")  # a different, fresh storage root
    assert warm.code == 0, warm.stderr + warm.stdout
    hits = [line for line in warm.lines if line.startswith("[app] --> Using cache ")]
    assert len(hits) == 5
    assert warm.result["cachedSteps"] == warm.result["steps"] == 5
    assert warm.result["stages"][0]["cachedSteps"] == 5
    steps = [i for i, line in enumerate(warm.lines) if "STEP" in line and " RUN " in line]
    assert len(steps) == 3
    for i in steps:  # each RUN step is answered by a cache hit before the next step starts
        following = warm.lines[i + 1:]
        nxt = next((j for j, line in enumerate(following) if " STEP " in line or " COMMIT" in line),
                   len(following))
        assert any("--> Using cache" in line for line in following[:nxt]), warm.lines[i]
    assert image_files(h, f"cached/{salt}", warm.result["digest"])["/all"] == b"one\ntwo\nhello\n"


def test_cache_mount_persists_between_builds_on_one_worker(
        registry: LocalRegistry, base_image: str, tmp_path: Path,
        buildah_env: Callable[[Path], dict[str, str]]) -> None:
    h = registry.host
    ctx = write_context(tmp_path / "ctx", f"""FROM {base_image} AS app
ARG ROUND
RUN --mount=type=cache,id=sfcache,target=/cache echo "round $ROUND" >> /cache/log && cp /cache/log /seen
""")
    root = tmp_path / "worker-root"  # one worker's storage root (and so its TMPDIR) for both builds
    buildah_env(root)  # removed again (with its short TMPDIR link) when the test ends
    repo = f"cachemount/{secrets.token_hex(4)}"
    digests = []
    for n in (1, 2):
        r = run_worker(["--context", str(ctx), "--target", "app", "--build-arg", f"ROUND={n}",
                        "--storage-root", str(root), "--push", f"{h}/{repo}:{n}"],
                       registry_host=h, tmp=tmp_path / f"tmp{n}")
        assert r.code == 0, r.stderr + r.stdout
        digests.append(r.result["digest"])
    assert image_files(h, repo, digests[0])["/seen"] == b"round 1\n"
    assert image_files(h, repo, digests[1])["/seen"] == b"round 1\nround 2\n"
    # and a fresh root does not see it
    r = run_worker(["--context", str(ctx), "--target", "app", "--build-arg", "ROUND=3",
                    "--push", f"{h}/{repo}:3"], registry_host=h, tmp=tmp_path / "tmp3")
    assert r.code == 0, r.stderr
    assert image_files(h, repo, r.result["digest"])["/seen"] == b"round 3\n"



def test_cache_mounts_outlive_the_pod_through_the_registry(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    """`--mount-cache-repo`: every build on a fresh storage root (a new pod) finds what the last build of
    the repository left in each cache id (6 MiB of it incompressible: more than a manifest's read limit),
    an id is saved only when its content changed, and another
    repository (another namespace's) starts empty."""
    h = registry.host
    ctx = write_context(tmp_path / "ctx", f"""FROM {base_image} AS app
ARG ROUND
RUN --mount=type=cache,id=sfshared,target=/cache echo "round $ROUND" >> /cache/log && cp /cache/log /seen \
    && ([ -f /cache/big ] || dd if=/dev/urandom of=/cache/big bs=1M count=6 2>/dev/null)
RUN --mount=type=cache,target=/var/cache/untouched cat /var/cache/untouched/* > /untouched 2>/dev/null; true
""")
    shared = f"{h}/mounts/{secrets.token_hex(4)}"
    repo = f"cachemount/{secrets.token_hex(4)}"

    def build(n: int, cache: str) -> tuple[bytes, list[str]]:
        r = run_worker(["--context", str(ctx), "--target", "app", "--build-arg", f"ROUND={n}",
                        "--mount-cache-repo", cache, "--push", f"{h}/{repo}:{n}"],
                       registry_host=h, tmp=tmp_path / f"pod{n}")  # a fresh storage root each
        assert r.code == 0, r.stderr + r.stdout
        notes = [ln for ln in r.stderr.splitlines() if "cache mount" in ln]
        return image_files(h, repo, r.result["digest"])["/seen"], notes

    seen, notes = build(1, shared)
    assert seen == b"round 1\n"
    assert any("cache mount sfshared: saved" in n for n in notes), notes
    assert not any("restored" in n for n in notes), notes
    seen, notes = build(2, shared)
    assert seen == b"round 1\nround 2\n", notes
    assert any("cache mount sfshared: restored" in n for n in notes), notes
    assert not any("cache mount var/cache/untouched: saved" in n for n in notes), notes  # unchanged
    seen, _ = build(3, f"{h}/mounts/other-{secrets.token_hex(4)}")
    assert seen == b"round 3\n"


def test_warm_rebuild_reports_the_registry_digest_without_pushing_again(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    """Every step cached → the same image: tags that already serve it are not pushed to again, the
    result still names the digest the registry serves under every --push reference; a tag that lacks
    it (or holds another image) makes the worker push to all of them as before."""
    h = registry.host
    salt = secrets.token_hex(4)
    ctx = write_context(tmp_path / "ctx", f"FROM {base_image} AS app\nENV SALT={salt}\n"
                        "RUN echo warm > /w\nCOPY hello.txt /hello.txt\n", {"hello.txt": "hi\n"})
    repo = f"skip/{salt}"
    common = ["--context", str(ctx), "--target", "app", "--cache-repo", f"{h}/cache/{salt}"]
    tags = ["--push", f"{h}/{repo}:1", "--push", f"{h}/{repo}:latest"]
    cold = run_worker([*common, *tags], registry_host=h, tmp=tmp_path / "pod1")
    assert cold.code == 0, cold.stderr + cold.stdout
    assert cold.stderr.count("stagefleet-worker: pushed ") == 2
    digest = cold.result["digest"]

    warm = run_worker([*common, *tags], registry_host=h, tmp=tmp_path / "pod2")  # fresh storage root
    assert warm.code == 0, warm.stderr + warm.stdout
    assert warm.result["cachedSteps"] == warm.result["steps"] == 3
    assert warm.result["digest"] == digest and warm.result["image"] == f"{h}/{repo}:1"
    assert warm.stderr.count("already serves this image") == 2 and "worker: pushed " not in warm.stderr
    for tag in ("1", "latest"):
        assert skopeo_inspect(f"{h}/{repo}:{tag}")["Digest"] == digest
    assert image_files(h, repo, digest)["/w"] == b"warm\n"

    # a new tag next to one that has it: pushed to both, the same digest
    other = f"{h}/{repo}:2"
    mixed = run_worker([*common, "--push", f"{h}/{repo}:1", "--push", other], registry_host=h,
                       tmp=tmp_path / "pod3")
    assert mixed.code == 0, mixed.stderr + mixed.stdout
    assert mixed.stderr.count("stagefleet-worker: pushed ") == 2 and "already serves" not in mixed.stderr
    assert mixed.result["digest"] == digest == skopeo_inspect(other)["Digest"]

    # a tag that serves a different image is overwritten with ours
    ctx2 = write_context(tmp_path / "ctx2", f"FROM {base_image} AS app\nRUN echo other-{salt} > /o\n")
    taken = run_worker(["--context", str(ctx2), "--target", "app", "--push", f"{h}/{repo}:taken"],
                       registry_host=h, tmp=tmp_path / "pod4")
    assert taken.code == 0 and taken.result["digest"] != digest, taken.stderr
    again = run_worker([*common, "--push", f"{h}/{repo}:taken"], registry_host=h, tmp=tmp_path / "pod5")
    assert again.code == 0, again.stderr + again.stdout
    assert "already serves" not in again.stderr and again.result["digest"] == digest
    assert skopeo_inspect(f"{h}/{repo}:taken")["Digest"] == digest
