"""reconciler: once a build's result is in status, its worker pods are deleted and its stage tags removed
(a Succeeded build's at once, a Failed one's after keep_failed_seconds), and status.stageTags says how it
went; a registry refusing deletes is reported, never a failure. The registry call is replaced by a
recording stand-in; the decisions (controller.stagetags) and the rest of the pass are the real ones."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

import pytest

from stagefleet.controller import reconciler as rec
from stagefleet.controller import registry as reg
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.podspec import WorkerConfig
from stagefleet.controller.reconciler import Reconciler

from .helpers import result_json
from .test_reconciler_rejected import DOCKERFILE, NOW, FakeApi

TARGETS = {"g1": "build1", "g2": "build2", "g3": "final"}


class Secrets(FakeApi):
    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes | None:
        return None


Answer = Callable[[], tuple[int, int, reg.RegistryError | None]]


def make(monkeypatch: pytest.MonkeyPatch, now: list[datetime],
         answer: Answer) -> tuple[Secrets, Reconciler, list[Any]]:
    monkeypatch.setattr(rec, "_now", lambda: now[0])
    calls: list[Any] = []

    def remove(client: reg.Registry, repository: str, own: Callable[[str], bool]) -> Any:
        calls.append((client.host, client.insecure, repository, own))
        return answer()

    monkeypatch.setattr(rec.reg, "remove_build_tags", remove)
    api = Secrets({"source": {"inline": {"dockerfile": DOCKERFILE}},
                   "output": {"image": "127.0.0.1:5000/t/b:latest"}, "timeout": "10m"})
    config = OperatorConfig(worker=WorkerConfig(insecure_registries=("127.0.0.1:5000",)), status_coalesce=0,
                            early_start=False, keep_failed_seconds=600)
    return api, Reconciler(cast(Kube, api), config, Metrics(), threads=1), calls


def finish(api: FakeApi, group: str, *, ok: bool = True) -> None:
    pod = next(p for p in api.pods.values() if p["metadata"]["labels"]["stagefleet.io/group"] == group)
    error = None if ok else {"kind": "build-step", "message": "RUN false: exit 1", "stage": TARGETS[group],
                             "line": 6}
    message = result_json(group, TARGETS[group], f"sha256:{group * 21}"[:71], ok=ok, error=error)
    terminated = {"exitCode": 0 if ok else 13, "message": message, "startedAt": "2026-01-01T00:00:10Z",
                  "finishedAt": "2026-01-01T00:00:50Z"}
    pod["status"] = {"phase": "Succeeded" if ok else "Failed",
                     "containerStatuses": [{"name": "worker", "state": {"terminated": terminated}}]}


def run_to_the_end(api: FakeApi, r: Reconciler, *, final_ok: bool = True) -> float | None:
    r.reconcile("ns", "b")
    finish(api, "g1")
    finish(api, "g2")
    r.reconcile("ns", "b")
    finish(api, "g3", ok=final_ok)
    return r.reconcile("ns", "b")


def test_a_succeeded_builds_pods_and_stage_tags_go_in_the_next_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [NOW]
    api, r, calls = make(monkeypatch, now, lambda: (2, 2, None))
    assert run_to_the_end(api, r) == 0.5  # the terminal status is written: look again at once
    assert api.ib["status"]["phase"] == "Succeeded" and len(api.pods) == 3 and not calls

    assert r.reconcile("ns", "b") is None
    assert api.pods == {} and api.configmaps == []
    ((host, insecure, repository, own),) = calls
    assert (host, insecure, repository) == ("127.0.0.1:5000", True, "t/b/stages/ns")
    assert own("b-uid-b-1-g1-a1") and not own("b-uid-b-1-g1") and not own("other-uid-b-1-g1-a1")
    tags = api.ib["status"]["stageTags"]
    assert tags == {"deleted": 2, "time": "2026-01-01T00:01:00Z",
                    "message": "deleted 2 stage tag(s) of this build from 127.0.0.1:5000/t/b/stages/ns"}
    assert r.reconcile("ns", "b") is None and len(calls) == 1  # done: never again


def test_a_failed_build_keeps_both_until_its_time_and_a_refusing_registry_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [NOW]
    api, r, calls = make(monkeypatch, now, lambda: (0, 2, reg.Unsupported("the registry does not allow "
                                                                         "deletes (405 UNSUPPORTED)")))
    run_to_the_end(api, r, final_ok=False)
    assert api.ib["status"]["phase"] == "Failed"
    assert r.reconcile("ns", "b") == 600.0  # kept for keep_failed_seconds after completionTime
    assert len(api.pods) == 3 and not calls and "stageTags" not in api.ib["status"]

    now[0] = NOW + timedelta(seconds=600)
    assert r.reconcile("ns", "b") is None
    assert api.pods == {} and len(calls) == 1
    status = api.ib["status"]
    assert status["phase"] == "Failed" and status["stageTags"]["deleted"] == 0
    message = status["stageTags"]["message"]
    assert "kept 2 of 2: the registry does not allow deletes (405 UNSUPPORTED)" in message
    assert "REGISTRY_STORAGE_DELETE_ENABLED=true" in status["stageTags"]["message"]
    assert [e for e in api.events if e[1] == "StageTagsKept"]


def test_an_unreachable_registry_is_tried_again_later(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [NOW]
    api, r, calls = make(monkeypatch, now, lambda: (0, 0, reg.RegistryError("unreachable", transient=True)))
    run_to_the_end(api, r)
    assert r.reconcile("ns", "b") == 30.0
    assert api.ib["status"]["stageTags"]["retryAt"] == "2026-01-01T00:01:30Z"
    assert not [e for e in api.events if e[1] == "StageTagsKept"]
    now[0] = NOW + timedelta(seconds=30)
    assert r.reconcile("ns", "b") == 60.0 and len(calls) == 2
    now[0] = NOW + timedelta(seconds=90)
    assert r.reconcile("ns", "b") is None and len(calls) == 3  # the last try: reported, not retried
    assert "retryAt" not in api.ib["status"]["stageTags"]
    assert [e for e in api.events if e[1] == "StageTagsKept"]


def test_a_deleted_build_still_holding_its_stage_tags_has_them_removed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [NOW]
    api, r, calls = make(monkeypatch, now, lambda: (0, 0, reg.RegistryError("unreachable", transient=True)))
    run_to_the_end(api, r, final_ok=False)  # Failed: its tags are kept for keep_failed_seconds …
    last = copy.deepcopy(api.ib)
    r.cleanup("ns", "uid-b", last)  # … but the ImageBuild is deleted meanwhile (the DELETED event's object)
    assert api.pods == {} and len(calls) == 1  # one try, whatever comes of it: no pass will follow
    assert calls[0][2] == "t/b/stages/ns" and calls[0][3]("b-uid-b-1-g2-a1")
    assert [e for e in api.events if e[1] == "StageTagsKept"]

    done = copy.deepcopy(last)
    done["status"]["stageTags"] = {"deleted": 2, "message": "deleted 2", "time": "2026-01-01T00:01:00Z"}
    r.cleanup("ns", "uid-b", done)
    no_plan = copy.deepcopy(last)
    del no_plan["status"]["plan"]
    r.cleanup("ns", "uid-b", no_plan)
    r.cleanup("ns", "uid-b")
    assert len(calls) == 1  # removed already, nothing ever pushed, or no last state: no registry call
