"""sourceslots: git sources resolve at most `total` at once and `per_namespace` of one namespace's; a
namespace over its share waits for its own slots while another namespace's source starts at once."""

from __future__ import annotations

import threading
import time

import pytest

from stagefleet.controller.sourceslots import SourceSlots


def hold(slots: SourceSlots, namespace: str, release: threading.Event,
         started: list[str]) -> threading.Thread:
    def run() -> None:
        with slots.slot(namespace):
            started.append(namespace)
            release.wait(10)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def settle(slots: SourceSlots, busy: dict[str, int]) -> None:
    for _ in range(200):
        if slots.busy() == busy:
            return
        time.sleep(0.01)
    assert slots.busy() == busy


def test_a_namespace_over_its_share_waits_and_another_starts_at_once() -> None:
    slots = SourceSlots(total=3, per_namespace=2)
    release_a, release_b = threading.Event(), threading.Event()
    started: list[str] = []
    greedy = [hold(slots, "a", release_a, started) for _ in range(4)]
    settle(slots, {"a": 2})  # two of a's four run; the other two wait for a's slots
    other = hold(slots, "b", release_b, started)
    settle(slots, {"a": 2, "b": 1})  # b was not queued behind a's waiting sources
    assert started.count("a") == 2 and started.count("b") == 1
    release_b.set()
    other.join(5)
    settle(slots, {"a": 2})  # b's slot is free, but a's share is still 2
    release_a.set()
    for t in greedy:
        t.join(5)
    assert started.count("a") == 4 and slots.busy() == {}  # no entry is left behind


def test_the_total_bounds_all_namespaces() -> None:
    slots = SourceSlots(total=2, per_namespace=2)
    release = threading.Event()
    started: list[str] = []
    threads = [hold(slots, ns, release, started) for ns in ("a", "b", "c")]
    for _ in range(200):
        if len(started) == 2:
            break
        time.sleep(0.01)
    time.sleep(0.1)  # the third would have started by now, were it allowed to
    assert sum(slots.busy().values()) == 2 and len(started) == 2
    release.set()
    for t in threads:
        t.join(5)
    assert sorted(started) == ["a", "b", "c"] and slots.busy() == {}


def test_a_failing_resolution_gives_its_slot_back() -> None:
    slots = SourceSlots(total=1, per_namespace=1)
    with pytest.raises(RuntimeError), slots.slot("a"):
        raise RuntimeError("git died")
    assert slots.busy() == {}
    with slots.slot("a"):
        assert slots.busy() == {"a": 1}
    with pytest.raises(ValueError):
        SourceSlots(total=0, per_namespace=1)
