"""Pure: the farm admin's policy over the ImageBuild fields that reach into the cluster.

A user who may create ImageBuilds must not get, through them, what the cluster's RBAC and Pod Security
would refuse them directly: a builder image of their choosing under the worker's privileged-ish
securityContext (seccomp Unconfined, SETUID/SETGID), another ServiceAccount's token, pods on tainted
(e.g. control-plane) nodes, a node's worth of resources, or a source on the operator's own filesystem
(``file://``) or over unauthenticated plain ``git://``. The admin sets the policy with operator flags or the
chart's ``policy.*`` values (environment variables); the operator checks every new generation against it
before resolving the source and refuses a violating one (``Failed``, reason ``PolicyViolation``, the message
naming the field and the rule).

Defaults are safe: only the operator's own builder image, no ``serviceAccountName``, no tolerations, any
nodeSelector (a selector only narrows the nodes the scheduler would use anyway), no resource cap, git over
``https`` and ``ssh`` from any host.

Patterns are shell-style (`fnmatch`): ``registry.example.com/stagefleet/*`` allows every image under that
path, ``*`` allows anything. A toleration without a key (operator ``Exists`` tolerates every taint) is
allowed only by ``*``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from stagefleet.controller.spec import ImageBuildSpec
from stagefleet.ocisource import parse_ref as parse_oci_ref

ENV_PREFIX = "STAGEFLEET_POLICY_"

# field of Policy -> (flag, environment variable)
SETTINGS: dict[str, tuple[str, str]] = {
    "builder_images": ("--allowed-builder-images", ENV_PREFIX + "BUILDER_IMAGES"),
    "service_accounts": ("--allowed-service-accounts", ENV_PREFIX + "SERVICE_ACCOUNTS"),
    "toleration_keys": ("--allowed-toleration-keys", ENV_PREFIX + "TOLERATION_KEYS"),
    "node_selector_keys": ("--allowed-node-selector-keys", ENV_PREFIX + "NODE_SELECTOR_KEYS"),
    "source_schemes": ("--allowed-source-schemes", ENV_PREFIX + "SOURCE_SCHEMES"),
    "source_hosts": ("--allowed-source-hosts", ENV_PREFIX + "SOURCE_HOSTS"),
    "max_stage_resources": ("--max-stage-resources", ENV_PREFIX + "MAX_STAGE_RESOURCES"),
    "push_repositories": ("--allowed-push-repositories", ENV_PREFIX + "PUSH_REPOSITORIES"),
}
_LIST = "; comma-separated or a JSON list, 'none' for none"
HELP: dict[str, str] = {
    "builder_images": "spec.builderImage patterns allowed (default: the operator's builder image)" + _LIST,
    "service_accounts": "spec.serviceAccountName patterns allowed (default: none)" + _LIST,
    "toleration_keys": "spec.tolerations keys allowed; '*' allows a key-less one (default: none)" + _LIST,
    "node_selector_keys": "spec.nodeSelector keys allowed (default: *)" + _LIST,
    "source_schemes": "git URL schemes allowed: https, http, ssh, git, file (default: https,ssh)" + _LIST,
    "source_hosts": "git hosts and context artifact registries allowed (default: *)" + _LIST,
    "max_stage_resources": 'per-stage maximum requests and limits, e.g. {"cpu": "8", "memory": "32Gi"}',
    "push_repositories": "repositories spec.output.image and spec.cache.repository may name; {namespace} "
    "stands for the build's namespace, e.g. registry.example.com/{namespace}/* (default: *)" + _LIST,
}
SCHEMES = ("https", "http", "ssh", "git", "file")
REASON = "PolicyViolation"


class PolicyError(ValueError):
    """A policy setting (flag or environment variable, named in the message) is malformed."""


@dataclass(frozen=True)
class Policy:
    """What ImageBuild specs may ask for. ``builder_images`` None: only the operator's own builder image."""

    builder_images: tuple[str, ...] | None = None
    service_accounts: tuple[str, ...] = ()
    toleration_keys: tuple[str, ...] = ()
    node_selector_keys: tuple[str, ...] = ("*",)
    source_schemes: tuple[str, ...] = ("https", "ssh")
    source_hosts: tuple[str, ...] = ("*",)
    max_stage_resources: Mapping[str, str] = field(default_factory=dict)
    # Where builds push (output, cache; stage results go under the output's repository): the registry's
    # own push rights decide by default; a pattern with {namespace} keeps each namespace in its own tree.
    push_repositories: tuple[str, ...] = ("*",)

    def describe(self, name: str) -> str:
        """The setting's flag, chart value and current value, for messages."""
        flag, var = SETTINGS[name]
        value = getattr(self, name)
        shown = json.dumps(dict(value) if isinstance(value, Mapping) else list(value or ()))
        return f"{flag} / {var}: {shown}"


def _allowed(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


def git_scheme_and_host(url: str) -> tuple[str, str]:
    """Pure: (scheme, host) of a git URL; scp-like ``user@host:path`` is ssh, a bare path is file."""
    if "://" in url:
        parts = urlsplit(url)
        return parts.scheme.lower(), (parts.hostname or "").lower()
    head = url.split("/", 1)[0]
    if ":" in head:  # scp-like: [user@]host:path
        return "ssh", head.split(":", 1)[0].rsplit("@", 1)[-1].lower()
    return "file", ""


def quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2Gi", "1e3") as a number; ValueError if malformed."""
    from kubernetes.utils.quantity import parse_quantity

    value: Decimal = parse_quantity(text)  # type: ignore[no-untyped-call]
    return value


def violations(
    spec: ImageBuildSpec, policy: Policy, default_builder_image: str, namespace: str = ""
) -> list[str]:
    """Pure: every way ``spec`` (of a build in ``namespace``) breaks ``policy``, each naming the field, the
    value and the setting."""
    out: list[str] = []
    if spec.builder_image is not None and spec.builder_image != default_builder_image:
        allowed = policy.builder_images if policy.builder_images is not None else (default_builder_image,)
        if not _allowed(spec.builder_image, allowed):
            out.append(f"spec.builderImage: {spec.builder_image!r} is not an allowed builder image "
                       f"(only {', '.join(allowed)}; {policy.describe('builder_images')})")
    sa = spec.service_account_name
    if sa is not None and not _allowed(sa, policy.service_accounts):
        out.append(f"spec.serviceAccountName: {sa!r} is not allowed ({policy.describe('service_accounts')})")
    for i, t in enumerate(spec.tolerations):
        key = str(t.get("key") or "")
        if not _allowed(key, policy.toleration_keys):
            what = f"key {key!r}" if key else "a toleration without a key (it tolerates every taint)"
            out.append(f"spec.tolerations[{i}]: {what} is not allowed ({policy.describe('toleration_keys')})")
    for key, value in spec.node_selector.items():
        if key == "kubernetes.io/arch" and spec.platform and spec.platform.split("/")[1] == value:
            continue  # a platform's build held to nodes of its own architecture (controller.platforms)
        if not _allowed(key, policy.node_selector_keys):
            out.append(f"spec.nodeSelector.{key}: the key is not allowed "
                       f"({policy.describe('node_selector_keys')})")
    out += _resource_violations(spec, policy)
    pushes = [("spec.output.image", spec.output.repository)]
    if spec.cache.repository is not None and not spec.cache.disabled:
        pushes.append(("spec.cache.repository", spec.cache.repository))
    allowed_pushes = [p.replace("{namespace}", namespace) for p in policy.push_repositories]
    for where, repo in pushes:
        if not _allowed(repo, allowed_pushes):
            out.append(f"{where}: repository {repo!r} is not one builds in namespace {namespace!r} may push "
                       f"to ({policy.describe('push_repositories')})")
    git = spec.source.git
    if git is not None:
        scheme, host = git_scheme_and_host(git.url)
        if scheme not in policy.source_schemes:
            out.append(f"spec.source.git.url: the {scheme} scheme is not allowed for cluster builds "
                       f"({policy.describe('source_schemes')})")
        elif host and not _allowed(host, policy.source_hosts):
            out.append(f"spec.source.git.url: host {host!r} is not allowed "
                       f"({policy.describe('source_hosts')})")
    oci = spec.source.oci
    if oci is not None:
        host = parse_oci_ref(oci.image).host.split(":", 1)[0].lower()  # without the port, as for git
        if not _allowed(host, policy.source_hosts):
            out.append(f"spec.source.oci.image: host {host!r} is not allowed "
                       f"({policy.describe('source_hosts')})")
    return out


def _resource_violations(spec: ImageBuildSpec, policy: Policy) -> list[str]:
    if not policy.max_stage_resources:
        return []
    out: list[str] = []
    entries = [("spec.resources.default", spec.resources),
               *((f"spec.resources.stages.{name}", r) for name, r in spec.stage_resources.items())]
    for where, res in entries:
        for kind, values in (("requests", res.requests), ("limits", res.limits)):
            for name, value in values.items():
                cap = policy.max_stage_resources.get(name)
                if cap is None:
                    continue
                try:
                    over = quantity(value) > quantity(cap)
                except ValueError:
                    continue  # the spec's own validation names a malformed quantity
                if over:
                    out.append(f"{where}.{kind}.{name}: {value} is over the per-stage maximum {cap} "
                               f"({policy.describe('max_stage_resources')})")
    return out


# --- settings -------------------------------------------------------------------------------------------


def _patterns(text: str, where: str) -> tuple[str, ...]:
    """A JSON list of strings, or a comma-separated list; "[]" (or "none") is the empty list."""
    if text.lower() == "none":
        return ()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(f"{where}: not valid JSON ({e.msg} at char {e.pos}): {text!r}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise PolicyError(f"{where}: expected a list of non-empty strings, got {text!r}")
        return tuple(v.strip() for v in value)
    items = tuple(v.strip() for v in text.split(","))
    if not all(items):
        raise PolicyError(f"{where}: an empty entry in {text!r}")
    return items


def _max_resources(text: str, where: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PolicyError(f"{where}: not valid JSON ({e.msg} at char {e.pos}): {text!r}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: expected an object of resource quantities, e.g. "
                          f'{{"cpu": "8", "memory": "32Gi"}}, got {text!r}')
    out: dict[str, str] = {}
    for k, v in value.items():
        try:
            quantity(str(v))
        except ValueError:
            raise PolicyError(f"{where}.{k}: expected a resource quantity, got {v!r}") from None
        if isinstance(v, bool):
            raise PolicyError(f"{where}.{k}: expected a resource quantity, got {v!r}")
        out[str(k)] = str(v)
    return out


def policy_from(env: Mapping[str, str], flags: Mapping[str, str | None] | None = None) -> Policy:
    """The policy from ``flags`` (field → raw value or None) over ``env`` over the safe defaults.

    Raises PolicyError naming the flag or variable when a value is malformed.
    """
    flags = flags or {}
    unknown = sorted(set(flags) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown policy setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, (flag, var) in SETTINGS.items():
        raw, where = flags.get(name), f"{flag} (flag)"
        if raw is None or raw.strip() == "":
            raw, where = env.get(var, ""), var
        raw = raw.strip()
        if not raw:
            continue
        if name == "max_stage_resources":
            values[name] = _max_resources(raw, where)
            continue
        items = _patterns(raw, where)
        if name == "source_schemes":
            bad = [s for s in items if s.lower() not in SCHEMES]
            if bad:
                raise PolicyError(f"{where}: unknown scheme(s) {', '.join(bad)} "
                                  f"(known: {', '.join(SCHEMES)})")
            items = tuple(s.lower() for s in items)
        values[name] = items
    return Policy(**values)
