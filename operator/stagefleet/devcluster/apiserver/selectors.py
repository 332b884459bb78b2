"""Label selectors (equality and set-based) and field selectors, parsed like the apiserver does."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import bad_request

Predicate = Callable[[Mapping[str, Any]], bool]

_SET_RE = re.compile(
    r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\)|(==|=|!=)\s*([^,\s]*))?\s*$"
)


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _requirement(
    neg: bool, key: str, setop: str | None, values: str | None, eqop: str | None, value: str | None
) -> Callable[[Mapping[str, str]], bool]:
    if setop:
        vals = {v.strip() for v in (values or "").split(",") if v.strip()}
        if setop == "in":
            return lambda lb: key in lb and lb[key] in vals
        return lambda lb: key not in lb or lb[key] not in vals
    if eqop == "!=":
        return lambda lb: lb.get(key) != value
    if eqop:
        return lambda lb: lb.get(key) == value
    if neg:
        return lambda lb: key not in lb
    return lambda lb: key in lb


def parse_label_selector(text: str | None) -> Predicate:
    """A predicate over an object's metadata.labels."""
    if not text:
        return lambda obj: True
    reqs: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split_top(text):
        m = _SET_RE.match(part)
        if not m:
            raise bad_request(f"unable to parse requirement: {part!r}")
        neg, key, setop, values, eqop, value = m.groups()
        reqs.append(_requirement(bool(neg), key, setop, values, eqop, value))

    def pred(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r(labels) for r in reqs)

    return pred


def label_equalities(text: str | None) -> dict[str, str]:
    """The `key=value` / `key==value` / `key in (value)` requirements of a label selector: every object
    the selector matches carries these labels, so an index on them narrows a LIST (the full selector still
    decides). Unparsable text gives {} (parse_label_selector reports it)."""
    out: dict[str, str] = {}
    for part in _split_top(text or ""):
        m = _SET_RE.match(part)
        if not m:
            return {}
        neg, key, setop, values, eqop, value = m.groups()
        if eqop in ("=", "==") and not neg:
            out[key] = value or ""
        elif setop == "in" and not neg:
            vals = {v.strip() for v in (values or "").split(",") if v.strip()}
            if len(vals) == 1:
                out[key] = vals.pop()
    return out


def field_value(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text: str | None) -> Predicate:
    """Field selectors: `path=value`, `path==value`, `path!=value`, comma-joined (AND)."""
    if not text:
        return lambda obj: True
    reqs: list[tuple[str, bool, str]] = []
    for part in _split_top(text):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise bad_request(f"invalid field selector: {part!r}")
        reqs.append((m.group(1), m.group(2) == "!=", m.group(3)))

    def pred(obj: Mapping[str, Any]) -> bool:
        return all((field_value(obj, p) == v) != neg for p, neg, v in reqs)

    return pred
