"""kube.merge_patch: the status write turns the old status into exactly the new one."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stagefleet.controller.kube import merge_patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = apply_merge_patch(out.get(k), v)
    return out


def test_switching_source_kind_leaves_no_stale_keys() -> None:
    old = {
        "source": {"git": {"url": "u", "commit": "c"}},
        "failure": {"stage": "a", "line": 3},
        "phase": "Failed",
    }
    new = {"source": {"inline": True}, "phase": "Planning"}
    patch = merge_patch(old, new)
    assert patch == {"source": {"git": None, "inline": True}, "failure": None, "phase": "Planning"}
    assert apply_merge_patch(old, patch) == new


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=12,
)
# Status never contains null values (they would mean "delete" in a merge patch).
NO_NULL = st.dictionaries(st.text(max_size=3), JSON.filter(lambda v: v is not None), max_size=4)


def _strip_nulls(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip_nulls(x) for k, x in v.items() if x is not None}
    return v


@given(NO_NULL, NO_NULL)
def test_patch_roundtrip(old: dict[str, Any], new: dict[str, Any]) -> None:
    old, new = _strip_nulls(old), _strip_nulls(new)
    assert apply_merge_patch(old, merge_patch(old, new)) == new
