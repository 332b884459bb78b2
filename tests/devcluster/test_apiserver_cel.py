"""The CEL subset used by x-kubernetes-validations rules (emulator-internal evaluator)."""

from __future__ import annotations

from typing import Any

import pytest

from stagefleet.devcluster.apiserver.cel import CELError, evaluate

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
