"""Command line → `StepSpec`: everything one worker invocation needs, validated before any I/O."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from stagefleet.buildenv import insecure_from_env
from stagefleet.gitauth import has_credentials
from stagefleet.ocisource import parse_ref as parse_oci_ref
from stagefleet.stagekey import KEY_RE, key_tag
from stagefleet.stages import validate_image_reference

_DIGEST_REF = re.compile(r"^(?P<name>[^=\s]+)=(?P<ref>[^@\s]+@sha256:[0-9a-f]{64})$")
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_PINNED = re.compile(r"^[^=@\s]+@sha256:[0-9a-f]{64}$")
TERMINATION_LOG = Path("/dev/termination-log")


class UsageError(ValueError):
    """Bad command line (exit code 2)."""


@dataclass(frozen=True)
class Upstream:
    """A stage result produced by another group, consumed by digest."""

    stage: str
    ref: str  # REPO@sha256:HEX


@dataclass(frozen=True)
class UpstreamWait:
    """A stage result another group is still building: wait until it appears at `ref`, then pin it."""

    stage: str
    ref: str  # REPO:TAG (no digest): where the upstream group pushes its result


@dataclass(frozen=True)
class ImagePin:
    """An image the Dockerfile names (FROM, COPY --from, RUN --mount from=), built from one digest only.

    The operator keys the group's result by that digest; building from whatever the tag names by then
    would store a result under a key it does not match.
    """

    ref: str  # as the Dockerfile names it, after ARG expansion: 127.0.0.1:5000/base:1
    pinned: str  # REPO@sha256:HEX


@dataclass(frozen=True)
class SecretFile:
    id: str
    src: Path


@dataclass(frozen=True)
class SshKey:
    id: str
    keyfile: Path


@dataclass(frozen=True)
class StepSpec:
    """One plan group's build, as the worker understands it."""

    target: str
    push: tuple[str, ...]
    stages: tuple[str, ...] = ()
    group: str | None = None
    context: Path | None = None
    git_url: str | None = None
    git_revision: str | None = None
    git_ssh_key: Path | None = None
    git_known_hosts: Path | None = None
    git_username_file: Path | None = None
    git_password_file: Path | None = None
    git_insecure_ignore_host_key: bool = False
    oci_source: str | None = None  # host/repository@digest: a context artifact (`stagefleet.ocisource`)
    context_dir: str | None = None
    dockerfile: str = "Dockerfile"
    inline_dockerfile: Path | None = None
    upstreams: tuple[Upstream, ...] = ()
    upstream_waits: tuple[UpstreamWait, ...] = ()
    upstream_timeout: float | None = None  # seconds; None: wait as long as the pod lives
    secrets: tuple[SecretFile, ...] = ()
    ssh: tuple[SshKey, ...] = ()
    build_args: tuple[tuple[str, str], ...] = ()
    platform: str | None = None
    cache_repo: str | None = None
    mount_cache_repo: str | None = None  # RUN --mount=type=cache ids are restored from / saved to it
    no_cache: bool = False
    pins: tuple[ImagePin, ...] = ()
    stage_key: str | None = None  # 64 hex: the result is also stored as <cache_repo>:stage-<key>
    registry_auth: Path | None = None
    insecure_registries: tuple[str, ...] = ()
    storage_root: Path | None = None
    jobs: int = 1
    result_file: Path | None = None

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages reported on: the given ones, or just the target."""
        return self.stages or (self.target,)

    @property
    def key_ref(self) -> str | None:
        """Where the result is stored under its content key, with `--stage-key`."""
        if self.stage_key is None or self.cache_repo is None:
            return None
        return f"{self.cache_repo}:{key_tag(self.stage_key)}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stagefleet-worker", description="Build one stagefleet plan group with buildah.")
    src = p.add_argument_group("build context")
    src.add_argument("--context", type=Path, help="local context directory")
    src.add_argument("--git-url", help="git repository (https://, ssh://, git@host:path, file://)")
    src.add_argument("--git-revision", help="commit, tag or branch to check out (pin a commit)")
    src.add_argument("--git-ssh-key", type=Path, help="private key for ssh git URLs")
    src.add_argument("--git-known-hosts", type=Path,
                     help="known_hosts for ssh URLs; host keys not in it are refused (without it: all)")
    src.add_argument("--git-insecure-ignore-host-key", action="store_true",
                     help="ssh: accept any host key instead (insecure, a deliberate opt-out)")
    src.add_argument("--git-password-file", type=Path,
                     help="https: file holding the password or token (given to git by a credential helper)")
    src.add_argument("--git-username-file", type=Path, help="https: file holding the username (default git)")
    src.add_argument("--oci-source", metavar="REF",
                     help="context artifact HOST/REPO@sha256:... (one tar layer), unpacked as the context")
    src.add_argument("--context-dir", help="sub-directory of the context to build from")
    src.add_argument("--dockerfile", default="Dockerfile", help="path relative to the context")
    src.add_argument("--inline-dockerfile", type=Path,
                     help="Dockerfile from this file (instead of --dockerfile); alone: an empty context")
    p.add_argument("--target", required=True, help="the group's last stage")
    p.add_argument("--stage", action="append", default=[], help="the group's stages (repeat)")
    p.add_argument("--group", default=os.environ.get("STAGEFLEET_GROUP"), help="plan group id, e.g. g1")
    p.add_argument("--upstream", action="append", default=[], help="NAME=REF@sha256:HEX")
    p.add_argument("--upstream-wait", action="append", default=[], metavar="NAME=REF",
                   help="an upstream stage still being built elsewhere: prepare and pre-pull base images, "
                        "then wait until REF (a tag, no digest) exists, pin its digest and use it like "
                        "--upstream (repeat)")
    p.add_argument("--upstream-timeout", type=float, metavar="SECONDS",
                   help="give up waiting for --upstream-wait refs after this long (exit 15; default: "
                        "no limit)")
    p.add_argument("--secret", action="append", default=[], help="id=ID,src=FILE")
    p.add_argument("--ssh", action="append", default=[], help="ID=KEYFILE")
    p.add_argument("--build-arg", action="append", default=[], help="K=V")
    p.add_argument("--platform")
    p.add_argument("--cache-repo", help="registry repository for --cache-from/--cache-to")
    p.add_argument("--mount-cache-repo",
                   help="registry repository where RUN --mount=type=cache ids are kept between builds")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--pin-image", action="append", default=[], metavar="REF=REPO@sha256:HEX",
                   help="every use of image REF (FROM, COPY --from, RUN --mount from=; REF as the Dockerfile "
                        "names it after ARG expansion) builds from this digest (repeat)")
    p.add_argument("--stage-key", metavar="KEY",
                   help="content key of the target stage (64 hex): the result is also stored as "
                        "<cache-repo>:stage-KEY when every image the group uses is pinned")
    p.add_argument("--push", action="append", default=[], required=True, help="REF (first is primary)")
    p.add_argument("--registry-auth", type=Path, help="dockerconfigjson file")
    p.add_argument("--insecure-registry", action="append", default=[], help="HOST:PORT over plain HTTP")
    p.add_argument("--storage-root", type=Path, help="buildah root (default: a fresh temp dir)")
    p.add_argument("--jobs", type=int, help="parallel stages (default: CPUs available)")
    p.add_argument("--result-file", type=Path, help="default /dev/termination-log if writable")
    return p


def parse_secret(value: str) -> SecretFile:
    """`id=ID,src=FILE` (also `source=`, and `type=file`) as in `docker build --secret`."""
    fields: dict[str, str] = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        if not sep:
            raise UsageError(f"--secret {value!r}: expected id=ID,src=FILE")
        fields[key.strip()] = val
    sid, src = fields.pop("id", ""), fields.pop("src", fields.pop("source", ""))
    if fields.pop("type", "file") != "file" or fields:
        raise UsageError(f"--secret {value!r}: only id, src and type=file are supported")
    if not _ID.match(sid) or not src:
        raise UsageError(f"--secret {value!r}: expected id=ID,src=FILE")
    return SecretFile(sid, Path(src))


def parse_ssh(value: str) -> SshKey:
    sid, sep, key = value.partition("=")
    if not sep or not _ID.match(sid) or not key:
        raise UsageError(f"--ssh {value!r}: expected ID=KEYFILE")
    return SshKey(sid, Path(key))


def parse_upstream(value: str) -> Upstream:
    m = _DIGEST_REF.match(value)
    if not m:
        raise UsageError(f"--upstream {value!r}: expected NAME=REF@sha256:<64 hex>")
    return Upstream(m["name"], m["ref"])


def parse_upstream_wait(value: str) -> UpstreamWait:
    """`NAME=REF`, REF a registry reference by tag: the digest is what waiting finds out."""
    name, sep, ref = value.partition("=")
    if not sep or not name or not ref or "@" in ref or any(c.isspace() for c in value):
        raise UsageError(f"--upstream-wait {value!r}: expected NAME=REF (a tag, without @digest)")
    problem = validate_image_reference(ref)
    if problem or "/" not in ref:
        raise UsageError(f"--upstream-wait {value!r}: {problem or 'REF must name a registry repository'}")
    return UpstreamWait(name, ref)


def parse_pin(value: str) -> ImagePin:
    """`REF=REPO[:TAG]@sha256:HEX`; the tag, if any, is dropped: the digest alone decides."""
    ref, sep, pinned = value.partition("=")
    if not sep or not _PINNED.match(pinned) or validate_image_reference(pinned.partition("@")[0]):
        raise UsageError(f"--pin-image {value!r}: expected REF=REPO@sha256:<64 hex>")
    if "@" in ref or ref == "scratch" or validate_image_reference(ref):
        raise UsageError(f"--pin-image {value!r}: REF must be an image reference by name or tag")
    return ImagePin(ref, by_digest(pinned))


def by_digest(ref: str) -> str:
    """`REPO:TAG@sha256:HEX` → `REPO@sha256:HEX`: an image is consumed by its digest alone, so what the
    tag names now (overwritten since, say) never enters the build."""
    name, _, digest = ref.rpartition("@")
    if not name:
        return ref
    slash, colon = name.rfind("/"), name.rfind(":")
    return f"{name[:colon] if colon > slash else name}@{digest}"


def parse_build_arg(value: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """`K=V`; a bare `K` takes the worker's environment value (skipped when unset), like docker."""
    key, sep, val = value.partition("=")
    if not key:
        raise UsageError(f"--build-arg {value!r}: expected K=V")
    if sep:
        return key, val
    return (key, env[key]) if key in env else None


def default_result_file() -> Path | None:
    """The termination-message file when we run in a pod (it exists and is writable)."""
    return TERMINATION_LOG if os.access(TERMINATION_LOG, os.W_OK) else None


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> StepSpec:
    """Validate the command line into a `StepSpec`; raises `UsageError`."""
    env = os.environ if env is None else env
    a = build_parser().parse_args(list(argv))
    sources = [a.context is not None, a.git_url is not None, a.oci_source is not None]
    if sources.count(True) > 1:
        raise UsageError("give only one of --context, --git-url, --oci-source")
    if not any(sources) and a.inline_dockerfile is None:
        raise UsageError("give one of --context, --git-url, --oci-source, --inline-dockerfile")
    if a.oci_source is not None:
        try:
            if parse_oci_ref(a.oci_source).digest is None:
                raise ValueError(f"{a.oci_source!r} names no digest (@sha256:...): pin the artifact")
        except ValueError as e:
            raise UsageError(f"--oci-source: {e}") from None
    if a.git_url is not None and not a.git_revision:
        raise UsageError("--git-url needs --git-revision (a pinned commit)")
    git_only = (a.git_revision, a.git_ssh_key, a.git_known_hosts, a.git_insecure_ignore_host_key,
                a.git_password_file, a.git_username_file)
    if a.git_url is None and any(git_only):
        raise UsageError("--git-revision, --git-ssh-key, --git-known-hosts, --git-insecure-ignore-host-key, "
                         "--git-password-file and --git-username-file need --git-url")
    if a.git_url is not None and has_credentials(a.git_url):
        raise UsageError("--git-url must not embed credentials (a password, or a user name in an http(s) "
                         "URL): give them with --git-password-file and --git-username-file")
    if a.git_username_file is not None and a.git_password_file is None:
        raise UsageError("--git-username-file needs --git-password-file")
    if a.inline_dockerfile is not None and not any(sources) and a.context_dir:
        raise UsageError("--context-dir needs --context, --git-url or --oci-source")
    for rel in (a.context_dir, a.dockerfile):
        if rel and (Path(rel).is_absolute() or ".." in Path(rel).parts):
            raise UsageError(f"{rel!r}: must be a relative path inside the context")
    if a.jobs is not None and a.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    stages = tuple(dict.fromkeys(a.stage))
    if stages and stages[-1] != a.target:
        raise UsageError(f"--target {a.target!r} must be the last --stage")
    secrets = tuple(parse_secret(s) for s in a.secret)
    ssh = tuple(parse_ssh(s) for s in a.ssh)
    for kind, ids in (("--secret", [s.id for s in secrets]), ("--ssh", [s.id for s in ssh])):
        if len(set(ids)) != len(ids):
            raise UsageError(f"{kind}: duplicate id")
    upstreams = tuple(parse_upstream(u) for u in a.upstream)
    waits = tuple(parse_upstream_wait(u) for u in a.upstream_wait)
    consumed = [u.stage for u in upstreams] + [w.stage for w in waits]
    if len(set(consumed)) != len(consumed):
        raise UsageError("--upstream/--upstream-wait: a stage is given more than once")
    if a.upstream_timeout is not None and not a.upstream_timeout > 0:
        raise UsageError("--upstream-timeout must be a positive number of seconds")
    pins = tuple(parse_pin(v) for v in a.pin_image)
    pinned_refs = [p.ref for p in pins]
    if len(set(pinned_refs)) != len(pinned_refs):
        raise UsageError("--pin-image: an image is given more than once")
    if set(pinned_refs) & set(consumed):  # both become --build-context NAME=...
        raise UsageError("--pin-image: REF names a stage given with --upstream/--upstream-wait")
    if a.stage_key is not None:
        if not KEY_RE.match(a.stage_key):
            raise UsageError(f"--stage-key {a.stage_key!r}: expected 64 lower-case hex digits")
        if not a.cache_repo:
            raise UsageError("--stage-key needs --cache-repo (the key tag is stored there)")
        if validate_image_reference(f"{a.cache_repo}:{key_tag(a.stage_key)}") or "@" in a.cache_repo:
            raise UsageError(f"--cache-repo {a.cache_repo!r}: with --stage-key, a repository without tag")
    build_args = tuple(kv for kv in (parse_build_arg(b, env) for b in a.build_arg) if kv is not None)
    return StepSpec(
        target=a.target,
        push=tuple(a.push),
        stages=stages,
        group=a.group or None,
        context=a.context,
        git_url=a.git_url,
        oci_source=a.oci_source,
        git_revision=a.git_revision,
        git_ssh_key=a.git_ssh_key,
        git_known_hosts=a.git_known_hosts,
        git_username_file=a.git_username_file,
        git_password_file=a.git_password_file,
        git_insecure_ignore_host_key=a.git_insecure_ignore_host_key,
        context_dir=a.context_dir,
        dockerfile=a.dockerfile,
        inline_dockerfile=a.inline_dockerfile,
        upstreams=upstreams,
        upstream_waits=waits,
        upstream_timeout=a.upstream_timeout,
        secrets=secrets,
        ssh=ssh,
        build_args=build_args,
        platform=a.platform,
        cache_repo=a.cache_repo,
        mount_cache_repo=a.mount_cache_repo or None,
        no_cache=a.no_cache,
        pins=pins,
        stage_key=a.stage_key,
        registry_auth=a.registry_auth,
        insecure_registries=tuple(dict.fromkeys([*a.insecure_registry, *insecure_from_env(env)])),
        storage_root=a.storage_root,
        jobs=a.jobs or available_cpus(),
        result_file=a.result_file or default_result_file(),
    )
