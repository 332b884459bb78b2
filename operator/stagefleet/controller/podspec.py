"""Pure: one plan group of one ImageBuild generation → the worker pod that builds it.

Names are deterministic (ImageBuild, generation, group, attempt), so creating the same pod twice — after an
operator restart, a lost status write, a duplicate event — is an AlreadyExists, never a second build. The
pod gets only the Secrets its own stages use; the values reach the worker as files, never as env or args.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stagefleet.controller.model import GroupPlan, PlanView
from stagefleet.controller.runs import Run
from stagefleet.controller.spec import DEFAULT_BUILDER_IMAGE, ImageBuildSpec, Resources
from stagefleet.gitauth import is_http_url
from stagefleet.stagekey import worker_args

GROUP = "stagefleet.io"
API_VERSION = f"{GROUP}/v1alpha1"
KIND = "ImageBuild"

LABEL_IMAGEBUILD = f"{GROUP}/imagebuild"
LABEL_UID = f"{GROUP}/imagebuild-uid"
LABEL_GROUP = f"{GROUP}/group"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_ATTEMPT = f"{GROUP}/attempt"
ANNOTATION_STAGES = f"{GROUP}/stages"
ANNOTATION_TARGET = f"{GROUP}/target"
# On a pod started early: which attempt of each upstream group its worker waits for ("g1=1,g2=3"), so
# that the operator can tell a waiter whose upstream was retried (it waits for a tag nobody will push, or
# that a lost attempt may still push) and restart it against the new attempt.
ANNOTATION_UPSTREAM_ATTEMPTS = f"{GROUP}/upstream-attempts"

WORKER_CONTAINER = "worker"
STORAGE_MOUNT = "/var/lib/stagefleet"
SECRETS_MOUNT = "/run/stagefleet"
TERMINATION_LOG = "/dev/termination-log"
ENV_STORAGE_DRIVER = "STAGEFLEET_STORAGE_DRIVER"  # read by stagefleet.buildenv in the worker
DOCKERFILE_KEY = "Dockerfile"
KNOWN_HOSTS_KEY = "known_hosts"  # of the git Secret (ssh URLs), as Flux names it
USERNAME_KEY = "username"  # of the git Secret (https URLs), as in a kubernetes.io/basic-auth Secret

_MAX_NAME = 63
ARCH_LABEL = "kubernetes.io/arch"


@dataclass(frozen=True)
class WorkerConfig:
    """Operator-wide settings for worker pods (flags / STAGEFLEET_WORKER_* env of `stagefleet operator`,
    see workerdefaults.py).

    ``resources`` apply when the ImageBuild sets none for the group (spec.resources replaces them whole, so
    a spec request never meets a smaller default limit); ``fuse_resource`` is an extended resource requested
    and limited at 1 on every worker; ``storage_driver`` reaches the worker as STAGEFLEET_STORAGE_DRIVER;
    ``active_deadline_seconds`` > 0 caps each pod's activeDeadlineSeconds below the build's remaining time;
    ``host_network`` runs workers in the node's network namespace; ``priority_class_name`` is their
    PriorityClass (the API's Priority admission fills in the number, and refuses an unknown class).
    """

    command: tuple[str, ...] = ("stagefleet-worker",)
    builder_image: str = DEFAULT_BUILDER_IMAGE
    insecure_registries: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    security_context: Mapping[str, Any] | None = None
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    image_pull_policy: str = "IfNotPresent"
    resources: Resources = field(default_factory=Resources)
    pod_security_context: Mapping[str, Any] | None = None
    storage_driver: str | None = None
    fuse_resource: str | None = None
    active_deadline_seconds: int = 0
    host_network: bool = False
    priority_class_name: str | None = None


@dataclass(frozen=True)
class BuildRef:
    """The ImageBuild a pod belongs to (metadata only). ``generation`` is the run the operator builds
    (`runs`: metadata.generation, or a later number after a rebuild): pod names, their generation label
    and stage result tags carry it. ``run`` says what the status records of it (None: that generation's
    first run)."""

    name: str
    namespace: str
    uid: str
    generation: int
    run: Run | None = None


@dataclass(frozen=True)
class ResolvedSource:
    """Where the worker gets the Dockerfile: a pinned git commit, an OCI artifact by digest, or an
    inline-Dockerfile ConfigMap."""

    git_url: str | None = None
    git_revision: str | None = None  # a commit
    configmap: str | None = None
    oci_ref: str | None = None  # host/repository@digest


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(text: str) -> str:
    """Lowercase, [a-z0-9-], no leading/trailing '-' (for names built from arbitrary parts)."""
    out = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return out or "x"


def _fit(prefix: str, suffix: str, limit: int = _MAX_NAME) -> str:
    """``prefix-suffix`` within ``limit`` chars; a too-long prefix is cut and made unique with a hash."""
    name = f"{prefix}-{suffix}"
    if len(name) <= limit:
        return name
    h = _short_hash(prefix)
    keep = max(1, limit - len(suffix) - len(h) - 2)
    return f"{prefix[:keep].rstrip('-')}-{h}-{suffix}"


def pod_name(build: BuildRef, group_id: str, attempt: int) -> str:
    """``<imagebuild>-<generation>-<group>-a<attempt>``, ≤ 63 chars and DNS-safe (hashed when long)."""
    return _fit(dns_label(build.name), f"{build.generation}-{dns_label(group_id)}-a{attempt}")


def configmap_name(build: BuildRef) -> str:
    """The ConfigMap holding an inline Dockerfile for one generation."""
    return _fit(dns_label(build.name), f"{build.generation}-dockerfile")


def label_value(text: str) -> str:
    """A label value (≤ 63 chars): the text itself when it fits, else a cut plus a hash."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    if len(value) <= _MAX_NAME:
        return value
    return f"{value[: _MAX_NAME - 7].rstrip('-_.')}-{_short_hash(text)}"


def stage_result_ref(spec: ImageBuildSpec, build: BuildRef, group_id: str, attempt: int) -> str:
    """Where a non-final group's attempt pushes its target stage; unique per build, generation, group and
    attempt: a lost attempt whose containers still run can push only to its own tag, never over the
    result of the attempt that replaced it (nor into a pod waiting for that one)."""
    return stage_result_refs(spec, build)(group_id, attempt)


def stage_result_refs(spec: ImageBuildSpec, build: BuildRef) -> Callable[[str, int], str]:
    """`stage_result_ref` of one build for any group and attempt (what is common computed once)."""
    prefix = f"{spec.stages_repository(build.namespace)}:{_stage_tag_prefix(build)}-{build.generation}-"
    return lambda group_id, attempt: f"{prefix}{dns_label(group_id)}-a{attempt}"


def _stage_tag_prefix(build: BuildRef) -> str:
    return f"{dns_label(build.name)[:60]}-{build.uid[:8]}"


def is_stage_tag_of(build: BuildRef, tag: str) -> bool:
    """Whether ``tag`` (in the build's stages repository) is one `stage_result_ref` gives this build, in any
    generation, group and attempt. Exact shape, not a prefix: another build whose name starts with this
    one's name and uid (``app-1a2b3c4d-1``) has tags that start the same way but do not match."""
    prefix = re.escape(_stage_tag_prefix(build))
    return re.fullmatch(rf"{prefix}-[0-9]+-g[0-9]+-a[0-9]+", tag) is not None


def push_refs(
    spec: ImageBuildSpec, plan: PlanView, build: BuildRef, group: GroupPlan, attempt: int
) -> tuple[str, ...]:
    if group.id == plan.final_group:
        return spec.output.refs
    return (stage_result_ref(spec, build, group.id, attempt),)


def format_attempts(attempts: Mapping[str, int]) -> str:
    """``{"g1": 1, "g2": 3}`` → ``"g1=1,g2=3"`` (ANNOTATION_UPSTREAM_ATTEMPTS)."""
    return ",".join(f"{g}={a}" for g, a in sorted(attempts.items()))


def parse_attempts(text: str | None) -> dict[str, int]:
    """The inverse of `format_attempts`; malformed entries are skipped."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        group, _, attempt = part.partition("=")
        if group.strip() and attempt.strip().isdigit():
            out[group.strip()] = int(attempt)
    return out


def owner_reference(build: BuildRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": build.name,
        "uid": build.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_labels(build: BuildRef, group_id: str | None = None, attempt: int | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "stagefleet-worker",
        "app.kubernetes.io/managed-by": "stagefleet",
        LABEL_IMAGEBUILD: label_value(build.name),
        LABEL_UID: build.uid,
        LABEL_GENERATION: str(build.generation),
    }
    if group_id is not None:
        labels[LABEL_GROUP] = label_value(group_id)
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    return labels


def dockerfile_configmap(build: BuildRef, dockerfile: str) -> dict[str, Any]:
    """The ConfigMap an inline Dockerfile reaches the worker through (a file, not an env var or arg)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(build),
            "namespace": build.namespace,
            "labels": pod_labels(build),
            "ownerReferences": [owner_reference(build)],
        },
        "data": {DOCKERFILE_KEY: dockerfile},
    }


def json_copy(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON-like mapping (pod manifests never share nested dicts with the config)."""
    out: dict[str, Any] = copy.deepcopy(dict(obj))
    return out


def _secret_volume(name: str, secret: str, key: str, path: str, mode: int = 0o400) -> dict[str, Any]:
    return {
        "name": name,
        "secret": {"secretName": secret, "items": [{"key": key, "path": path}], "defaultMode": mode},
    }


def worker_pod(
    *,
    build: BuildRef,
    spec: ImageBuildSpec,
    plan: PlanView,
    group: GroupPlan,
    attempt: int,
    source: ResolvedSource,
    upstream: Mapping[str, tuple[str, str]],
    config: WorkerConfig,
    deadline_seconds: int,
    upstream_attempts: Mapping[str, int] | None = None,
    stage_key: str | None = None,
    base_images: Mapping[str, str] | None = None,
    arch: str | None = None,
) -> dict[str, Any]:
    """The pod manifest for ``group`` (attempt ``attempt``); ``upstream`` maps stage → (image ref, digest)
    for the consumed stages already built; the others are waited for by tag (the pod started early): the
    tag of the producing group's attempt in ``upstream_attempts`` (group id → attempt; 1 if missing).

    ``stage_key``: the content key of the group's target (`stagekey`): the worker stores its result under
    the key tag too, built from the images pinned in ``base_images`` (image → digest, as keyed), on a
    node of architecture ``arch`` (the key's platform)."""
    waited: dict[str, int] = {}
    volumes: list[dict[str, Any]] = [{"name": "storage", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "storage", "mountPath": STORAGE_MOUNT}]
    args: list[str] = []

    if source.git_url:
        args += ["--git-url", source.git_url, "--git-revision", source.git_revision or "HEAD"]
        git = spec.source.git
        # Credentials reach the worker as files of the Secret (never args, env or the URL): ssh, the key
        # and known_hosts (StrictHostKeyChecking=yes); https, the password or token, and the username when
        # the Secret has one (an optional volume of its own: a missing key is no mount failure).
        if git and git.secret and git.ssh:
            auth = _secret_volume("git-auth", git.secret.name, git.secret.key, "key")
            if not git.insecure_ignore_host_key:
                auth["secret"]["items"].append({"key": KNOWN_HOSTS_KEY, "path": "known_hosts"})
            volumes.append(auth)
            mounts.append({"name": "git-auth", "mountPath": f"{SECRETS_MOUNT}/git", "readOnly": True})
            args += ["--git-ssh-key", f"{SECRETS_MOUNT}/git/key"]
            if not git.insecure_ignore_host_key:
                args += ["--git-known-hosts", f"{SECRETS_MOUNT}/git/known_hosts"]
        elif git and git.secret and is_http_url(git.url):
            volumes.append(_secret_volume("git-auth", git.secret.name, git.secret.key, "password"))
            mounts.append({"name": "git-auth", "mountPath": f"{SECRETS_MOUNT}/git", "readOnly": True})
            user = _secret_volume("git-username", git.secret.name, USERNAME_KEY, "username")
            user["secret"]["optional"] = True
            volumes.append(user)
            mounts.append(
                {"name": "git-username", "mountPath": f"{SECRETS_MOUNT}/git-user", "readOnly": True}
            )
            args += ["--git-password-file", f"{SECRETS_MOUNT}/git/password",
                     "--git-username-file", f"{SECRETS_MOUNT}/git-user/username"]
        if git and git.insecure_ignore_host_key:
            args.append("--git-insecure-ignore-host-key")
    if source.oci_ref:  # read with the push credentials (REGISTRY_AUTH_FILE), like the stage results
        args += ["--oci-source", source.oci_ref]
    if source.git_url or source.oci_ref:
        if spec.source.context_dir:
            args += ["--context-dir", spec.source.context_dir]
        args += ["--dockerfile", spec.dockerfile]
    else:
        # optional: a ConfigMap deleted with its ImageBuild before the pod started would otherwise hold the
        # kubelet in "waiting for volumes" for 2 minutes before it even acts on the pod's deletion (seen on a
        # real kubelet); without it the worker fails at once, naming the missing file.
        volumes.append({"name": "dockerfile",
                        "configMap": {"name": source.configmap or configmap_name(build), "optional": True}})
        mounts.append({"name": "dockerfile", "mountPath": f"{SECRETS_MOUNT}/dockerfile", "readOnly": True})
        args += ["--inline-dockerfile", f"{SECRETS_MOUNT}/dockerfile/{DOCKERFILE_KEY}"]

    args += ["--group", group.id, "--target", group.target]
    for stage in group.stages:
        args += ["--stage", stage]
    for stage, gid in group.consumes:
        if stage in upstream:
            ref, digest = upstream[stage]
            args += ["--upstream", f"{stage}={ref}@{digest}"]
        else:  # started early: the worker waits until the producing group has pushed its result tag
            waited[gid] = (upstream_attempts or {}).get(gid, 1)
            args += ["--upstream-wait", f"{stage}={stage_result_ref(spec, build, gid, waited[gid])}"]

    by_id = {s.id: s for s in spec.secrets}
    for n, sid in enumerate(group.secrets):
        if sid not in by_id:
            continue  # undeclared: the Dockerfile's own `required` decides (worker exit 12 if required)
        sref = by_id[sid].secret
        vol = f"secret-{n}"
        volumes.append(_secret_volume(vol, sref.name, sref.key, "value"))
        mounts.append({"name": vol, "mountPath": f"{SECRETS_MOUNT}/secrets/{n}", "readOnly": True})
        args += ["--secret", f"id={sid},src={SECRETS_MOUNT}/secrets/{n}/value"]
    ssh_by_id = {s.id: s for s in spec.ssh}
    for n, sid in enumerate(group.ssh):
        if sid not in ssh_by_id:
            continue
        kref = ssh_by_id[sid].secret
        vol = f"ssh-{n}"
        volumes.append(_secret_volume(vol, kref.name, kref.key, "key"))
        mounts.append({"name": vol, "mountPath": f"{SECRETS_MOUNT}/ssh/{n}", "readOnly": True})
        args += ["--ssh", f"{sid}={SECRETS_MOUNT}/ssh/{n}/key"]

    for k in sorted(spec.build_args):
        args += ["--build-arg", f"{k}={spec.build_args[k]}"]
    if spec.platform:  # (on a node of another architecture, buildah runs the steps under emulation)
        args += ["--platform", spec.platform]

    cache_repo = spec.cache_repository(build.namespace)
    if cache_repo is None:
        args.append("--no-cache")
    else:
        # RUN --mount=type=cache ids outlive the pod there, shared by the namespace (worker.cachemounts)
        args += ["--mount-cache-repo", cache_repo]
        if spec.cache.mode == "max" or group.id == plan.final_group:
            args += ["--cache-repo", cache_repo]

    for ref in push_refs(spec, plan, build, group, attempt):
        args += ["--push", ref]
    if stage_key and cache_repo is not None and "--cache-repo" in args:
        args += worker_args(stage_key, base_images or {})
    if spec.output.push_secret:
        volumes.append(
            _secret_volume("push-auth", spec.output.push_secret, ".dockerconfigjson", "config.json")
        )
        mounts.append({"name": "push-auth", "mountPath": f"{SECRETS_MOUNT}/push", "readOnly": True})
        args += ["--registry-auth", f"{SECRETS_MOUNT}/push/config.json"]
    for reg in config.insecure_registries:
        args += ["--insecure-registry", reg]
    args += ["--storage-root", f"{STORAGE_MOUNT}/storage", "--result-file", TERMINATION_LOG]
    args += list(config.extra_args)

    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": spec.builder_image or config.builder_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(config.command),
        "args": args,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if config.storage_driver:
        container["env"] = [{"name": ENV_STORAGE_DRIVER, "value": config.storage_driver}]
    resources = spec.resources_for(group.stages).to_k8s() or config.resources.to_k8s()
    if config.fuse_resource:
        for section in ("requests", "limits"):
            resources.setdefault(section, {}).setdefault(config.fuse_resource, "1")
    if resources:
        container["resources"] = resources
    if config.security_context:
        container["securityContext"] = json_copy(config.security_context)

    deadline = max(1, int(deadline_seconds))
    if config.active_deadline_seconds > 0:
        deadline = min(deadline, config.active_deadline_seconds)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "containers": [container],
        "volumes": volumes,
    }
    if config.priority_class_name:
        pod_spec["priorityClassName"] = config.priority_class_name
    if config.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if config.pod_security_context:
        pod_spec["securityContext"] = json_copy(config.pod_security_context)
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    # Spread a build's groups over the nodes when they have room: sibling groups on one node would share its
    # CPUs while another node idles (a preference: the scheduler still packs them when it must).
    pod_spec["affinity"] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {"labelSelector": {"matchLabels": {LABEL_UID: build.uid}},
                            "topologyKey": "kubernetes.io/hostname"},
    }]}}
    if arch and stage_key and not spec.platform:
        # What the key was computed for (a user's own arch selector was taken into it). A build that names
        # its platform builds for it on any node: the node's architecture is not in the result.
        pod_spec.setdefault("nodeSelector", {}).setdefault(ARCH_LABEL, arch)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name

    labels = {**config.pod_labels, **pod_labels(build, group.id, attempt)}
    annotations = {ANNOTATION_STAGES: ",".join(group.stages), ANNOTATION_TARGET: group.target}
    if waited:
        annotations[ANNOTATION_UPSTREAM_ATTEMPTS] = format_attempts(waited)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(build, group.id, attempt),
            "namespace": build.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(build)],
        },
        "spec": pod_spec,
    }


def secret_names_in_pod(pod: Mapping[str, Any]) -> list[str]:
    """The Secrets a pod manifest mounts (for tests and audits)."""
    vols: Sequence[Mapping[str, Any]] = pod.get("spec", {}).get("volumes", [])
    return sorted({v["secret"]["secretName"] for v in vols if "secret" in v})
