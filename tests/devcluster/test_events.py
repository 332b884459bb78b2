"""Repeated Events aggregate into one object with a count (controller/events.py through controller/kube.py),
on both tiers: a real kube-apiserver and the emulator must both accept the count patch."""

from __future__ import annotations

import json
import uuid
from typing import Any

from stagefleet.controller.events import EventCorrelator
from stagefleet.controller.kube import Kube as ApiKube


def test_a_repeated_event_raises_the_count_of_one_object(kube: Any) -> None:
    api = ApiKube.connect(str(kube.kubeconfig))
    ib = {"metadata": {"name": "app", "namespace": kube.namespace, "uid": str(uuid.uuid4())}}
    for _ in range(3):
        api.event(ib, "Warning", "PodRejected", "pod app-1-g1-a1 refused: quota exceeded")
    api.event(ib, "Warning", "PodRejected", "pod app-1-g1-a1 refused: another message")
    items = json.loads(kube.kubectl("get", "events", "-o", "json").stdout)["items"]
    mine = {e["message"]: e for e in items if e["involvedObject"].get("uid") == ib["metadata"]["uid"]}
    assert len(mine) == 2, [e["metadata"]["name"] for e in items]
    repeated = mine["pod app-1-g1-a1 refused: quota exceeded"]
    assert repeated["count"] == 3 and repeated["reason"] == "PodRejected"
    assert repeated["firstTimestamp"] <= repeated["lastTimestamp"]
    assert mine["pod app-1-g1-a1 refused: another message"]["count"] == 1


def test_the_correlator_is_bounded_and_windowed() -> None:
    c = EventCorrelator(capacity=2, window=10.0)
    keys = [("ns", f"uid-{i}", "Warning", "R", "m") for i in range(3)]
    assert c.repeat_of(keys[0], 0.0) is None
    c.created(keys[0], "e0", "t0", 0.0)
    seen = c.repeat_of(keys[0], 5.0)
    assert seen is not None and (seen.name, seen.count, seen.first) == ("e0", 2, "t0")
    assert c.repeat_of(keys[0], 16.0) is None  # 11 s after the last one: past the window, a new Event
    c.created(keys[1], "e1", "t1", 16.0)
    c.created(keys[2], "e2", "t2", 17.0)
    assert len(c) == 2 and c.repeat_of(keys[0], 17.5) is None  # the oldest fell out of the LRU
    assert c.repeat_of(keys[2], 18.0) is not None
    c.forget(keys[2])
    assert c.repeat_of(keys[2], 18.5) is None
