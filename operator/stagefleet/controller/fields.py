"""Typed reads of JSON fields (status entries, worker results): a wrong type reads as absent."""

from __future__ import annotations

from typing import Any


def text(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def integer(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
