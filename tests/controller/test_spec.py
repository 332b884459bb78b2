"""spec.py: defaults, and every refusal names the field to fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from stagefleet.controller.spec import SpecError, parse_duration, parse_spec, split_image
from stagefleet.devcluster.apiserver.cel import evaluate

ROOT = Path(__file__).resolve().parents[2]


def seed_spec() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples/seed/imagebuild.yaml").read_text())
    return dict(doc["spec"])


def test_seed_example_parses_with_defaults() -> None:
    spec = parse_spec(seed_spec())
    assert spec.source.inline and "AS build1" in spec.source.inline
    assert spec.target == "final"
    assert spec.output.image == "127.0.0.1:5000/stagefleet/seed:latest"
    assert spec.output.refs == ("127.0.0.1:5000/stagefleet/seed:latest",)
    assert spec.cache_repository("team-a") == "127.0.0.1:5000/stagefleet/seed/cache/team-a"
    assert spec.stages_repository("team-a") == "127.0.0.1:5000/stagefleet/seed/stages/team-a"
    assert spec.timeout_seconds == 600
    assert spec.retries == 2 and spec.max_parallel_pods == 4


def test_minimal_git_spec_defaults() -> None:
    spec = parse_spec(
        {"source": {"git": {"url": "https://example.com/r.git"}}, "output": {"image": "r.io/a/b"}}
    )
    assert spec.source.git is not None and spec.source.git.revision == "HEAD"
    assert spec.dockerfile == "Dockerfile" and spec.target is None
    assert spec.output.tag == "latest" and spec.timeout_seconds == 3600 and spec.retries == 2
    assert spec.cache.mode == "max" and not spec.cache.disabled


def test_oci_source() -> None:
    spec = parse_spec({"source": {"oci": {"image": "r.io:5000/team/ctx:pr-1"}, "contextDir": "app"},
                       "output": {"image": "r.io/a/b"}})
    assert spec.source.oci is not None and spec.source.oci.image == "r.io:5000/team/ctx:pr-1"
    assert spec.source.git is None and spec.source.inline is None and spec.source.context_dir == "app"
    assert spec.source.where == "spec.source.oci.image r.io:5000/team/ctx:pr-1"


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda s: s["source"].update(git={"url": "https://x/y.git"}), "spec.source"),
        (lambda s: s.update(source={}), "spec.source"),
        (lambda s: s["source"].update(oci={"image": "r.io/ctx:v1"}), "spec.source"),
        (lambda s: s.update(source={"oci": {"image": "ctx:v1"}}), "spec.source.oci.image"),
        (lambda s: s.update(source={"oci": {"image": "r.io/ctx@sha256:00"}}), "spec.source.oci.image"),
        (lambda s: s.update(source={"oci": {}}), "spec.source.oci.image"),
        (lambda s: s["output"].update(image="Not/Valid"), "spec.output.image"),
        (lambda s: s["output"].update(image="r.io/a@sha256:00"), "spec.output.image"),
        (lambda s: s["output"].update(tags=["ok", "bad tag"]), "spec.output.tags[1]"),
        (lambda s: s.update(cache={"mode": "all"}), "spec.cache.mode"),
        (lambda s: s.update(cache={"disabled": True, "repository": "r.io/c"}), "spec.cache.repository"),
        (lambda s: s.update(retries=11), "spec.retries"),
        (lambda s: s.update(retries=-1), "spec.retries"),
        (lambda s: s.update(retries="2"), "spec.retries"),
        (lambda s: s.update(maxParallelPods=0), "spec.maxParallelPods"),
        (lambda s: s.update(timeout="soon"), "spec.timeout"),
        (lambda s: s.update(timeout="0s"), "spec.timeout"),
        (
            lambda s: s.update(
                secrets=[
                    {"id": "a", "secretRef": {"name": "s", "key": "k"}},
                    {"id": "a", "secretRef": {"name": "t", "key": "k"}},
                ]
            ),
            "spec.secrets[1].id",
        ),
        (
            lambda s: s.update(secrets=[{"id": "a", "secretRef": {"name": "Bad_Name", "key": "k"}}]),
            "spec.secrets[0].secretRef.name",
        ),
        (
            lambda s: s.update(ssh=[{"id": "default", "secretRef": {"name": "s"}}]),
            "spec.ssh[0].secretRef.key",
        ),
        (lambda s: s.update(buildArgs={"1bad": "x"}), "spec.buildArgs.1bad"),
        (lambda s: s.update(tolerations=[{"operator": "Maybe"}]), "spec.tolerations[0].operator"),
        (lambda s: s["source"].update(contextDir="sub"), "spec.source.contextDir"),
        (lambda s: s["source"].update(contextDir="/"), "spec.source.contextDir"),
        (lambda s: s.pop("output"), "spec.output.image"),
        (lambda s: s.update(timeout=""), "spec.timeout"),
        (lambda s: s.update(tolerations=[{"operator": "Exists", "value": "v"}]), "spec.tolerations[0]"),
    ],
)
def test_bad_specs_name_the_field(mutate: Any, path: str) -> None:
    spec = copy.deepcopy(seed_spec())
    mutate(spec)
    with pytest.raises(SpecError) as e:
        parse_spec(spec)
    assert e.value.path == path
    assert str(e.value).startswith(f"{path}: ")


# The CRD's x-kubernetes-validations rules, each with a spec that breaks it and the field the operator names.
# Kubernetes 1.24 drops these rules unless the CustomResourceValidationExpressions feature gate is on, so
# the operator has to refuse the same specs itself, with the rule's words.
CRD_SPEC_SCHEMA = yaml.safe_load((ROOT / "crds" / "imagebuild.yaml").read_text())["spec"]["versions"][0][
    "schema"
]["openAPIV3Schema"]["properties"]["spec"]
CEL_CASES: dict[str, tuple[Any, str]] = {
    "exactly one of spec.source.git, spec.source.inline and spec.source.oci must be set": (
        lambda s: s["source"].update(git={"url": "https://example.com/r.git"}),
        "spec.source",
    ),
    "spec.cache.repository: must not be set when spec.cache.disabled is true": (
        lambda s: s.update(cache={"disabled": True, "repository": "r.io/c"}),
        "spec.cache.repository",
    ),
    "spec.source.contextDir: needs spec.source.git or spec.source.oci "
    "(an inline Dockerfile has no build context)": (
        lambda s: s["source"].update(contextDir="sub"),
        "spec.source.contextDir",
    ),
    "a toleration with operator Exists must not have a value": (
        lambda s: s.update(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
        "spec.tolerations[0]",
    ),
    "spec.timeout: must not be empty (e.g. 30m)": (lambda s: s.update(timeout=""), "spec.timeout"),
}


def crd_rule_messages(schema: dict[str, Any]) -> list[str]:
    out = [r["message"] for r in schema.get("x-kubernetes-validations", [])]
    for sub in (schema.get("properties") or {}).values():
        out += crd_rule_messages(sub)
    if "items" in schema:
        out += crd_rule_messages(schema["items"])
    return out


def failing_rules(schema: dict[str, Any], value: Any, path: str = "spec") -> list[tuple[str, str]]:
    """(path of the node the rule sits on, message) of every CRD rule the value breaks, as an API server
    with CEL evaluates them (the dev cluster's evaluator)."""
    out = [
        (path, r["message"])
        for r in schema.get("x-kubernetes-validations", [])
        if evaluate(r["rule"], {"self": value}) is not True
    ]
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                out += failing_rules(sub, value[key], f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += failing_rules(schema["items"], item, f"{path}[{i}]")
    return out


def test_every_crd_rule_has_a_case_and_is_portable() -> None:
    assert sorted(crd_rule_messages(CRD_SPEC_SCHEMA)) == sorted(CEL_CASES)
    assert failing_rules(CRD_SPEC_SCHEMA, seed_spec()) == []


@pytest.mark.parametrize("message", sorted(CEL_CASES))
def test_operator_refuses_what_each_crd_rule_refuses(message: str) -> None:
    mutate, path = CEL_CASES[message]
    spec = copy.deepcopy(seed_spec())
    mutate(spec)
    broken = failing_rules(CRD_SPEC_SCHEMA, spec)
    assert [m for _, m in broken] == [message]
    with pytest.raises(SpecError) as e:
        parse_spec(spec)
    assert e.value.path == path
    assert message in (str(e.value), e.value.message)
    # a rule on a parent object (no fieldPath before 1.28) names the field at the start of its message
    if broken[0][0] != path:
        assert message == str(e.value) and message.startswith(f"{path}: ")


def test_git_context_dir_must_stay_inside() -> None:
    base = {
        "source": {"git": {"url": "file:///r"}, "contextDir": "a/../../etc"},
        "output": {"image": "r.io/a/b"},
    }
    with pytest.raises(SpecError) as e:
        parse_spec(base)
    assert e.value.path == "spec.source.contextDir"


def test_referenced_secrets_and_stage_resources() -> None:
    spec = parse_spec(
        {
            "source": {"git": {"url": "git@github.com:o/r.git", "secretRef": {"name": "deploy-key"}}},
            "output": {"image": "r.io/a/b:1", "tags": ["1", "latest"], "pushSecretRef": {"name": "push"}},
            "secrets": [{"id": "npm", "secretRef": {"name": "tokens", "key": "npm"}}],
            "resources": {
                "default": {"requests": {"cpu": "1"}},
                "stages": {"final": {"limits": {"memory": "2Gi"}}},
            },
        }
    )
    assert spec.referenced_secrets() == {
        "push": "spec.output.pushSecretRef",
        "deploy-key": "spec.source.git.secretRef",
        "tokens": "spec.secrets[0].secretRef",
    }
    assert spec.output.refs == ("r.io/a/b:1", "r.io/a/b:latest")
    assert spec.resources_for(("build1",)).to_k8s() == {"requests": {"cpu": "1"}}
    assert spec.resources_for(("base", "final")).to_k8s() == {"limits": {"memory": "2Gi"}}


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("45m", 2700), ("1h30m", 5400), ("2h", 7200)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59))
def test_duration_roundtrip(h: int, m: int, s: int) -> None:
    text = "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v)
    if not text:
        with pytest.raises(SpecError):
            parse_duration(text)
    else:
        assert parse_duration(text) == h * 3600 + m * 60 + s


def test_split_image() -> None:
    assert split_image("127.0.0.1:5000/x/app") == ("127.0.0.1:5000/x/app", "latest")
    assert split_image("127.0.0.1:5000/x/app:v1.2") == ("127.0.0.1:5000/x/app", "v1.2")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_arbitrary_specs_parse_or_raise_spec_error(value: Any) -> None:
    for candidate in (
        value,
        {"source": value, "output": {"image": "r.io/a/b"}},
        {"source": {"inline": {"dockerfile": "FROM x"}}, "output": value},
    ):
        try:
            parse_spec(candidate)
        except SpecError as e:
            assert e.path.startswith("spec")
