"""The kubernetes Python client: list + watch from a resourceVersion, selectors, 410 Gone, pagination."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from stagefleet.devcluster.apiserver import APIServer, write_kubeconfig


def client_for(kubeconfig: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def core(kube: Any) -> Iterator[kubernetes.client.CoreV1Api]:
    api = client_for(kube.kubeconfig)
    try:
        yield kubernetes.client.CoreV1Api(api)
    finally:
        api.close()


def cm(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": {"k": name}}


def post_cm(server: str, name: str) -> None:
    """Create ConfigMap `name` in default with a plain HTTP POST (no client library in between)."""
    req = urllib.request.Request(
        f"{server}/api/v1/namespaces/default/configmaps",
        method="POST",
        data=json.dumps(cm(name)).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=30).close()


def test_watch_from_list_resource_version_sees_only_later_changes(core: Any, kube: Any) -> None:
    ns = kube.namespace
    core.create_namespaced_config_map(ns, cm("before"))
    listed = core.list_namespaced_config_map(ns)
    # (every namespace also has kube-root-ca.crt, published a moment after it was created)
    assert [i.metadata.name for i in listed.items if i.metadata.name != "kube-root-ca.crt"] == ["before"]
    core.create_namespaced_config_map(ns, cm("after", {"pick": "yes"}))
    core.create_namespaced_config_map(ns, cm("other"))
    core.delete_namespaced_config_map("after", ns)

    events = []
    w = kubernetes.watch.Watch()
    for ev in w.stream(
        core.list_namespaced_config_map,
        ns,
        resource_version=listed.metadata.resource_version,
        label_selector="pick=yes",
        timeout_seconds=5,
    ):
        events.append((ev["type"], ev["object"].metadata.name))
        if len(events) == 2:
            w.stop()
    assert events == [("ADDED", "after"), ("DELETED", "after")]


def test_resource_versions_increase_and_conflict_on_stale_update(core: Any, kube: Any) -> None:
    ns = kube.namespace
    first = core.create_namespaced_config_map(ns, cm("occ"))
    second = core.patch_namespaced_config_map("occ", ns, {"data": {"k": "2"}})
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"k": "stale"}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("occ", ns, first)
    assert err.value.status == 409


def test_generate_name_and_already_exists(core: Any, kube: Any) -> None:
    ns = kube.namespace
    made = core.create_namespaced_config_map(ns, {"metadata": {"generateName": "gen-"}})
    assert made.metadata.name.startswith("gen-") and len(made.metadata.name) > len("gen-")
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(ns, {"metadata": {"name": made.metadata.name}})
    assert err.value.status == 409 and "AlreadyExists" in err.value.body


def test_chunked_list(core: Any, kube: Any) -> None:
    ns = kube.namespace
    for i in range(5):
        core.create_namespaced_config_map(ns, cm(f"c{i}"))
    names, token = [], None
    while True:
        page = core.list_namespaced_config_map(ns, limit=2, _continue=token)
        names += [i.metadata.name for i in page.items if i.metadata.name.startswith("c")]
        token = page.metadata._continue
        if not token:
            break
    assert sorted(names) == [f"c{i}" for i in range(5)]


# -- emulator-specific: a tiny event history makes old resourceVersions expire -----------------------------


@pytest.fixture
def small_history(tmp_path: Path) -> Iterator[kubernetes.client.CoreV1Api]:
    server = APIServer(logs_dir=tmp_path, history_size=3)
    url = server.start_in_thread()
    api = client_for(write_kubeconfig(tmp_path / "kubeconfig", url))
    try:
        yield kubernetes.client.CoreV1Api(api)
    finally:
        api.close()
        server.stop_in_thread()


def test_watch_from_expired_resource_version_is_410_gone(small_history: Any) -> None:
    """Emulator-only: a three-event history makes a resourceVersion expire at once; a real server keeps
    minutes of etcd history (compacted every 5 minutes), too long for a test to wait for."""
    core = small_history
    old_rv = core.list_namespaced_config_map("default").metadata.resource_version
    for i in range(6):
        core.create_namespaced_config_map("default", cm(f"x{i}"))
    with pytest.raises(ApiException) as err:
        for _ in kubernetes.watch.Watch().stream(
            core.list_namespaced_config_map, "default", resource_version=old_rv, timeout_seconds=5
        ):
            pass
    assert err.value.status == 410
    # relisting gives a fresh resourceVersion that can be watched again
    fresh = core.list_namespaced_config_map("default").metadata.resource_version
    w = kubernetes.watch.Watch()
    core.create_namespaced_config_map("default", cm("y"))
    seen = []
    for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=fresh, timeout_seconds=5):
        seen.append(ev["object"].metadata.name)
        w.stop()
    assert seen == ["y"]


def test_watch_list_initial_events_end_with_a_bookmark(apiserver: Any) -> None:
    """Emulator-only: sendInitialEvents=true streams the current state, then a bookmark marking its end
    (watch-list, Kubernetes 1.27+); a 1.24 server has no such parameter and serves a plain watch."""
    for name in ("a", "b"):
        post_cm(apiserver.url, name)
    url = (
        f"{apiserver.url}/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=5"
    )
    events = []
    with urllib.request.urlopen(url, timeout=30) as resp:
        for line in resp:
            ev = json.loads(line)
            events.append(ev)
            if ev["type"] == "BOOKMARK":
                break
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events[:2]] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watchers_of_a_type_get_the_same_line_encoded_once(apiserver: Any) -> None:
    """Two watches of ConfigMaps (what the operator and the kubelet are for pods) receive byte-identical
    event lines, and the emulator encoded each event once (cached on the stored event). Emulator-only: it
    looks at the emulator's internals."""
    import threading

    url = (
        f"{apiserver.url}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=10"
        "&fieldSelector=metadata.name!=kube-root-ca.crt"  # the one ConfigMap every namespace has
    )
    got: list[list[bytes]] = [[], []]

    def watch(i: int, ready: threading.Event) -> None:
        with urllib.request.urlopen(url, timeout=30) as resp:
            ready.set()
            for line in resp:
                got[i].append(line)
                if len(got[i]) == 2:
                    return

    readies = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=watch, args=(i, readies[i])) for i in (0, 1)]
    for t in threads:
        t.start()
    for r in readies:
        assert r.wait(30)
    time.sleep(0.3)  # both watches subscribed (the response headers come first)
    for name in ("w1", "w2"):
        post_cm(apiserver.url, name)
    for t in threads:
        t.join(30)
    assert got[0] == got[1] and len(got[0]) == 2
    assert [json.loads(line)["object"]["metadata"]["name"] for line in got[0]] == ["w1", "w2"]
    history = [e for e in apiserver.server.core.store._history if e.obj["metadata"]["name"] in ("w1", "w2")]
    assert [list(e.lines) for e in history] == [[("ADDED", "v1", "ConfigMap")]] * 2
    assert all(e.lines[("ADDED", "v1", "ConfigMap")] == line for e, line in zip(history, got[0], strict=True))
