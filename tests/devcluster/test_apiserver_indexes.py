"""The emulator's shortcuts for big runs: the label index of selector LISTs, the garbage collector's wake-up
filter, read-only LIST results. Each must give exactly the answers of the slow path."""

from __future__ import annotations

import asyncio
import copy
import random
from typing import Any

from stagefleet.devcluster.apiserver.api import Core
from stagefleet.devcluster.apiserver.gc import GarbageCollector, gc_relevant
from stagefleet.devcluster.apiserver.selectors import label_equalities, parse_label_selector
from stagefleet.devcluster.apiserver.storage import Store

PODS = ("", "pods")


def pod(name: str, ns: str = "a", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "labels": labels}}


def test_label_equalities_are_the_selectors_equalities_only() -> None:
    assert label_equalities(None) == {}
    assert label_equalities("app=web,tier==db") == {"app": "web", "tier": "db"}
    assert label_equalities("app in (web), x in (a,b), y notin (c), z!=d, w, !v") == {"app": "web"}
    assert label_equalities("a=") == {"a": ""}
    assert label_equalities("bad selector ((") == {}


def test_indexed_list_equals_the_full_scan_through_relabels_and_removals() -> None:
    store = Store()
    rng = random.Random(7)
    selectors = ["app=x", "app=y,tier=1", "app in (x)", "tier=2", "app=x,tier!=1", "app=nope", "tier"]
    for step in range(400):
        name = f"p{rng.randrange(40)}"
        ns = rng.choice(["a", "b"])
        if rng.random() < 0.2:
            store.remove(PODS, ns, name)
        else:
            labels = {
                k: v for k, v in (("app", rng.choice("xy")), ("tier", rng.choice("12"))) if rng.random() < 0.8
            }
            store.put(PODS, pod(name, ns, **labels))
        if step % 20 == 0:
            for text in selectors:
                match = parse_label_selector(text)
                for scope in ("a", "b", None):
                    slow = store.list(PODS, scope, where=match)
                    fast = store.list(PODS, scope, where=match, labels=label_equalities(text))
                    assert fast == slow, (text, scope)


def test_read_only_list_returns_the_stored_objects_without_copying() -> None:
    store = Store()
    store.put(PODS, pod("p", app="x"))
    [copied] = store.list(PODS, "a")
    [shared] = store.list(PODS, "a", copies=False)
    assert copied == shared and copied is not shared
    assert store.list(PODS, "a", copies=False)[0] is shared  # the same stored dict
    store.put(PODS, pod("p", app="y"))  # a write replaces the stored dict; the old one is unchanged
    assert shared["metadata"]["labels"] == {"app": "x"}


def test_gc_wakes_for_deletions_and_owner_changes_not_for_status_writes() -> None:
    owned = pod("p")
    owned["metadata"]["ownerReferences"] = [{"uid": "owner-1", "kind": "ImageBuild", "name": "b"}]
    owned["status"] = {"phase": "Pending"}
    running = copy.deepcopy(owned)
    running["status"] = {"phase": "Running"}
    assert gc_relevant("ADDED", owned, None)  # its owner may be missing already
    assert not gc_relevant("MODIFIED", running, owned)  # a status write of an owned object
    assert not gc_relevant("ADDED", pod("free"), None)
    assert gc_relevant("DELETED", pod("free"), pod("free"))  # owners of dependents may be gone
    deleting = copy.deepcopy(running)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert gc_relevant("MODIFIED", deleting, running)
    moved = copy.deepcopy(running)
    moved["metadata"]["ownerReferences"] = [{"uid": "owner-2", "kind": "ImageBuild", "name": "c"}]
    assert gc_relevant("MODIFIED", moved, running)


SPEC = {"containers": [{"name": "c", "image": "busybox"}]}


def _pass(gc: GarbageCollector) -> None:
    """What GarbageCollector.run does per wake-up: the objects written since, or everything."""
    todo, everything = gc._todo, gc._everything
    gc._todo, gc._everything = set(), False
    gc.run_once(None if everything else todo)


def test_gc_pass_after_writes_looks_at_the_written_objects_and_after_a_deletion_at_all() -> None:
    c = Core()
    gc = GarbageCollector(c)
    cms, pods = c.rt("", "v1", "configmaps"), c.rt("", "v1", "pods")
    _pass(gc)  # the first pass looks at everything
    owner = c.create(cms, "default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    lost = {**ref, "name": "gone", "uid": "no-such-uid"}
    c.create(pods, "default", {"metadata": {"name": "kept", "ownerReferences": [ref]}, "spec": SPEC})
    c.create(pods, "default", {"metadata": {"name": "stray", "ownerReferences": [lost]}, "spec": SPEC})
    assert not gc._everything and len(gc._todo) == 2  # the creations only (the owner has no owner)
    _pass(gc)
    assert c.store.get(pods.key, "default", "stray") is None  # created with a missing owner: collected
    assert c.store.get(pods.key, "default", "kept") is not None
    assert gc._everything  # collecting "stray" was a deletion: the next pass looks at everything
    _pass(gc)
    c.patch(
        pods,
        "default",
        "kept",
        "application/merge-patch+json",
        b'{"status":{"phase":"Running"}}',
        subresource="status",
    )
    assert not gc._todo and not gc._everything  # a status write gives the collector nothing to do
    c.delete(cms, "default", "owner")
    assert gc._everything
    _pass(gc)
    assert c.store.get(pods.key, "default", "kept") is None


def test_gc_loop_ends_when_cancelled_as_a_write_wakes_it() -> None:
    """The emulator's stop() cancels the collector and awaits it. With asyncio.wait_for (Python 3.11) a
    cancel arriving as the wait ended was swallowed: the loop went on and stop() never returned."""

    async def scenario() -> bool:
        gc = GarbageCollector(Core())
        task = asyncio.get_running_loop().create_task(gc.run())
        await asyncio.sleep(0.05)  # the first pass is done; the loop waits for a wake-up
        for _ in range(20):
            gc._wake.set()  # a write woke it ...
            task.cancel()  # ... in the same loop iteration as the stop
            try:
                await asyncio.wait_for(asyncio.shield(task), 2)
            except asyncio.CancelledError:
                return True
            except TimeoutError:
                return False
            task = asyncio.get_running_loop().create_task(gc.run())
            await asyncio.sleep(0.01)
        return True

    assert asyncio.run(scenario())
