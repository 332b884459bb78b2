"""The admin's policy over spec fields (stagefleet.controller.policy): pure checks, settings, the chart."""

from __future__ import annotations

from typing import Any

import pytest

from binaries import find_tool
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.policy import (
    SETTINGS,
    Policy,
    PolicyError,
    git_scheme_and_host,
    policy_from,
    violations,
)
from tiers import chart_operator

from .helpers import make_spec

BUILDER = "registry.example.com/stagefleet/builder:0.1.0"
GIT = {"git": {"url": "https://git.example.com/team/app.git", "revision": "main"}}


def check(policy: Policy | None = None, **spec: Any) -> list[str]:
    return violations(make_spec(**spec), policy or Policy(), BUILDER)


def test_defaults_allow_an_ordinary_build() -> None:
    assert check() == []
    assert check(source=GIT, nodeSelector={"kubernetes.io/arch": "amd64"}) == []
    assert check(builderImage=BUILDER) == []  # naming the operator's own image is no escalation
    scp = {"url": "git@git.example.com:team/app.git", "revision": "main", "secretRef": {"name": "key"}}
    assert check(source={"git": scp}) == []


def test_defaults_refuse_every_escalating_field_naming_it() -> None:
    found = check(
        builderImage="evil.example.com/root-shell:1",
        serviceAccountName="operator-admin",
        tolerations=[{"operator": "Exists"}, {"key": "node-role.kubernetes.io/control-plane",
                                              "operator": "Exists", "effect": "NoSchedule"}],
    )
    assert len(found) == 4, found
    image, sa, any_taint, control_plane = found
    assert image.startswith("spec.builderImage: 'evil.example.com/root-shell:1' is not an allowed")
    assert f"only {BUILDER}" in image and "--allowed-builder-images" in image
    assert sa.startswith("spec.serviceAccountName: 'operator-admin' is not allowed")
    assert "STAGEFLEET_POLICY_SERVICE_ACCOUNTS: []" in sa
    assert any_taint.startswith("spec.tolerations[0]: a toleration without a key (it tolerates every taint)")
    assert control_plane.startswith("spec.tolerations[1]: key 'node-role.kubernetes.io/control-plane'")


@pytest.mark.parametrize(("url", "scheme"), [
    ("file:///etc", "file"),
    ("git://git.example.com/app.git", "git"),
    ("http://git.example.com/app.git", "http"),
])
def test_default_schemes_refuse_local_and_unauthenticated_sources(url: str, scheme: str) -> None:
    (msg,) = check(source={"git": {"url": url, "revision": "main"}})
    assert msg.startswith(f"spec.source.git.url: the {scheme} scheme is not allowed for cluster builds")
    assert git_scheme_and_host(url)[0] == scheme


def test_patterns_widen_what_is_allowed() -> None:
    policy = Policy(builder_images=("registry.example.com/stagefleet/*",), service_accounts=("build-*",),
                    toleration_keys=("dedicated",), node_selector_keys=("kubernetes.io/*",),
                    source_schemes=("https",), source_hosts=("*.example.com",))
    ok = dict(builderImage="registry.example.com/stagefleet/builder@sha256:" + "a" * 64,
              serviceAccountName="build-pusher",
              tolerations=[{"key": "dedicated", "operator": "Equal", "value": "builds"}],
              nodeSelector={"kubernetes.io/arch": "arm64"}, source=GIT)
    assert check(policy, **ok) == []
    assert check(policy, tolerations=[{"operator": "Exists"}])  # a key-less toleration needs "*"
    assert check(Policy(toleration_keys=("*",)), tolerations=[{"operator": "Exists"}]) == []
    (sel,) = check(policy, nodeSelector={"node-role.kubernetes.io/control-plane": ""})
    assert sel.startswith("spec.nodeSelector.node-role.kubernetes.io/control-plane: the key is not allowed")
    (host,) = check(policy, source={"git": {"url": "https://evil.test/x.git", "revision": "main"}})
    assert host.startswith("spec.source.git.url: host 'evil.test' is not allowed")
    assert check(policy, source={"oci": {"image": "ctx.example.com:5000/team/app:v1"}}) == []
    (oci,) = check(policy, source={"oci": {"image": "evil.test:5000/team/app:v1"}})
    assert oci.startswith("spec.source.oci.image: host 'evil.test' is not allowed")
    # the operator's own image stays allowed whatever the list says
    assert check(policy, builderImage=BUILDER) == []


def test_max_stage_resources_compares_quantities() -> None:
    policy = Policy(max_stage_resources={"cpu": "4", "memory": "8Gi"})
    within = {"default": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "8192Mi"}}}
    assert check(policy, resources=within) == []
    over = {"default": {"limits": {"memory": "9Gi"}},
            "stages": {"build1": {"requests": {"cpu": "4500m", "ephemeral-storage": "900Gi"}}}}
    found = check(policy, resources=over)
    assert found == [
        "spec.resources.default.limits.memory: 9Gi is over the per-stage maximum 8Gi "
        '(--max-stage-resources / STAGEFLEET_POLICY_MAX_STAGE_RESOURCES: {"cpu": "4", "memory": "8Gi"})',
        "spec.resources.stages.build1.requests.cpu: 4500m is over the per-stage maximum 4 "
        '(--max-stage-resources / STAGEFLEET_POLICY_MAX_STAGE_RESOURCES: {"cpu": "4", "memory": "8Gi"})',
    ]


def test_settings_flag_beats_env_beats_default() -> None:
    assert policy_from({}) == Policy() == OperatorConfig().policy
    assert policy_from({var: "" for _, var in SETTINGS.values()}) == Policy()
    env = {"STAGEFLEET_POLICY_SERVICE_ACCOUNTS": '["a", "b-*"]',
           "STAGEFLEET_POLICY_SOURCE_SCHEMES": "HTTPS,git",
           "STAGEFLEET_POLICY_NODE_SELECTOR_KEYS": "none",
           "STAGEFLEET_POLICY_MAX_STAGE_RESOURCES": '{"cpu": 8}'}
    p = policy_from(env, {"service_accounts": "c", "builder_images": None})
    assert p.service_accounts == ("c",) and p.source_schemes == ("https", "git")
    assert p.node_selector_keys == () and p.max_stage_resources == {"cpu": "8"}
    assert p.builder_images is None


@pytest.mark.parametrize(("env", "fragment"), [
    ({"STAGEFLEET_POLICY_SOURCE_SCHEMES": "https,ftp"},
     "STAGEFLEET_POLICY_SOURCE_SCHEMES: unknown scheme(s) ftp"),
    ({"STAGEFLEET_POLICY_SERVICE_ACCOUNTS": '["a",'}, "STAGEFLEET_POLICY_SERVICE_ACCOUNTS: not valid JSON"),
    ({"STAGEFLEET_POLICY_TOLERATION_KEYS": "a,,b"}, "STAGEFLEET_POLICY_TOLERATION_KEYS: an empty entry"),
    ({"STAGEFLEET_POLICY_MAX_STAGE_RESOURCES": '{"cpu": "lots"}'},
     "STAGEFLEET_POLICY_MAX_STAGE_RESOURCES.cpu: expected a resource quantity"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(PolicyError) as e:
        policy_from(env)
    assert fragment in str(e.value)


@pytest.mark.skipif(find_tool("helm") is None, reason="helm not found: run scripts/setup.sh")
def test_chart_values_reach_the_policy() -> None:
    env, _ = chart_operator()
    assert policy_from(env) == Policy()  # the chart's defaults are the operator's
    env, _ = chart_operator("--set-json", 'policy.allowedBuilderImages=["reg.local/*"]',
                            "--set-json", 'policy.allowedTolerationKeys=["dedicated"]',
                            "--set-json", 'policy.allowedSourceSchemes=["https"]',
                            "--set-json", 'policy.maxStageResources={"memory":"16Gi"}',
                            "--set-json", 'policy.allowedPushRepositories=["reg.local/{namespace}/*"]')
    p = policy_from(env)
    assert p.push_repositories == ("reg.local/{namespace}/*",)
    assert p.builder_images == ("reg.local/*",) and p.toleration_keys == ("dedicated",)
    assert p.source_schemes == ("https",) and p.max_stage_resources == {"memory": "16Gi"}


def test_push_repositories_keep_each_namespace_in_its_own_tree() -> None:
    """A tenant may not name another namespace's output or cache repository (e.g. to write into the layer
    cache `<victim output>/cache/<victim namespace>`): with {namespace} in the pattern, each namespace pushes
    only under its own path."""
    policy = Policy(push_repositories=("reg.example.com/{namespace}/*",))
    mine = {"output": {"image": "reg.example.com/team-a/app:1"}}
    assert violations(make_spec(**mine), policy, BUILDER, "team-a") == []
    shared = {**mine, "cache": {"repository": "reg.example.com/team-a/app/cache/team-a"}}
    assert violations(make_spec(**shared), policy, BUILDER, "team-a") == []
    (out,) = violations(make_spec(**mine), policy, BUILDER, "team-b")
    assert out.startswith("spec.output.image: repository 'reg.example.com/team-a/app' is not one builds in "
                          "namespace 'team-b' may push to")
    assert "--allowed-push-repositories" in out and "reg.example.com/{namespace}/*" in out
    poison = {"output": {"image": "reg.example.com/team-b/app:1"},
              "cache": {"repository": "reg.example.com/team-a/app/cache/team-a"}}
    (cache,) = violations(make_spec(**poison), policy, BUILDER, "team-b")
    assert cache.startswith("spec.cache.repository: repository 'reg.example.com/team-a/app/cache/team-a'")
    # the default allows any repository (the registry's rights decide)
    assert violations(make_spec(**poison), Policy(), BUILDER, "team-b") == []
    env = {"STAGEFLEET_POLICY_PUSH_REPOSITORIES": "r/{namespace}/*,shared/*"}
    assert policy_from(env).push_repositories == ("r/{namespace}/*", "shared/*")
