"""Pure: a `StepSpec` (plus what fetching produced) → the buildah command lines to run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from stagefleet.worker.spec import StepSpec, by_digest

__all__ = ["build_argv", "by_digest", "image_digest_argv", "images_argv", "pull_argv", "push_argv"]


def build_argv(spec: StepSpec, *, context_dir: Path, dockerfile: Path, iidfile: Path,
               ssh_sockets: Mapping[str, str], stage_names: Mapping[str, str] | None = None,
               image_contexts: Mapping[str, str] | None = None) -> list[str]:
    """`buildah build` for the group's target.

    Upstream stages are replaced by their pushed images with `--build-context`, so the Dockerfile is
    never rewritten; `--layers` with the cache repository lets a fresh pod reuse any earlier pod's steps.
    `stage_names` maps plan stage names to buildah's where they differ (unnamed stages: their index).
    Pinned images are replaced the same way: `image_contexts` (name → REPO@sha256:HEX, from
    `pins.plan_pins`), by default each `--pin-image` under its own name.
    """
    names = stage_names or {}
    target = names.get(spec.target, spec.target)
    argv = ["buildah", "build", "--layers", "--force-rm", "--target", target, "--file", str(dockerfile),
            "--iidfile", str(iidfile), "--jobs", str(spec.jobs)]
    if spec.platform:
        argv += ["--platform", spec.platform]
    for key, value in spec.build_args:
        argv += ["--build-arg", f"{key}={value}"]
    for up in spec.upstreams:
        argv += ["--build-context", f"{names.get(up.stage, up.stage)}=docker-image://{by_digest(up.ref)}"]
    images = {p.ref: p.pinned for p in spec.pins} if image_contexts is None else image_contexts
    for name, pinned in sorted(images.items()):
        argv += ["--build-context", f"{name}=docker-image://{by_digest(pinned)}"]
    for secret in spec.secrets:
        argv += ["--secret", f"id={secret.id},src={secret.src}"]
    for sid, sock in sorted(ssh_sockets.items()):
        argv += ["--ssh", f"{sid}={sock}"]
    if spec.no_cache:
        argv.append("--no-cache")
    if spec.cache_repo:
        argv += ["--cache-to", spec.cache_repo]
        if not spec.no_cache:
            argv += ["--cache-from", spec.cache_repo]
    argv.append(str(context_dir))
    return argv


def push_argv(image_id: str, ref: str, digestfile: Path) -> list[str]:
    """`buildah push` of the built image to one reference; the digest lands in `digestfile`.

    Retrying is tenacity's backoff (push.py). buildah 1.28 retries three times whatever `--retry` says
    (0 included), 2 s apart by default; a 10 ms delay makes its own retries cost nothing.
    """
    return ["buildah", "push", "--retry", "0", "--retry-delay", "10ms", "--digestfile", str(digestfile),
            image_id, f"docker://{ref}"]


def pull_argv(ref: str, *, platform: str | None = None) -> list[str]:
    """`buildah pull` of one image into this root's storage, printing only its image ID.

    buildah 1.28 reads `--retry 0` as "the default, 3"; the 10 ms delay keeps those retries from
    stretching a poll (the caller's loop is the real retry).
    """
    argv = ["buildah", "pull", "--quiet", "--retry", "0", "--retry-delay", "10ms"]
    if platform:
        argv += ["--platform", platform]
    return [*argv, f"docker://{ref}"]


def images_argv(ref: str) -> list[str]:
    """The images this root's storage holds under `ref` (exit 125, "image not known", for none)."""
    return ["buildah", "images", "--json", "--no-trunc", ref]


def image_digest_argv(ref: str) -> list[str]:
    """The registry manifest digest of a pulled image, as `buildah images` records it."""
    return ["buildah", "images", "--digests", "--no-trunc", "--format", "{{.Digest}}", ref]
