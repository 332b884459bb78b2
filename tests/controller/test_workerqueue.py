"""workerqueue: the farm's cap on worker pods, shared max-min fairly between namespaces; within one, by
spec.priority, then the older run, then by name."""

from __future__ import annotations

import threading

import pytest

from stagefleet.controller.workerqueue import Demand, WorkerQueue, fair_shares, order


def test_slots_go_round_robin_to_the_namespace_running_the_fewest() -> None:
    demands = [Demand("big", f"b{i}", 3, since=f"2026-01-01T00:00:0{i}Z") for i in range(3)]
    demands.append(Demand("small", "s0", 2, since="2026-01-01T00:00:09Z"))
    # big already runs 2 pods: small gets the next two slots, then they alternate while both wait.
    assert order({"big": 2}, demands)[:6] == [
        ("small", "s0"), ("small", "s0"), ("big", "b0"), ("big", "b0"), ("big", "b0"), ("big", "b1"),
    ]
    # Both idle: alternate, the older head first.
    assert order({}, demands)[:4] == [("big", "b0"), ("small", "s0"), ("big", "b0"), ("small", "s0")]
    assert len(order({}, demands)) == 11  # every wanted group once


def test_within_a_namespace_priority_then_age_then_name() -> None:
    demands = [
        Demand("t", "old", 1, priority=0, since="2026-01-01T00:00:00Z"),
        Demand("t", "new-urgent", 1, priority=10, since="2026-01-01T00:05:00Z"),
        Demand("t", "b-new", 1, priority=0, since="2026-01-01T00:01:00Z"),
        Demand("t", "a-new", 1, priority=0, since="2026-01-01T00:01:00Z"),
        Demand("t", "low", 1, priority=-5, since="2025-01-01T00:00:00Z"),
    ]
    assert [n for _, n in order({}, demands)] == ["new-urgent", "old", "a-new", "b-new", "low"]


def test_priority_never_puts_a_namespace_before_another() -> None:
    demands = [Demand("a", "x", 4, priority=1000), Demand("b", "y", 4, priority=-1000)]
    assert order({"a": 0, "b": 0}, demands)[:4] == [("a", "x"), ("b", "y"), ("a", "x"), ("b", "y")]


def test_fair_shares_pass_what_a_namespace_does_not_need_to_the_others() -> None:
    demands = [Demand("a", "x", 100), Demand("b", "y", 2), Demand("c", "z", 100)]
    assert fair_shares(16, {}, demands) == {"b": 2, "a": 7, "c": 7}
    assert fair_shares(16, {"d": 1}, demands) == {"d": 1, "b": 2, "a": 6.5, "c": 6.5}
    assert fair_shares(1, {"a": 1}, [Demand("a", "x", 3), Demand("b", "y", 1)]) == {"a": 0.5, "b": 0.5}
    assert fair_shares(16, {}, [Demand("a", "x", 3)]) == {"a": 3}
    assert fair_shares(4, {}, []) == {}


def test_a_claim_is_granted_free_slots_in_the_fair_order_and_told_its_place() -> None:
    q = WorkerQueue(4)
    spot = q.claim(Demand("big", "b1", 3, since="2026-01-01T00:00:00Z"))
    assert (spot.granted, spot.queued) == (3, 0)
    for i in range(3):
        q.pod_seen(f"b1-{i}", "big", True)
        q.started(("big", "b1"))
    # Mid-pass: each created pod counts once (not as a pod and a reservation too).
    assert q.claim(Demand("other", "o", 0)).running == 0
    assert q.claim(Demand("big", "bx", 0)).running == 3
    q.release(("big", "b1"))

    spot = q.claim(Demand("big", "b2", 3, since="2026-01-01T00:00:01Z"))
    assert (spot.granted, spot.queued, spot.ahead, spot.running, spot.share) == (1, 2, 0, 4, 4)
    q.pod_seen("b2-0", "big", True)
    q.release(("big", "b2"))

    # The farm is full. A small namespace's build waits first in line, not behind big's backlog.
    spot = q.claim(Demand("small", "s1", 2, since="2026-01-01T00:00:09Z"))
    assert (spot.granted, spot.queued, spot.ahead, spot.running) == (0, 2, 0, 0)
    assert spot.share == 2  # its fair part of 4 (it wants 2; big's 6 would take the rest)
    assert spot.status() == {"groups": 2, "ahead": 0, "namespaceRunning": 0, "namespaceShare": 2,
                             "maxWorkerPods": 4}
    assert spot.say("small") == (
        "queued: 0 groups ahead in the farm's queue (--max-worker-pods 4); namespace small runs 0 worker "
        "pods, its fair share is 2"
    )
    assert q.backlog()

    # A big pod ends: the freed slot is small's, and small's build is the one to wake.
    assert q.pod_seen("b1-0", "big", False) == [("small", "s1")]
    assert q.pod_seen("b1-0", "big", False) == []  # (a repeated event frees nothing)
    again = q.claim(Demand("big", "b2", 2, since="2026-01-01T00:00:01Z"))  # big's pass cannot take it
    assert (again.granted, again.ahead) == (0, 2)
    spot = q.claim(Demand("small", "s1", 2, since="2026-01-01T00:00:09Z"))
    assert (spot.granted, spot.queued, spot.ahead) == (1, 1, 0)


def test_a_build_that_stops_waiting_passes_its_slot_on() -> None:
    q = WorkerQueue(1)
    q.pod_seen("p", "a", True)
    q.claim(Demand("a", "x", 1, since="2026-01-01T00:00:05Z"))
    q.claim(Demand("b", "y", 1, since="2026-01-01T00:00:01Z"))
    # Both namespaces run nothing now: the one whose first waiting build is older goes first.
    assert q.pod_seen("p", "a", False) == [("b", "y")]
    assert q.forget(("b", "y")) == [("a", "x")]  # y ended (or was deleted): x is next
    assert q.claim(Demand("a", "x", 1, since="2026-01-01T00:00:05Z")).granted == 1
    q.release(("a", "x"))  # (its pod was refused: nothing runs)
    assert not q.backlog() and q.sizes() == {"queue_pods": 0, "queue_demands": 0, "queue_namespaces": 0}


def test_with_a_cap_of_one_the_slot_alternates_between_namespaces() -> None:
    """When a slot frees, every namespace runs nothing: the one served longest ago goes first, not the
    oldest build (which would make it first come, first served for the big backlog)."""
    q = WorkerQueue(1)
    assert q.claim(Demand("big", "b1", 1, since="2026-01-01T00:00:01Z")).granted == 1
    q.pod_seen("p1", "big", True)
    q.release(("big", "b1"))
    for i in (2, 3, 4):
        q.claim(Demand("big", f"b{i}", 1, since=f"2026-01-01T00:00:0{i}Z"))
    assert q.claim(Demand("small", "s", 1, since="2026-01-01T00:00:09Z")).ahead == 0
    assert q.pod_seen("p1", "big", False) == [("small", "s")]
    assert q.claim(Demand("big", "b2", 1, since="2026-01-01T00:00:02Z")).ahead == 1
    assert q.claim(Demand("small", "s", 1, since="2026-01-01T00:00:09Z")).granted == 1
    q.pod_seen("p2", "small", True)
    q.release(("small", "s"))
    assert q.pod_seen("p2", "small", False) == [("big", "b2")]


def test_concurrent_claims_never_exceed_the_cap() -> None:
    q = WorkerQueue(5)
    granted: list[int] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        spot = q.claim(Demand(f"ns{i % 3}", f"b{i}", 2))
        with lock:
            granted.append(spot.granted)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 5  # reservations count until the passes release them


def test_no_cap_grants_everything_and_keeps_nothing() -> None:
    q = WorkerQueue(0)
    assert not q.enabled
    assert q.claim(Demand("a", "x", 7)).granted == 7
    assert not q.backlog()
    with pytest.raises(ValueError):
        WorkerQueue(-1)
