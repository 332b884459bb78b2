"""podspec.py: the worker pod manifest for one plan group."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stagefleet.controller.podspec import (
    LABEL_UID,
    BuildRef,
    ResolvedSource,
    WorkerConfig,
    configmap_name,
    dockerfile_configmap,
    label_value,
    pod_name,
    secret_names_in_pod,
    worker_pod,
)

from .helpers import BUILD, SEED_PLAN, make_spec

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CONFIG = WorkerConfig(
    command=("stagefleet-worker",), builder_image="builder:1", insecure_registries=("127.0.0.1:5000",)
)
INLINE = ResolvedSource(configmap=configmap_name(BUILD))
DIGEST_1 = "sha256:" + "1" * 64
DIGEST_2 = "sha256:" + "2" * 64


def build_pod(group: str, **kw: Any) -> dict[str, Any]:
    spec = kw.pop("spec", make_spec())
    upstream = kw.pop("upstream", {})
    return worker_pod(
        build=BUILD,
        spec=spec,
        plan=SEED_PLAN,
        group=SEED_PLAN.group(group),
        attempt=kw.pop("attempt", 1),
        source=kw.pop("source", INLINE),
        upstream=upstream,
        config=CONFIG,
        deadline_seconds=kw.pop("deadline", 600),
        **kw,
    )


def args_of(pod: dict[str, Any]) -> list[str]:
    return list(pod["spec"]["containers"][0]["args"])


def pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_pod_basics() -> None:
    pod = build_pod("g1")
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "seed-1-g1-a1"
    assert meta["labels"]["stagefleet.io/imagebuild"] == "seed"
    assert meta["labels"]["stagefleet.io/group"] == "g1"
    assert meta["labels"]["stagefleet.io/generation"] == "1"
    assert meta["labels"]["stagefleet.io/attempt"] == "1"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "name": "seed",
            "uid": BUILD.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 600
    assert spec["automountServiceAccountToken"] is False
    c = spec["containers"][0]
    assert c["image"] == "builder:1" and c["command"] == ["stagefleet-worker"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert not c.get("env")


def test_non_final_group_pushes_to_stages_repo_and_final_to_output() -> None:
    g1 = args_of(build_pod("g1"))
    assert pairs(g1, "--target") == ["build1"] and pairs(g1, "--stage") == ["build1"]
    (push,) = pairs(g1, "--push")
    assert push.startswith("127.0.0.1:5000/t/app/stages/ns:seed-01234567-1-g1")
    final = args_of(
        build_pod("g3", upstream={"build1": ("r/s:g1", DIGEST_1), "build2": ("r/s:g2", DIGEST_2)})
    )
    assert pairs(final, "--push") == ["127.0.0.1:5000/t/app:latest"]
    assert pairs(final, "--upstream") == [f"build1=r/s:g1@{DIGEST_1}", f"build2=r/s:g2@{DIGEST_2}"]
    assert pairs(final, "--insecure-registry") == ["127.0.0.1:5000"]
    assert pairs(final, "--cache-repo") == ["127.0.0.1:5000/t/app/cache/ns"]


def test_cache_and_stage_results_are_per_namespace_unless_shared_deliberately() -> None:
    """Issue #14 item 7: two namespaces building the same output name share no cache repository and no
    stage-result repository by default (buildah finds cached layers by tag); spec.cache.repository shares
    a cache on purpose."""

    def args_in(namespace: str, spec: Any) -> list[str]:
        build = BuildRef(BUILD.name, namespace, BUILD.uid, BUILD.generation)
        return args_of(
            worker_pod(build=build, spec=spec, plan=SEED_PLAN, group=SEED_PLAN.group("g1"), attempt=1,
                       source=INLINE, upstream={}, config=CONFIG, deadline_seconds=600)
        )

    a, b = args_in("team-a", make_spec()), args_in("team-b", make_spec())
    assert pairs(a, "--cache-repo") == ["127.0.0.1:5000/t/app/cache/team-a"]
    assert pairs(b, "--cache-repo") == ["127.0.0.1:5000/t/app/cache/team-b"]
    assert pairs(a, "--push")[0].startswith("127.0.0.1:5000/t/app/stages/team-a:")
    assert pairs(b, "--push")[0].startswith("127.0.0.1:5000/t/app/stages/team-b:")
    shared = make_spec(cache={"repository": "127.0.0.1:5000/shared/cache"})
    for ns in ("team-a", "team-b"):
        assert pairs(args_in(ns, shared), "--cache-repo") == ["127.0.0.1:5000/shared/cache"]


def test_an_early_pod_waits_for_the_tags_its_upstream_groups_push() -> None:
    """The tag in --upstream-wait is exactly where the producing group's pod pushes (its --push)."""
    early = args_of(build_pod("g3", upstream={"build1": ("r/s:g1", DIGEST_1)}))
    assert pairs(early, "--upstream") == [f"build1=r/s:g1@{DIGEST_1}"]
    (g2_push,) = pairs(args_of(build_pod("g2")), "--push")
    assert pairs(early, "--upstream-wait") == [f"build2={g2_push}"]
    none_done = args_of(build_pod("g3"))
    assert pairs(none_done, "--upstream") == [] and len(pairs(none_done, "--upstream-wait")) == 2


def test_only_the_groups_own_secrets_are_mounted() -> None:
    g1, g2 = build_pod("g1"), build_pod("g2")
    assert secret_names_in_pod(g1) == ["build-token"]
    assert secret_names_in_pod(g2) == []
    vol = next(v for v in g1["spec"]["volumes"] if "secret" in v)
    assert vol["secret"]["items"] == [{"key": "value", "path": "value"}]
    (secret_arg,) = pairs(args_of(g1), "--secret")
    assert secret_arg.startswith("id=token,src=/run/stagefleet/secrets/")
    mount = next(m for m in g1["spec"]["containers"][0]["volumeMounts"] if m["name"] == vol["name"])
    assert secret_arg.endswith(mount["mountPath"] + "/value") and mount["readOnly"] is True


def test_push_secret_goes_to_every_pod() -> None:
    spec = make_spec(output={"image": "r.io/a/b", "pushSecretRef": {"name": "push-creds"}})
    for g in ("g1", "g2", "g3"):
        pod = build_pod(g, spec=spec, upstream={"build1": ("a", DIGEST_1), "build2": ("b", DIGEST_2)})
        assert "push-creds" in secret_names_in_pod(pod)
        assert pairs(args_of(pod), "--registry-auth") == ["/run/stagefleet/push/config.json"]


def test_inline_dockerfile_via_configmap_and_git_via_args() -> None:
    pod = build_pod("g1")
    vol = next(v for v in pod["spec"]["volumes"] if "configMap" in v)
    assert vol["configMap"]["name"] == "seed-1-dockerfile"
    assert pairs(args_of(pod), "--inline-dockerfile") == ["/run/stagefleet/dockerfile/Dockerfile"]
    cm = dockerfile_configmap(BUILD, "FROM x\n")
    assert cm["data"] == {"Dockerfile": "FROM x\n"} and cm["metadata"]["name"] == "seed-1-dockerfile"

    url = "ssh://git@g.example/repo"
    spec = make_spec(
        source={"git": {"url": url, "secretRef": {"name": "deploy-key"}}, "contextDir": "app"},
        dockerfile="build/Dockerfile",
    )
    gpod = build_pod("g2", spec=spec, source=ResolvedSource(git_url=url, git_revision="a" * 40))
    args = args_of(gpod)
    assert pairs(args, "--git-url") == [url] and pairs(args, "--git-revision") == ["a" * 40]
    assert pairs(args, "--context-dir") == ["app"] and pairs(args, "--dockerfile") == ["build/Dockerfile"]
    assert pairs(args, "--git-ssh-key") == ["/run/stagefleet/git/key"]
    assert pairs(args, "--git-known-hosts") == ["/run/stagefleet/git/known_hosts"]
    assert "--git-insecure-ignore-host-key" not in args
    assert secret_names_in_pod(gpod) == ["deploy-key"]
    (auth,) = [v for v in gpod["spec"]["volumes"] if v["name"] == "git-auth"]
    assert auth["secret"]["items"] == [
        {"key": "ssh-privatekey", "path": "key"},
        {"key": "known_hosts", "path": "known_hosts"},
    ]
    assert not any("configMap" in v for v in gpod["spec"]["volumes"])


def test_git_credentials_reach_the_worker_as_files_only() -> None:
    """Issue #14 item 5: https credentials are Secret files read by a credential helper, ssh host keys
    come from the Secret's known_hosts unless deliberately ignored; nothing secret is an argument."""
    url = "https://git.example/team/repo.git"
    spec = make_spec(source={"git": {"url": url, "secretRef": {"name": "git-creds"}}})
    pod = build_pod("g1", spec=spec, source=ResolvedSource(git_url=url, git_revision="b" * 40))
    args = args_of(pod)
    assert pairs(args, "--git-password-file") == ["/run/stagefleet/git/password"]
    assert pairs(args, "--git-username-file") == ["/run/stagefleet/git-user/username"]
    assert "--git-ssh-key" not in args and "--git-known-hosts" not in args
    vols = {v["name"]: v["secret"] for v in pod["spec"]["volumes"] if "secret" in v}
    assert vols["git-auth"]["items"] == [{"key": "password", "path": "password"}]
    assert vols["git-username"] == {
        "secretName": "git-creds",
        "items": [{"key": "username", "path": "username"}],
        "defaultMode": 0o400,
        "optional": True,
    }
    ssh = {"url": "git@g.example:r.git", "secretRef": {"name": "k"}, "insecureIgnoreHostKey": True}
    insecure = make_spec(source={"git": ssh})
    args = args_of(build_pod("g1", spec=insecure, source=ResolvedSource(git_url="git@g.example:r.git")))
    assert "--git-insecure-ignore-host-key" in args and "--git-known-hosts" not in args


def test_cache_modes() -> None:
    off = args_of(build_pod("g1", spec=make_spec(cache={"disabled": True})))
    assert "--no-cache" in off and "--cache-repo" not in off
    up = {"build1": ("a", DIGEST_1), "build2": ("b", DIGEST_2)}
    spec_min = make_spec(cache={"mode": "min", "repository": "r.io/cache"})
    assert "--cache-repo" not in args_of(build_pod("g1", spec=spec_min))
    assert pairs(args_of(build_pod("g3", spec=spec_min, upstream=up)), "--cache-repo") == ["r.io/cache"]


def test_scheduling_fields() -> None:
    spec = make_spec(
        nodeSelector={"pool": "build"},
        tolerations=[{"key": "k", "operator": "Exists"}],
        serviceAccountName="builder",
        resources={"default": {"requests": {"cpu": "2"}}},
    )
    pod = build_pod("g1", spec=spec)
    assert pod["spec"]["nodeSelector"] == {"pool": "build"}
    assert pod["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert pod["spec"]["serviceAccountName"] == "builder"
    assert pod["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "2"}}


def test_a_build_spreads_its_pods_and_keyed_groups_store_and_pin() -> None:
    pod = build_pod("g1")
    term = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"] == {"labelSelector": {"matchLabels": {LABEL_UID: BUILD.uid}},
                                       "topologyKey": "kubernetes.io/hostname"}
    assert "--stage-key" not in args_of(pod) and "nodeSelector" not in pod["spec"]
    key = "c" * 64
    bases = {"r.io/base:1": "sha256:" + "b" * 64, "r.io/pinned@sha256:" + "d" * 64: "sha256:" + "d" * 64}
    keyed = build_pod("g1", stage_key=key, base_images=bases, arch="arm64")
    args = args_of(keyed)
    assert pairs(args, "--stage-key") == [key]
    assert pairs(args, "--pin-image") == ["r.io/base:1=r.io/base:1@sha256:" + "b" * 64]  # not the pinned one
    assert keyed["spec"]["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    # no cache repository (cache disabled): nowhere to store a result, so no key
    off = args_of(build_pod("g1", spec=make_spec(cache={"disabled": True}), stage_key=key))
    assert "--stage-key" not in off and "--pin-image" not in off


def test_build_args_sorted_and_deterministic() -> None:
    spec = make_spec(buildArgs={"B": "2", "A": "1"})
    assert pairs(args_of(build_pod("g1", spec=spec)), "--build-arg") == ["A=1", "B=2"]
    assert build_pod("g1", spec=spec) == build_pod("g1", spec=spec)


@given(
    st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", fullmatch=True),
    st.integers(1, 10**12),
    st.from_regex(r"g[1-9][0-9]{0,3}", fullmatch=True),
    st.integers(1, 99),
)
def test_pod_names_are_dns_labels_and_unique(name: str, gen: int, gid: str, attempt: int) -> None:
    b = BuildRef(name, "ns", "u", gen)
    n = pod_name(b, gid, attempt)
    assert len(n) <= 63 and DNS_LABEL.match(n), n
    assert n.endswith(f"-{gen}-{gid}-a{attempt}")
    assert pod_name(b, gid, attempt) == n
    assert pod_name(b, gid, attempt + 1) != n
    assert len(label_value(name)) <= 63


def test_long_names_are_hashed_not_collided() -> None:
    a = BuildRef("x" * 100 + "a", "ns", "u", 1)
    b = BuildRef("x" * 100 + "b", "ns", "u", 1)
    assert pod_name(a, "g1", 1) != pod_name(b, "g1", 1)
    assert label_value(a.name) != label_value(b.name)
