"""reconciler: git sources resolve off the reconcile threads, within a bounded time (issue #14 item 6), and
their credentials come from the Secret, known_hosts required for ssh (item 5).

The API is an in-memory stand-in for kube.Kube holding several ImageBuilds; git is real (file:// and a
black-holed git:// port: a listening socket that never answers).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.policy import Policy
from stagefleet.controller.reconciler import Reconciler

from .crdschema import undeclared

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git missing")

DOCKERFILE = "FROM busybox AS one\nRUN true\nFROM busybox AS two\nCOPY --from=one /x /x\n"
# git:// and file:// are off by default (stagefleet.controller.policy); these tests serve repositories so.
LOCAL_SOURCES = Policy(source_schemes=("https", "ssh", "git", "file"))


def CONFIG(timeout: float) -> OperatorConfig:  # noqa: N802
    return OperatorConfig(status_coalesce=0, source_timeout=timeout, policy=LOCAL_SOURCES)


class FakeApi:
    """The calls Reconciler makes, in memory, for several ImageBuilds of namespace ns."""

    def __init__(self) -> None:
        self.ibs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.events: list[tuple[str, str, str, str]] = []

    def add(self, name: str, spec: dict[str, Any]) -> None:
        self.ibs[name] = {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"output": {"image": f"127.0.0.1:5000/t/{name}:1"}, "timeout": "10m", **spec},
        }

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.ibs[name].get("status") or {})

    def get_imagebuild(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.ibs.get(name))

    def list_worker_pods(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods.values() if p["metadata"]["labels"].get(
            "stagefleet.io/imagebuild-uid") == uid]

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return set(self.secrets[name]) if name in self.secrets else None

    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes | None:
        return self.secrets.get(name, {}).get(key)

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        pod = copy.deepcopy(dict(manifest))
        pod["metadata"]["uid"] = f"uid-{pod['metadata']['name']}"
        pod["status"] = {"phase": "Pending"}
        if manifest["kind"] == "Pod":
            self.pods[pod["metadata"]["name"]] = pod
        return pod

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        self.pods.pop(name, None)

    def delete_configmaps(self, namespace: str, uid: str) -> None:
        pass

    def write_status(self, ib: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        assert undeclared(dict(new)) == [], undeclared(dict(new))  # (the CRD declares every field)
        stored = self.ibs[ib["metadata"]["name"]]
        if dict(stored.get("status") or {}) == dict(new):
            return False
        stored["status"] = copy.deepcopy(dict(new))
        return True

    def event(self, ib: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((ib["metadata"]["name"], type_, reason, message))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    (r / "Dockerfile").write_text(DOCKERFILE)
    _git(r, "init", "-q", "-b", "main")
    _git(r, "add", ".")
    _git(r, "commit", "-qm", "one")
    return r


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A git:// URL whose host accepts the connection and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"git://127.0.0.1:{s.getsockname()[1]}/repo.git"


def test_black_holed_sources_delay_only_their_own_builds(repo: Path, black_hole: str) -> None:
    """Three builds whose git host never answers, one normal build, two reconcile threads: every first
    pass returns at once (Planning, "resolving source"), the normal build plans and starts its pods while
    the others wait, and each black-holed build then fails on its own, naming spec.source.git.url."""
    api = FakeApi()
    holes = [f"hole-{i}" for i in range(3)]
    for name in holes:
        api.add(name, {"source": {"git": {"url": black_hole}}})
    api.add("ok", {"source": {"git": {"url": f"file://{repo}", "revision": "main"}}})
    timeout = 4.0
    r = Reconciler(cast(Kube, api), CONFIG(timeout), Metrics(),
                   threads=2)

    async def scenario() -> float:
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(r.trigger("ns", n) for n in [*holes, "ok"])), timeout=2.0)
        for name in holes:
            status = api.status(name)
            assert status["phase"] == "Planning", status
            assert "resolving source" in status["message"] and black_hole in status["message"]
        while "plan" not in api.status("ok"):
            assert time.monotonic() - started < timeout, api.status("ok")
            await asyncio.sleep(0.05)
        planned_after = time.monotonic() - started
        assert {p["metadata"]["name"] for p in api.pods.values()} and all(
            api.status(n)["phase"] == "Planning" for n in holes
        )
        while any(api.status(n)["phase"] != "Failed" for n in holes):
            assert time.monotonic() - started < timeout + 5, [api.status(n) for n in holes]
            await asyncio.sleep(0.1)
        return planned_after

    planned_after = asyncio.run(scenario())
    assert planned_after < timeout
    for name in holes:
        status = api.status(name)
        assert "spec.source.git.url" in status["message"] and black_hole in status["message"]
        assert f"no answer within {timeout:g}s" in status["message"], status["message"]
        assert status["failure"]["reason"] == "SourceTimeout", status
    assert api.status("ok")["phase"] in ("Pending", "Building")


def test_a_black_holed_registry_fails_an_oci_source_naming_the_field(black_hole: str) -> None:
    """spec.source.oci on a registry that accepts connections and never answers: the pass returns at once
    (Planning, "resolving source: spec.source.oci.image ..."), and the build fails within the source
    timeout with SourceTimeout naming the field; no pod."""
    host = black_hole.split("/")[2]
    api = FakeApi()
    api.add("art", {"source": {"oci": {"image": f"{host}/team/ctx:main"}}})
    timeout = 2.0
    config = dataclasses.replace(
        CONFIG(timeout), worker=dataclasses.replace(CONFIG(timeout).worker, insecure_registries=(host,))
    )
    r = Reconciler(cast(Kube, api), config, Metrics(), threads=2)

    async def scenario() -> None:
        started = time.monotonic()
        await asyncio.wait_for(r.trigger("ns", "art"), timeout=1.0)
        status = api.status("art")
        assert status["phase"] == "Planning", status
        assert f"resolving source: spec.source.oci.image {host}/team/ctx:main" in status["message"], status
        while api.status("art")["phase"] != "Failed":
            assert time.monotonic() - started < timeout + 5, api.status("art")
            await asyncio.sleep(0.1)

    asyncio.run(scenario())
    status = api.status("art")
    assert status["failure"]["reason"] == "SourceTimeout", status
    assert f"spec.source.oci.image {host}/team/ctx:main: no answer within 2s" in status["message"], status
    assert api.pods == {}


def _ssh_build(api: FakeApi, **git: Any) -> None:
    api.add("priv", {"source": {"git": {"url": "ssh://git@127.0.0.1:1/r.git", "secretRef": {"name": "k"},
                                        **git}}})


def test_ssh_without_known_hosts_is_stalled_naming_the_secret_and_key() -> None:
    api = FakeApi()
    _ssh_build(api)
    api.secrets["k"] = {"ssh-privatekey": b"KEY"}
    r = Reconciler(cast(Kube, api), CONFIG(2), Metrics(), threads=1)
    assert r.reconcile("ns", "priv") == 5.0
    status = api.status("priv")
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "KnownHostsMissing"
    assert 'Secret "k" key "known_hosts"' in status["message"]
    assert "insecureIgnoreHostKey" in status["message"]
    assert [e[2] for e in api.events] == ["KnownHostsMissing"]
    # with the host keys the source is resolved (here: nothing listens, so it fails, but not Stalled)
    api.secrets["k"]["known_hosts"] = b"127.0.0.1 ssh-ed25519 AAAA\n"
    r.reconcile("ns", "priv")
    assert "resolving source" in api.status("priv")["message"]
    assert b"KEY".decode() not in str(api.ibs) + str(api.events)


def test_ssh_host_key_checking_can_be_switched_off_deliberately() -> None:
    api = FakeApi()
    _ssh_build(api, insecureIgnoreHostKey=True)
    api.secrets["k"] = {"ssh-privatekey": b"KEY"}
    r = Reconciler(cast(Kube, api), CONFIG(2), Metrics(), threads=1)
    r.reconcile("ns", "priv")
    assert "resolving source" in api.status("priv")["message"]


def test_a_source_waiting_for_a_slot_says_so_then_says_it_resolves(repo: Path, black_hole: str) -> None:
    """One slot per namespace, held by a black-holed source: the second build's status says it waits for a
    slot (how many resolve, the limits), not that it resolves; once the first gives up and frees the slot,
    the second resolves, plans and its status says so."""
    api = FakeApi()
    api.add("hole", {"source": {"git": {"url": black_hole}}})
    api.add("next", {"source": {"git": {"url": f"file://{repo}", "revision": "main"}}})
    config = dataclasses.replace(CONFIG(2.0), source_resolutions_per_namespace=1)
    r = Reconciler(cast(Kube, api), config, Metrics(), threads=2)

    async def scenario() -> None:
        await r.trigger("ns", "hole")
        started = time.monotonic()
        while r.sources.slots.busy() != {"ns": 1}:  # the hole's job holds the namespace's one slot
            assert time.monotonic() - started < 2, r.sources.slots.busy()
            await asyncio.sleep(0.01)
        await r.trigger("ns", "next")
        waiting = api.status("next")
        assert waiting["phase"] == "Planning", waiting
        said = f"waiting to resolve spec.source.git.url file://{repo}: "
        assert waiting["message"].startswith(f"{said}1 source(s) of this namespace resolving (at most 1)"), (
            waiting["message"])
        while "plan" not in api.status("next"):
            assert time.monotonic() - started < 10, (api.status("next"), api.status("hole"))
            await asyncio.sleep(0.05)
        assert api.status("hole")["phase"] == "Failed"

    asyncio.run(scenario())


def test_a_source_that_was_not_resolved_is_tried_again_by_a_new_run(black_hole: str) -> None:
    """With pollInterval, a run that failed to resolve its git source (SourceTimeout) is followed by a new
    run: at once on a new stagefleet.io/resolve value (answered, so asked once), else after the interval."""
    api = FakeApi()
    api.add("flaky", {"source": {"git": {"url": black_hole, "pollInterval": "10m"}}})
    r = Reconciler(cast(Kube, api), CONFIG(0.5), Metrics(), threads=2)

    async def until(what: Any, limit: float = 10.0) -> None:
        started = time.monotonic()
        while not what():
            assert time.monotonic() - started < limit, api.status("flaky")
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        await r.trigger("ns", "flaky")
        await until(lambda: api.status("flaky").get("phase") == "Failed")
        assert api.status("flaky")["run"] == 1 and api.status("flaky")["failure"]["reason"] == "SourceTimeout"
        await r.trigger("ns", "flaky")  # the interval has not passed: nothing
        assert api.status("flaky")["run"] == 1 and api.status("flaky")["phase"] == "Failed"
        api.ibs["flaky"]["metadata"]["annotations"] = {"stagefleet.io/resolve": "now"}
        await r.trigger("ns", "flaky")
        second = api.status("flaky")
        assert second["run"] == 2 and second["resolve"] == "now" and second["phase"] == "Planning", second
        await until(lambda: api.status("flaky").get("phase") == "Failed")
        await r.trigger("ns", "flaky")  # the same request again: answered, no third run
        assert api.status("flaky")["run"] == 2
        said = [m for (n, _, reason, m) in api.events if reason == "RunStarted"]
        assert said == ["the last run's source was not resolved (SourceTimeout): run 2 tries again"], said

    asyncio.run(scenario())
