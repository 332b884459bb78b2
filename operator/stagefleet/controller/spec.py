"""Typed view of an ImageBuild's spec.

The CRD schema refuses most bad specs at apply time, but the operator must not trust that (an API server
without CEL — Kubernetes 1.24 drops the CRD's x-kubernetes-validations unless the
CustomResourceValidationExpressions feature gate is on —, an old CRD, a hand-edited object): every check
is repeated here, each CEL rule too (with the rule's message), and a failure names the field path, so the
status message points at what to fix. Defaults mirror the CRD's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stagefleet.buildstate.retries import DEFAULT_RETRIES, MAX_RETRIES
from stagefleet.ctxpath import lexical_problem, normalise
from stagefleet.gitauth import has_credentials, is_http_url, is_ssh_url
from stagefleet.imageindex import PLATFORM_RE
from stagefleet.ocisource import parse_ref as parse_oci_ref

DEFAULT_BUILDER_IMAGE = "ghcr.io/stagefleet/builder:0.1.0"
DEFAULT_TIMEOUT_SECONDS = 3600
DEFAULT_MAX_PARALLEL_PODS = 8

# A Kubernetes object name (DNS-1123 subdomain): Secrets, ServiceAccounts, PriorityClasses.
OBJECT_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_RE = OBJECT_NAME_RE
_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO_RE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+$")
_ARG_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_GIT_URL_RE = re.compile(r"^(https?://|ssh://|git://|file://|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:).+$")
# The CRD's pattern for spec.source.git.url: the schemes above, no user:password@ in the authority, and no
# user@ at all in an http(s) one (a token given as the user name).
GIT_URL_PATTERN = (r"^(https?://[^/?#@]*([/?#].*)?|(ssh|git|file)://([^/?#@:]*@)?[^/?#@]*([/?#].*)?"
                   r"|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:.+)$")


class SpecError(ValueError):
    """An invalid ImageBuild spec; ``str(e)`` is ``"<field path>: <message>"``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


MIN_POLL_SECONDS = 10  # shared git hosts: a farm of builds polling every second would flood them
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000  # spec.priority
MAX_PLATFORMS = 8


@dataclass(frozen=True)
class GitSource:
    url: str
    revision: str
    secret: SecretRef | None
    insecure_ignore_host_key: bool = False
    poll_seconds: int | None = None  # pollInterval: ask the revision's commit again after a run (`polling`)

    @property
    def ssh(self) -> bool:
        return is_ssh_url(self.url)


@dataclass(frozen=True)
class OciSource:
    """spec.source.oci: a context pushed to a registry as a one-layer image (`stagefleet.ocisource`)."""

    image: str  # host/repository[:tag][@digest], as given


@dataclass(frozen=True)
class Source:
    git: GitSource | None
    inline: str | None
    context_dir: str
    oci: OciSource | None = None

    @property
    def where(self) -> str:
        """The field that names where the source is, and its value (for messages; no credentials: the spec
        refuses them in a git URL)."""
        if self.git:
            return f"spec.source.git.url {self.git.url}"
        return f"spec.source.oci.image {self.oci.image}" if self.oci else "spec.source.inline"


@dataclass(frozen=True)
class Output:
    repository: str  # image reference without tag
    tag: str
    tags: tuple[str, ...]  # extra tags
    push_secret: str | None

    @property
    def image(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def refs(self) -> tuple[str, ...]:
        """Every reference the final group pushes; the first is the primary."""
        extra = [f"{self.repository}:{t}" for t in self.tags if t != self.tag]
        return (self.image, *dict.fromkeys(extra))


@dataclass(frozen=True)
class Cache:
    repository: str | None
    mode: str
    disabled: bool
    # Reuse a stage result stored under the stage's content key instead of building it (`stagekey`).
    reuse_stages: bool = True


@dataclass(frozen=True)
class BuildSecret:
    """A build secret or ssh key: the id the Dockerfile uses and where its value lives."""

    id: str
    secret: SecretRef
    path: str  # field path, for messages


@dataclass(frozen=True)
class Resources:
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)

    def to_k8s(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out


@dataclass(frozen=True)
class ImageBuildSpec:
    source: Source
    dockerfile: str
    target: str | None
    build_args: Mapping[str, str]
    output: Output
    cache: Cache
    secrets: tuple[BuildSecret, ...]
    ssh: tuple[BuildSecret, ...]
    resources: Resources
    stage_resources: Mapping[str, Resources]
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    service_account_name: str | None
    builder_image: str | None
    max_parallel_pods: int
    timeout_seconds: int
    retries: int
    # Delete the ImageBuild this long after it finished (Succeeded, Failed, Cancelled); None: the operator's
    # --default-ttl-after-finished, whose 0 keeps it.
    ttl_seconds_after_finished: int | None = None
    # Paused: no pod starts and running ones are stopped; false again resumes the same run (`runs`).
    suspend: bool = False
    # Order among the same namespace's builds waiting for the farm's worker-pod cap (`workerqueue`): higher
    # first. It never puts a namespace before another (fair sharing) and, like suspend, is not in the run's
    # spec hash: changing it reorders a waiting build, it does not rebuild.
    priority: int = 0
    # The platforms to build (`platforms`): none, the workers' own; one, built for it; more, one build per
    # platform, whose results the operator joins into one image index.
    platforms: tuple[str, ...] = ()

    @property
    def platform(self) -> str | None:
        """The one platform this build's workers build for (buildah --platform), when it names one."""
        return self.platforms[0] if len(self.platforms) == 1 else None

    def cache_repository(self, namespace: str) -> str | None:
        """The layer cache of a build in ``namespace``: spec.cache.repository when set (sharing it is then
        a deliberate choice), else OUTPUT-REPOSITORY/cache/NAMESPACE. buildah's --cache-from finds layers
        by tag (a hash of the step), so a cache repository written by another team is a way into this
        team's images: by default only builds of one namespace share one."""
        if self.cache.disabled:
            return None
        return self.cache.repository or f"{self.output.repository}/cache/{namespace}"

    def stages_repository(self, namespace: str) -> str:
        """Where intermediate group results of a build in ``namespace`` are pushed for downstream groups:
        OUTPUT-REPOSITORY/stages/NAMESPACE, so that a registry can scope push rights per namespace and no
        other namespace's build pushes a tag under it (consumers check the digest anyway)."""
        return f"{self.output.repository}/stages/{namespace}"

    def resources_for(self, stages: tuple[str, ...]) -> Resources:
        """A group's resources: the override of its target stage, else of any of its stages, else default."""
        for name in reversed(stages):
            if name in self.stage_resources:
                return self.stage_resources[name]
        return self.resources

    def referenced_secrets(self) -> dict[str, str]:
        """Secret name → field path of its first reference, for existence checks and Stalled messages."""
        refs: dict[str, str] = {}
        if self.output.push_secret:
            refs.setdefault(self.output.push_secret, "spec.output.pushSecretRef")
        if self.source.git and self.source.git.secret:
            refs.setdefault(self.source.git.secret.name, "spec.source.git.secretRef")
        for s in (*self.secrets, *self.ssh):
            refs.setdefault(s.secret.name, s.path)
        return refs


def parse_duration(text: str, path: str = "spec.timeout") -> int:
    """'1h30m' → 5400 seconds; the CRD's pattern, as seconds."""
    m = _DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    if not m or not any(m.groups()):
        raise SpecError(path, f"{text!r} is not a duration like 30m, 1h30m or 90s")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    seconds = h * 3600 + mi * 60 + s
    if seconds <= 0:
        raise SpecError(path, "must be longer than 0s")
    return seconds


def split_image(ref: str, path: str = "spec.output.image") -> tuple[str, str]:
    """'host:5000/a/b:tag' → ('host:5000/a/b', 'tag'); the tag defaults to latest. Digests are refused."""
    if not isinstance(ref, str) or not ref:
        raise SpecError(path, "is required")
    if "@" in ref:
        raise SpecError(path, f"{ref!r}: push to a tag, not a digest")
    last = ref.rsplit("/", 1)[-1]
    repo, tag = (
        (ref[: -len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]) if ":" in last else (ref, "latest")
    )
    if not _REPO_RE.match(repo):
        raise SpecError(
            path,
            f"{ref!r} is not REGISTRY/REPOSITORY[:TAG] (lowercase repository, e.g. "
            "registry.example.com/team/app:1.0)",
        )
    if not _TAG_RE.match(tag):
        raise SpecError(path, f"tag {tag!r} is not a valid tag")
    return repo, tag


class _Reader:
    """Type-checked access to a JSON-ish mapping with the field path in every error."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SpecError(path, "must be an object")
        self.data = data
        self.path = path

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(
        self,
        key: str,
        default: str | None = None,
        *,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
        max_len: int = 65536,
    ) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise SpecError(self.sub(key), "is required")
            return default
        if not isinstance(value, str):
            raise SpecError(self.sub(key), "must be a string")
        if len(value) > max_len:
            raise SpecError(self.sub(key), f"is longer than {max_len} characters")
        if pattern is not None and not pattern.match(value):
            raise SpecError(self.sub(key), f"{value!r} does not match {pattern.pattern}")
        return value

    def req(self, key: str, **kw: Any) -> str:
        value = self.text(key, required=True, **kw)
        assert value is not None
        if not value:
            raise SpecError(self.sub(key), "must not be empty")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(self.sub(key), "must be an integer")
        if not lo <= value <= hi:
            raise SpecError(self.sub(key), f"must be between {lo} and {hi}, not {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(self.sub(key), "must be true or false")
        return value

    def obj(self, key: str) -> _Reader:
        return _Reader(self.data.get(key), self.sub(key))

    def str_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise SpecError(self.sub(key), "must be an object of strings")
        out: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise SpecError(f"{self.sub(key)}.{k}", "must be a string")
            out[str(k)] = str(v)
        return out

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise SpecError(self.sub(key), "must be a list")
        return value


def _secret_ref(r: _Reader, *, default_key: str | None = None) -> SecretRef:
    name = r.req("name", pattern=_NAME_RE, max_len=253)
    key = r.text("key", default_key, pattern=_KEY_RE, max_len=253)
    if not key:
        raise SpecError(r.sub("key"), "is required")
    return SecretRef(name, key)


def _build_secrets(spec: _Reader, key: str) -> tuple[BuildSecret, ...]:
    out: list[BuildSecret] = []
    seen: set[str] = set()
    for i, item in enumerate(spec.items(key)):
        r = _Reader(item, f"{spec.sub(key)}[{i}]")
        sid = r.req("id", pattern=_ID_RE, max_len=128)
        if sid in seen:
            raise SpecError(r.sub("id"), f"duplicate id {sid!r}")
        seen.add(sid)
        out.append(BuildSecret(sid, _secret_ref(r.obj("secretRef")), f"{r.path}.secretRef"))
    return tuple(out)


def _resources(r: _Reader) -> Resources:
    return Resources(requests=r.str_map("requests"), limits=r.str_map("limits"))


def parse_spec(spec: Mapping[str, Any] | None) -> ImageBuildSpec:
    """Validate and default an ImageBuild's ``spec``; raises SpecError naming the first bad field."""
    r = _Reader(spec, "spec")
    src = r.obj("source")
    if [src.has("git"), src.has("inline"), src.has("oci")].count(True) != 1:
        raise SpecError(
            "spec.source",
            "exactly one of spec.source.git, spec.source.inline and spec.source.oci must be set",
        )
    git: GitSource | None = None
    inline: str | None = None
    oci: OciSource | None = None
    if src.has("oci"):
        image = src.obj("oci").req("image", max_len=512)
        try:
            parse_oci_ref(image)
        except ValueError as e:
            raise SpecError("spec.source.oci.image", str(e)) from None
        oci = OciSource(image)
    elif src.has("git"):
        g = src.obj("git")
        url = g.req("url", pattern=_GIT_URL_RE, max_len=2048)
        if has_credentials(url):
            raise SpecError(
                "spec.source.git.url",
                "must not embed credentials (https://user:TOKEN@... or https://TOKEN@...): put them in a "
                "Secret named by spec.source.git.secretRef (keys username and password)",
            )
        # The key holding the credential: an ssh private key, or the https password / token.
        default_key = "password" if is_http_url(url) else "ssh-privatekey"
        secret = _secret_ref(g.obj("secretRef"), default_key=default_key) if g.has("secretRef") else None
        insecure = g.flag("insecureIgnoreHostKey", False)
        if insecure and not is_ssh_url(url):
            raise SpecError("spec.source.git.insecureIgnoreHostKey", "applies to ssh URLs only")
        if is_ssh_url(url) and secret is None and not insecure:
            raise SpecError(
                "spec.source.git.secretRef",
                "an ssh URL needs a Secret with the host keys (key known_hosts) and usually a private key "
                "(ssh-privatekey); or set spec.source.git.insecureIgnoreHostKey: true to accept any host key",
            )
        poll: int | None = None
        if g.data.get("pollInterval") is not None:
            raw_poll = g.text("pollInterval", "") or ""
            poll = parse_duration(raw_poll, "spec.source.git.pollInterval")
            if poll < MIN_POLL_SECONDS:
                raise SpecError(
                    "spec.source.git.pollInterval", f"{raw_poll!r} is shorter than {MIN_POLL_SECONDS}s"
                )
        git = GitSource(url, g.text("revision", "HEAD") or "HEAD", secret, insecure, poll)
    else:
        inline = src.obj("inline").req("dockerfile", max_len=262144)
    raw_context_dir = src.text("contextDir", "") or ""
    context_dir = raw_context_dir.strip("/")
    parts = [part for part in context_dir.split("/") if part]
    if "\0" in context_dir or any(part in ("..", ".") or part.startswith(".") for part in parts):
        raise SpecError("spec.source.contextDir", f"{context_dir!r} must be a plain relative path")
    if inline is not None and raw_context_dir:
        raise SpecError(
            "spec.source.contextDir",
            "needs spec.source.git or spec.source.oci (an inline Dockerfile has no build context)",
        )

    out = r.obj("output")
    repository, tag = split_image(out.req("image", max_len=512))
    tags: list[str] = []
    for i, t in enumerate(out.items("tags")):
        if not isinstance(t, str) or not _TAG_RE.match(t):
            raise SpecError(f"spec.output.tags[{i}]", f"{t!r} is not a valid tag")
        tags.append(t)
    push_secret = (
        out.obj("pushSecretRef").req("name", pattern=_NAME_RE, max_len=253)
        if out.has("pushSecretRef")
        else None
    )

    c = r.obj("cache")
    mode = c.text("mode", "max") or "max"
    if mode not in ("min", "max"):
        raise SpecError("spec.cache.mode", f"must be min or max, not {mode!r}")
    cache_repo = c.text("repository", None, pattern=_REPO_RE, max_len=512)
    disabled = c.flag("disabled", False)
    reuse_stages = c.flag("reuseStages", True)
    if disabled and cache_repo:
        raise SpecError("spec.cache.repository", "must not be set when spec.cache.disabled is true")

    build_args = r.str_map("buildArgs")
    for k in build_args:
        if not _ARG_RE.match(k):
            raise SpecError(f"spec.buildArgs.{k}", "is not a valid ARG name")

    res = r.obj("resources")
    stage_res = res.obj("stages")
    stage_resources = {
        str(k): _resources(_Reader(v, f"{stage_res.path}.{k}")) for k, v in stage_res.data.items()
    }

    tolerations: list[Mapping[str, Any]] = []
    for i, t in enumerate(r.items("tolerations")):
        tr = _Reader(t, f"spec.tolerations[{i}]")
        op = tr.text("operator", None)
        if op not in (None, "Exists", "Equal"):
            raise SpecError(tr.sub("operator"), f"must be Exists or Equal, not {op!r}")
        eff = tr.text("effect", None)
        if eff not in (None, "", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise SpecError(
                tr.sub("effect"), f"must be NoSchedule, PreferNoSchedule or NoExecute, not {eff!r}"
            )
        if op == "Exists" and tr.text("value", None):
            raise SpecError(tr.path, "a toleration with operator Exists must not have a value")
        tolerations.append(dict(tr.data))

    dockerfile = r.text("dockerfile", "Dockerfile", max_len=1024) or "Dockerfile"
    problem = lexical_problem(dockerfile)
    if problem:
        raise SpecError("spec.dockerfile", f"{dockerfile!r} {problem}")
    if not normalise(dockerfile):
        raise SpecError("spec.dockerfile", f"{dockerfile!r} names no file")

    timeout = r.text("timeout", "1h")
    if timeout == "":
        raise SpecError("spec.timeout", "must not be empty (e.g. 30m)")

    return ImageBuildSpec(
        source=Source(git, inline, context_dir, oci),
        dockerfile=normalise(dockerfile),
        target=r.text("target", None, pattern=_ID_RE, max_len=128) or None,
        build_args=build_args,
        output=Output(repository, tag, tuple(tags), push_secret),
        cache=Cache(cache_repo, mode, disabled, reuse_stages),
        secrets=_build_secrets(r, "secrets"),
        ssh=_build_secrets(r, "ssh"),
        resources=_resources(res.obj("default")),
        stage_resources=stage_resources,
        node_selector=r.str_map("nodeSelector"),
        tolerations=tuple(tolerations),
        service_account_name=r.text("serviceAccountName", None, pattern=_NAME_RE, max_len=253),
        builder_image=r.text("builderImage", None, max_len=512),
        max_parallel_pods=r.integer("maxParallelPods", DEFAULT_MAX_PARALLEL_PODS, 1, 256),
        timeout_seconds=parse_duration(timeout or "1h"),
        retries=r.integer("retries", DEFAULT_RETRIES, 0, MAX_RETRIES),
        ttl_seconds_after_finished=(None if r.data.get("ttlSecondsAfterFinished") is None
                                    else r.integer("ttlSecondsAfterFinished", 0, 0, 2**31 - 1)),
        suspend=r.flag("suspend", False),
        priority=r.integer("priority", 0, MIN_PRIORITY, MAX_PRIORITY),
        platforms=_platforms(r, git),
    )


def _platforms(r: _Reader, git: GitSource | None) -> tuple[str, ...]:
    out: list[str] = []
    for i, p in enumerate(r.items("platforms")):
        if not isinstance(p, str) or not PLATFORM_RE.match(p):
            raise SpecError(f"spec.platforms[{i}]", f"{p!r} is not a platform (e.g. linux/arm64)")
        if p in out:
            raise SpecError(f"spec.platforms[{i}]", f"{p} is named twice")
        out.append(p)
    if len(out) > MAX_PLATFORMS:
        raise SpecError("spec.platforms", f"at most {MAX_PLATFORMS} platforms, not {len(out)}")
    if len(out) > 1 and git is not None and git.poll_seconds is not None:
        # Each platform's build would follow the branch on its own, and they could end on other commits.
        raise SpecError("spec.source.git.pollInterval", "is not supported with more than one platform")
    return tuple(out)
