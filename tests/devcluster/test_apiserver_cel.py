"""The CEL subset used by x-kubernetes-validations rules (emulator-internal evaluator), and the rules as
the emulator admits CRDs and custom resources with them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagefleet.devcluster.apiserver.api import Core, WriteOptions
from stagefleet.devcluster.apiserver.cel import CELError, evaluate
from stagefleet.devcluster.apiserver.errors import ApiError

SELF = {"spec": {"replicas": 3, "name": "abc", "items": [1, 2, 3], "labels": {"a": "1"}, "mode": "Exists"}}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("self.spec.replicas > 2 && self.spec.name.startsWith('a')", True),
        ("has(self.spec.missing)", False),
        ("!has(self.spec.missing) || self.spec.missing > 0", True),
        ("has(self.spec.name) != has(self.spec.missing)", True),
        ("size(self.spec.items) == 3 && self.spec.items.size() == 3", True),
        ("self.spec.items.all(i, i > 0)", True),
        ("self.spec.items.exists(i, i == 5)", False),
        ("self.spec.items.exists_one(i, i > 2)", True),
        ("self.spec.items.filter(i, i > 1)", [2, 3]),
        ("self.spec.items.map(i, i * 10)", [10, 20, 30]),
        ("'a' in self.spec.labels && 2 in self.spec.items", True),
        ("self.spec.name.matches('^a.c$')", True),
        ("self.spec.replicas % 2 == 1 ? 'odd' : 'even'", "odd"),
        ("-7 / 2", -3),
        ("1.5 + 2.0", 3.5),
        ("'x' + 'y'", "xy"),
        ("self.spec.mode != 'Exists' || !has(self.spec.value) || self.spec.value == ''", True),
        ("self.spec.missing == 1 || true", True),
        ("false && self.spec.missing == 1", False),
        ("int('42') + 1", 43),
        ("string(5) == '5'", True),
        ("[1, 2] + [3]", [1, 2, 3]),
        ("{'k': 1}.k", 1),
        ("self.spec.name.split('b')", ["a", "c"]),
    ],
)
def test_expressions(expr: str, expected: Any) -> None:
    assert evaluate(expr, {"self": SELF}) == expected


@pytest.mark.parametrize(
    "expr",
    ["self.spec.missing == 1", "1 + 'a'", "1 < 'a'", "undefined_var", "self.spec.items[9]", "1 +", "1 / 0"],
)
def test_errors_are_reported_not_guessed(expr: str) -> None:
    with pytest.raises(CELError):
        evaluate(expr, {"self": SELF})


# -- the rules as the emulator admits them ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CRDS = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def _crd_with_rule(rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "rules.unit.stagefleet.dev"},
        "spec": {
            "group": "unit.stagefleet.dev",
            "scope": "Namespaced",
            "names": {"plural": "rules", "kind": "Rule"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-validations": [rule],
                                    "properties": {"a": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_a_crd_whose_rule_does_not_compile_is_refused_naming_the_rule() -> None:
    core = Core()
    with pytest.raises(ApiError) as err:
        core.create(core.rt(*CRDS), "", _crd_with_rule({"rule": "self.a >", "message": "m"}))
    assert err.value.code == 422 and err.value.details is not None
    (c,) = err.value.details["causes"]
    # one schema for all versions: 1.24 names it by its internal spec.validation, the rule in Go syntax
    assert c["field"] == "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"
    assert c["message"].startswith(
        'Invalid value: apiextensions.ValidationRule{Rule:"self.a >", Message:"m"}: compilation failed: '
    )
    core.create(core.rt(*CRDS), "", _crd_with_rule({"rule": "self.a > 0", "message": "m"}))


def _project_core() -> tuple[Core, Any]:
    core = Core()
    core.create(core.rt(*CRDS), "", yaml.safe_load((ROOT / "crds" / "imagebuild.yaml").read_text()))
    return core, core.rt("stagefleet.io", "v1alpha1", "imagebuilds")


@pytest.mark.parametrize(
    ("spec_update", "cause"),
    [
        (
            {"cache": {"disabled": True, "repository": "r.example/c"}},
            (
                "spec",
                "spec.cache.repository: must not be set when spec.cache.disabled is true",
            ),
        ),
        (
            {"source": {"inline": {"dockerfile": "FROM x\n"}, "contextDir": "sub"}},
            (
                "spec",
                "spec.source.contextDir: needs spec.source.git or spec.source.oci "
                "(an inline Dockerfile has no build context)",
            ),
        ),
        (
            {"timeout": ""},
            ("spec.timeout", "spec.timeout: must not be empty (e.g. 30m)"),
        ),
    ],
    ids=["cache", "context-dir", "timeout"],
)
def test_project_crd_rules_name_the_field_in_their_message(
    spec_update: dict[str, Any], cause: tuple[str, str]
) -> None:
    """Without fieldPath (1.28+) a rule on spec is reported at spec: its message carries the field. The
    value is printed as 1.24 prints it (the spec as a Go map, a string quoted)."""
    core, rt = _project_core()
    doc = {
        "apiVersion": "stagefleet.io/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": "b"},
        "spec": {"source": {"inline": {"dockerfile": "FROM x\n"}}, "output": {"image": "r.example/a/b:1"}},
    }
    core.create(rt, "default", copy.deepcopy(doc), WriteOptions(dry_run=True))
    doc["spec"].update(spec_update)
    with pytest.raises(ApiError) as err:
        core.create(rt, "default", doc, WriteOptions(dry_run=True))
    assert err.value.details is not None
    ((field, message),) = [(c["field"], c["message"]) for c in err.value.details["causes"]]
    shown = '""' if field == "spec.timeout" else "map[string]interface {}{"
    assert (
        field == cause[0]
        and message.startswith(f"Invalid value: {shown}")
        and message.endswith(f": {cause[1]}")
    )
