"""Placeholder CEL evaluator (replaced below)."""

from __future__ import annotations

from typing import Any


class CELError(Exception):
    pass


def evaluate(expr: str, env: dict[str, Any]) -> Any:
    raise CELError("CEL not supported yet")
