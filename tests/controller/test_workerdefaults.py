"""workerdefaults.py: flags / STAGEFLEET_WORKER_* env → worker pod defaults, and the chart's env end to end.

The last test renders the real chart with the real helm, takes the operator Deployment's env exactly as the
kubelet would hand it to `stagefleet operator`, feeds it through the same function the operator uses and
checks the worker pod that comes out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from binaries import find_tool
from stagefleet.commands import operator as operator_cmd
from stagefleet.controller.podspec import ENV_STORAGE_DRIVER, WorkerConfig, worker_pod
from stagefleet.controller.spec import DEFAULT_BUILDER_IMAGE, Resources
from stagefleet.controller.workerdefaults import (
    ENV_VARS,
    WorkerDefaults,
    WorkerDefaultsError,
    worker_defaults,
)
from tiers import chart_operator

from .helpers import BUILD, SEED_PLAN, make_spec
from .test_podspec import INLINE

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "stagefleet"


def pod_for(config: WorkerConfig, group: str = "g1", deadline: int = 600, **spec_kw: Any) -> dict[str, Any]:
    return worker_pod(
        build=BUILD,
        spec=make_spec(**spec_kw),
        plan=SEED_PLAN,
        group=SEED_PLAN.group(group),
        attempt=1,
        source=INLINE,
        upstream={"build1": ("r/a:1", "sha256:" + "1" * 64), "build2": ("r/b:1", "sha256:" + "2" * 64)},
        config=config,
        deadline_seconds=deadline,
    )


def container(pod: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = pod["spec"]["containers"][0]
    return c


# --------------------------------------------------------------------------------------------------------
# the pure function


def test_empty_env_is_the_builtin_defaults() -> None:
    d = worker_defaults({})
    assert d == WorkerDefaults()
    assert d.builder_image == DEFAULT_BUILDER_IMAGE and d.image_pull_policy == "IfNotPresent"
    pod = pod_for(d.worker_config())
    c = container(pod)
    assert "env" not in c and "resources" not in c and "securityContext" not in c
    assert "securityContext" not in pod["spec"]
    assert c["imagePullPolicy"] == "IfNotPresent" and c["image"] == DEFAULT_BUILDER_IMAGE
    assert pod["spec"]["activeDeadlineSeconds"] == 600


def test_empty_strings_count_as_unset() -> None:
    assert worker_defaults({var: "" for var in ENV_VARS.values()}) == WorkerDefaults()
    assert worker_defaults({"STAGEFLEET_WORKER_FUSE_RESOURCE": "  "}).fuse_resource is None


def test_every_variable_is_read() -> None:
    env = {
        "STAGEFLEET_BUILDER_IMAGE": "reg/builder:9",
        "STAGEFLEET_BUILDER_IMAGE_PULL_POLICY": "Always",
        "STAGEFLEET_WORKER_RESOURCES": json.dumps(
            {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi", "cpu": 2}}
        ),
        "STAGEFLEET_WORKER_POD_SECURITY_CONTEXT": '{"runAsUser": 1000, "runAsNonRoot": true}',
        "STAGEFLEET_WORKER_SECURITY_CONTEXT": '{"allowPrivilegeEscalation": true}',
        "STAGEFLEET_WORKER_STORAGE_DRIVER": "overlay",
        "STAGEFLEET_WORKER_FUSE_RESOURCE": "github.com/fuse",
        "STAGEFLEET_WORKER_ACTIVE_DEADLINE_SECONDS": "300",
    }
    d = worker_defaults(env)
    assert d == WorkerDefaults(
        builder_image="reg/builder:9",
        image_pull_policy="Always",
        resources=Resources(requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "4Gi", "cpu": "2"}),
        pod_security_context={"runAsUser": 1000, "runAsNonRoot": True},
        security_context={"allowPrivilegeEscalation": True},
        storage_driver="overlay",
        fuse_resource="github.com/fuse",
        active_deadline_seconds=300,
    )


def test_flag_beats_env_beats_default() -> None:
    env = {"STAGEFLEET_BUILDER_IMAGE": "env/builder:1", "STAGEFLEET_WORKER_STORAGE_DRIVER": "overlay"}
    d = worker_defaults(env, {"builder_image": "flag/builder:2", "storage_driver": None})
    assert d.builder_image == "flag/builder:2"  # flag over env
    assert d.storage_driver == "overlay"  # env when no flag
    assert d.image_pull_policy == "IfNotPresent"  # default when neither
    assert worker_defaults({}, {"active_deadline_seconds": "60"}).active_deadline_seconds == 60


def test_operator_cli_flags_reach_the_function() -> None:
    parser = argparse.ArgumentParser()
    operator_cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        ["operator", "--builder-image=b:1", "--worker-storage-driver=vfs",
         "--worker-resources", '{"requests": {"cpu": "1"}}', "--builder-image-pull-policy", "Never"]
    )
    d = worker_defaults({"STAGEFLEET_BUILDER_IMAGE": "env:1"}, operator_cmd.worker_flags(args))
    assert (d.builder_image, d.storage_driver, d.image_pull_policy) == ("b:1", "vfs", "Never")
    assert d.resources == Resources(requests={"cpu": "1"})


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("STAGEFLEET_WORKER_RESOURCES", "{requests: 1}", "not valid JSON"),
        ("STAGEFLEET_WORKER_RESOURCES", "[1]", "expected a JSON object"),
        ("STAGEFLEET_WORKER_RESOURCES", '{"requests": {"cpu": true}}', "requests.cpu"),
        ("STAGEFLEET_WORKER_RESOURCES", '{"request": {}}', "unknown ResourceRequirements field"),
        ("STAGEFLEET_WORKER_POD_SECURITY_CONTEXT", "{", "not valid JSON"),
        ("STAGEFLEET_WORKER_SECURITY_CONTEXT", '"privileged"', "expected a JSON object"),
        ("STAGEFLEET_WORKER_STORAGE_DRIVER", "btrfs", "not one of vfs, overlay"),
        ("STAGEFLEET_BUILDER_IMAGE_PULL_POLICY", "sometimes", "not one of"),
        ("STAGEFLEET_WORKER_ACTIVE_DEADLINE_SECONDS", "10m", "whole number"),
        ("STAGEFLEET_WORKER_ACTIVE_DEADLINE_SECONDS", "-1", ">= 0"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str, fragment: str) -> None:
    with pytest.raises(WorkerDefaultsError) as err:
        worker_defaults({var: value})
    assert str(err.value).startswith(var) and fragment in str(err.value)


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(WorkerDefaultsError, match=r"^--worker-security-context \(flag\): not valid JSON"):
        worker_defaults({}, {"security_context": "nope"})


def test_operator_exits_2_with_the_message_on_bad_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    operator_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["operator", "--metrics-port=0"])
    monkeypatch.setenv("STAGEFLEET_WORKER_RESOURCES", "{oops")
    assert operator_cmd.run(args) == 2
    assert "STAGEFLEET_WORKER_RESOURCES: not valid JSON" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# what podspec does with them


FULL = WorkerDefaults(
    builder_image="reg/builder:9",
    image_pull_policy="Always",
    resources=Resources(requests={"cpu": "500m"}, limits={"memory": "4Gi"}),
    pod_security_context={"runAsUser": 1000, "seccompProfile": {"type": "Unconfined"}},
    security_context={"capabilities": {"add": ["SETUID"]}},
    storage_driver="vfs",
    fuse_resource="github.com/fuse",
    active_deadline_seconds=300,
).worker_config(insecure_registries=("127.0.0.1:5000",))


def test_defaults_applied_to_every_worker_pod() -> None:
    for group in ("g1", "g2", "g3"):
        pod = pod_for(FULL, group)
        c = container(pod)
        assert c["image"] == "reg/builder:9" and c["imagePullPolicy"] == "Always"
        assert c["env"] == [{"name": ENV_STORAGE_DRIVER, "value": "vfs"}]
        assert c["resources"] == {
            "requests": {"cpu": "500m", "github.com/fuse": "1"},
            "limits": {"memory": "4Gi", "github.com/fuse": "1"},
        }
        assert c["securityContext"] == {"capabilities": {"add": ["SETUID"]}}
        assert pod["spec"]["securityContext"] == {"runAsUser": 1000, "seccompProfile": {"type": "Unconfined"}}
        assert pod["spec"]["activeDeadlineSeconds"] == 300  # capped below the build's 600 s left


def test_pods_do_not_share_nested_dicts_with_the_config() -> None:
    pod = pod_for(FULL)
    pod["spec"]["securityContext"]["seccompProfile"]["type"] = "RuntimeDefault"
    container(pod)["securityContext"]["capabilities"]["add"].append("X")
    again = pod_for(FULL)
    assert again["spec"]["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert container(again)["securityContext"]["capabilities"]["add"] == ["SETUID"]


def test_build_timeout_below_the_cap_wins() -> None:
    assert pod_for(FULL, deadline=120)["spec"]["activeDeadlineSeconds"] == 120


def test_spec_overrides_image_and_resources_whole_but_fuse_stays() -> None:
    pod = pod_for(
        FULL,
        builderImage="mine/builder:1",
        resources={"default": {"requests": {"memory": "8Gi"}}},
    )
    c = container(pod)
    assert c["image"] == "mine/builder:1"
    # the spec's resources replace the defaults whole (no 8Gi request against a 4Gi default limit)
    assert c["resources"] == {
        "requests": {"memory": "8Gi", "github.com/fuse": "1"},
        "limits": {"github.com/fuse": "1"},
    }


# --------------------------------------------------------------------------------------------------------
# the chart's env, rendered by the real helm, through the same function


HELM = find_tool("helm")


def defaults_from_chart(*set_args: str) -> WorkerDefaults:
    env, args = chart_operator(*set_args)
    parser = argparse.ArgumentParser()
    operator_cmd.register(parser.add_subparsers())
    return worker_defaults(env, operator_cmd.worker_flags(parser.parse_args(args)))


@pytest.mark.skipif(HELM is None, reason="helm not found: set STAGEFLEET_HELM or run scripts/setup.sh")
def test_chart_defaults_reach_the_worker_pod() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]
    d = defaults_from_chart()
    pod = pod_for(d.worker_config())
    c = container(pod)
    assert c["image"].startswith("ghcr.io/stagefleet/builder:") and c["imagePullPolicy"] == "IfNotPresent"
    assert "env" not in c  # no driver named: the worker picks the fastest that works
    assert c["resources"] == values["resources"]
    assert c["securityContext"] == values["securityContext"]
    assert c["securityContext"]["privileged"] is False
    assert pod["spec"]["securityContext"] == values["podSecurityContext"]
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert pod["spec"]["activeDeadlineSeconds"] == 600  # chart default 0: the build's timeout only


@pytest.mark.skipif(HELM is None, reason="helm not found: set STAGEFLEET_HELM or run scripts/setup.sh")
def test_chart_overrides_reach_the_worker_pod() -> None:
    d = defaults_from_chart(
        "--set", "worker.storageDriver=overlay",
        "--set", "worker.fuse.enabled=true",
        "--set", "worker.fuse.resourceName=example.com/fuse",
        "--set", "worker.activeDeadlineSeconds=120",
        "--set", "worker.builderImage.pullPolicy=Always",
        "--set", "worker.builderImage.repository=reg.local/builder",
        "--set", "worker.builderImage.tag=v1",
        "--set", "worker.resources.limits.cpu=3",
    )
    pod = pod_for(d.worker_config())
    c = container(pod)
    assert c["image"] == "reg.local/builder:v1" and c["imagePullPolicy"] == "Always"
    assert c["env"] == [{"name": "STAGEFLEET_STORAGE_DRIVER", "value": "overlay"}]
    assert c["resources"]["requests"]["example.com/fuse"] == "1"
    assert c["resources"]["limits"]["example.com/fuse"] == "1"
    assert c["resources"]["limits"]["cpu"] == "3" and c["resources"]["limits"]["memory"] == "4Gi"
    assert pod["spec"]["activeDeadlineSeconds"] == 120
    # fuse disabled: no extended resource at all
    plain = container(pod_for(defaults_from_chart("--set", "worker.fuse.resourceName=example.com/fuse")
                               .worker_config()))
    assert not any("fuse" in k for sect in plain["resources"].values() for k in sect)


def test_host_network_from_env_and_flag() -> None:
    assert worker_defaults({}).host_network is False
    assert worker_defaults({"STAGEFLEET_WORKER_HOST_NETWORK": "true"}).host_network is True
    env = {"STAGEFLEET_WORKER_HOST_NETWORK": "true"}
    assert worker_defaults(env, {"host_network": "false"}).host_network is False  # the flag wins
    with pytest.raises(WorkerDefaultsError, match="STAGEFLEET_WORKER_HOST_NETWORK: expected true or false"):
        worker_defaults({"STAGEFLEET_WORKER_HOST_NETWORK": "yes"})
    pod = pod_for(worker_defaults({"STAGEFLEET_WORKER_HOST_NETWORK": "true"}).worker_config())
    assert pod["spec"]["hostNetwork"] is True and pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostNetwork" not in pod_for(worker_defaults({}).worker_config())["spec"]


@pytest.mark.skipif(HELM is None, reason="helm not found: set STAGEFLEET_HELM or run scripts/setup.sh")
def test_chart_host_network_reaches_the_worker_pod() -> None:
    assert "hostNetwork" not in pod_for(defaults_from_chart().worker_config())["spec"]
    pod = pod_for(defaults_from_chart("--set", "worker.hostNetwork=true").worker_config())
    assert pod["spec"]["hostNetwork"] is True


def test_priority_class_from_env_and_flag() -> None:
    assert worker_defaults({}).priority_class_name is None
    env = {"STAGEFLEET_WORKER_PRIORITY_CLASS": "builds-low"}
    assert worker_defaults(env).priority_class_name == "builds-low"
    assert worker_defaults(env, {"priority_class_name": "builds-high"}).priority_class_name == "builds-high"
    with pytest.raises(WorkerDefaultsError, match=r"--worker-priority-class \(flag\): 'Low' is not a valid"):
        worker_defaults({}, {"priority_class_name": "Low"})
    pod = pod_for(worker_defaults(env).worker_config())
    assert pod["spec"]["priorityClassName"] == "builds-low"
    assert "priorityClassName" not in pod_for(worker_defaults({}).worker_config())["spec"]


@pytest.mark.skipif(HELM is None, reason="helm not found: set STAGEFLEET_HELM or run scripts/setup.sh")
def test_chart_priority_class_reaches_the_worker_pod() -> None:
    assert "priorityClassName" not in pod_for(defaults_from_chart().worker_config())["spec"]
    pod = pod_for(defaults_from_chart("--set", "worker.priorityClassName=builds-low").worker_config())
    assert pod["spec"]["priorityClassName"] == "builds-low"
