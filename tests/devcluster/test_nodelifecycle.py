"""nodelifecycle.py's pure parts: the conditions and taints of a node whose kubelet stopped reporting, and
when the taint manager deletes a pod (Kubernetes' toleration rules)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stagefleet.devcluster import nodelifecycle as nl

UNREACHABLE_NO_EXECUTE = {
    "key": "node.kubernetes.io/unreachable",
    "effect": "NoExecute",
    "timeAdded": "2026-01-01T00:00:00Z",
}
T_ADDED = nl.parse_time("2026-01-01T00:00:00Z")
assert T_ADDED is not None


def pod(*tolerations: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"tolerations": list(tolerations)}}


def test_unknown_conditions_keep_the_last_heartbeat() -> None:
    node = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
                {"type": "NetworkUnavailable", "status": "False"},
            ]
        }
    }
    conds = {c["type"]: c for c in nl.unknown_conditions(node, "2026-01-01T00:01:00Z")}
    assert set(conds) == {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable"}
    ready = conds["Ready"]
    assert ready["status"] == "Unknown" and ready["reason"] == "NodeStatusUnknown"
    assert ready["message"] == "Kubelet stopped posting node status."
    assert ready["lastHeartbeatTime"] == "2026-01-01T00:00:00Z"
    assert ready["lastTransitionTime"] == "2026-01-01T00:01:00Z"
    assert conds["NetworkUnavailable"] == {"type": "NetworkUnavailable", "status": "False"}
    never = nl.unknown_conditions({}, "2026-01-01T00:01:00Z")
    assert {c["reason"] for c in never} == {"NodeStatusNeverUpdated"}


def test_taints_follow_the_ready_condition_and_spare_a_full_disruption() -> None:
    assert nl.wanted_taints("True", False) == [] and nl.wanted_taints(None, False) == []
    assert nl.wanted_taints("Unknown", False) == [
        ("node.kubernetes.io/unreachable", "NoSchedule"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
    ]
    assert nl.wanted_taints("Unknown", True) == [("node.kubernetes.io/unreachable", "NoSchedule")]
    assert nl.wanted_taints("False", False) == [
        ("node.kubernetes.io/not-ready", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoExecute"),
    ]


def test_merging_taints_keeps_others_and_the_time_of_unchanged_ones() -> None:
    own = {"key": "pool", "value": "gpu", "effect": "NoSchedule"}
    current = [own, UNREACHABLE_NO_EXECUTE]
    wanted = nl.wanted_taints("Unknown", False)
    merged = nl.merge_taints(current, wanted, "2026-01-01T00:05:00Z")
    assert merged == [
        own,
        {
            "key": "node.kubernetes.io/unreachable",
            "effect": "NoSchedule",
            "timeAdded": "2026-01-01T00:05:00Z",
        },
        UNREACHABLE_NO_EXECUTE,
    ]
    assert nl.merge_taints(merged, [], "2026-01-01T00:06:00Z") == [own]


def test_eviction_time_follows_the_tolerations() -> None:
    # Admission's default toleration: 300 s after the taint.
    default = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}
    assert (
        nl.eviction_time(pod({**default, "tolerationSeconds": 300}), [UNREACHABLE_NO_EXECUTE])
        == T_ADDED + 300
    )
    assert nl.eviction_time(pod(), [UNREACHABLE_NO_EXECUTE]) == 0.0  # not tolerated: at once
    assert nl.eviction_time(pod(default), [UNREACHABLE_NO_EXECUTE]) is None  # tolerated for ever
    assert nl.eviction_time(pod({"operator": "Exists"}), [UNREACHABLE_NO_EXECUTE]) is None
    both = pod({**default, "tolerationSeconds": 30}, {"operator": "Exists", "tolerationSeconds": 10})
    assert nl.eviction_time(both, [UNREACHABLE_NO_EXECUTE]) == T_ADDED + 10
    no_schedule = {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}
    assert nl.eviction_time(pod(), [no_schedule]) is None


@given(
    st.sampled_from(["", "k", "other"]),
    st.sampled_from(["Exists", "Equal"]),
    st.sampled_from(["", "v", "w"]),
    st.sampled_from(["", "NoSchedule", "NoExecute"]),
)
def test_toleration_matching(key: str, operator: str, value: str, effect: str) -> None:
    taint = {"key": "k", "value": "v", "effect": "NoExecute"}
    toleration = {"key": key, "operator": operator, "value": value, "effect": effect}
    expected = (
        effect in ("", "NoExecute")
        and key in ("", "k")
        and (operator == "Exists" or (key == "k" and value == "v"))
    )
    assert nl.tolerates(toleration, taint) == expected
