"""controller.trust in decide (issue #14 item 2): only pods the operator created speak for a group."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any, cast

from stagefleet.controller import reconciler as rec
from stagefleet.controller import trust
from stagefleet.controller.config import OperatorConfig
from stagefleet.controller.kube import Kube
from stagefleet.controller.metrics import Metrics
from stagefleet.controller.reconciler import Reconciler
from stagefleet.controller.report import planned_status
from stagefleet.controller.status import Decision

from .helpers import SEED_PLAN, decide_pods, make_spec, pod, result_json, uid_of
from .test_reconciler_rejected import DOCKERFILE, FakeApi

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
D1, FORGED = "sha256:" + "1" * 64, "sha256:" + "e" * 64
SPEC = make_spec()


def run(status: dict[str, Any], pods: list[dict[str, Any]], **kw: Any) -> Decision:
    return decide_pods(status, pods, now=NOW, spec=SPEC, backoff_base=5, **kw)


def running() -> dict[str, Any]:
    """g1 and g2 running, their pods' UIDs recorded."""
    s = planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)
    s = run(s, []).status
    return dict(run(s, [pod("g1"), pod("g2")]).status)


def impostor(group: str, attempt: int = 1, **kw: Any) -> dict[str, Any]:
    """A pod someone else made: the build's labels (and name, if they like), a UID of its own."""
    p = pod(group, attempt, **kw)
    p["metadata"]["uid"] = "uid-of-someone-else"
    return p


def phases(status: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["phase"] for s in status["stages"]}


def test_a_pod_with_the_builds_labels_and_a_forged_result_is_deleted_not_adopted() -> None:
    s = running()
    forged = impostor("g1", phase="Succeeded", message=result_json("g1", "build1", FORGED))
    forged["metadata"]["name"] = "impostor"
    d = run(s, [pod("g1"), pod("g2"), forged])
    assert d.delete == ["impostor"]
    assert phases(d.status)["build1"] == "Running" and "digest" not in d.status["stages"][0]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "UntrustedPod")]
    assert "pod impostor" in d.events[0].message and "group g1, attempt 1" in d.events[0].message
    # Even with the group's own pod gone (deleted by the impostor's author, say), the impostor is no
    # stand-in: the group failed (its pod disappeared) and is retried.
    d2 = run(s, [pod("g2"), forged])
    assert phases(d2.status)["build1"] == "Retrying" and d2.delete == ["impostor"]


def test_a_pod_claiming_a_later_attempt_or_another_group_is_not_adopted() -> None:
    s = running()
    later = impostor("g1", 2, phase="Succeeded", message=result_json("g1", "build1", FORGED))
    final = impostor("g3", phase="Succeeded", message=result_json("g3", "final", FORGED))
    d = run(s, [pod("g1"), pod("g2"), later, final])
    assert sorted(d.delete) == ["seed-1-g1-a2", "seed-1-g3-a1"]
    assert d.status["stages"][0]["attempts"] == 1 and d.status["phase"] == "Building"
    assert "image" not in d.status and d.create == []


def test_a_pod_squatting_the_next_name_is_deleted_and_the_attempt_created_again() -> None:
    """The write-ahead recorded g1's pod (name, token hash); someone created a pod of that name first, so
    the operator's create found it taken. It is not adopted (no token), and the attempt — never created —
    is created again, using no attempt."""
    s = planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)
    first = run(s, [], record=False)
    intent = trust.with_intents(first.status, {"g1": trust.token_hash("t1"), "g2": trust.token_hash("t2")})
    squatter = impostor("g1", token="guessed")
    d = run(intent, [squatter, pod("g2", token="t2")])
    assert d.delete == ["seed-1-g1-a1"] and [e.reason for e in d.events] == ["UntrustedPod"]
    assert [(c.group.id, c.attempt) for c in d.create] == [("g1", 1)]
    g1 = d.status["stages"][0]
    assert g1["attempts"] == 1 and "restarts" not in g1
    assert d.status["stages"][1]["podUID"] == uid_of("seed-1-g2-a1")  # g2's own pod: adopted by token


def test_an_attempt_recorded_but_never_created_is_created_again() -> None:
    """The operator stopped after the write-ahead, before the create: no pod, no UID. Not a vanished pod
    (that would be a failure): the same attempt is created again."""
    s = planned_status(generation=1, plan=SEED_PLAN, source={"inline": True}, old={}, now=NOW)
    first = run(s, [], record=False)
    intent = trust.with_intents(first.status, {"g1": trust.token_hash("t1"), "g2": trust.token_hash("t2")})
    d = run(intent, [])
    assert sorted((c.group.id, c.attempt) for c in d.create) == [("g1", 1), ("g2", 1)]
    assert d.events == [] and set(phases(d.status).values()) == {"Pending", "Waiting"}


def test_the_reconciler_writes_the_token_hash_before_the_create_and_the_uid_after(monkeypatch: Any) -> None:
    monkeypatch.setattr(rec, "_now", lambda: NOW)
    api = FakeApi(
        {
            "source": {"inline": {"dockerfile": DOCKERFILE}},
            "output": {"image": "127.0.0.1:5000/t/b:latest"},
            "timeout": "10m",
        }
    )
    seen: list[tuple[str, Any]] = []
    write, create = api.write_status, api.create

    def spy_write(ib: Any, new: Any) -> bool:
        seen.append(("write", copy.deepcopy(new)))
        return write(ib, new)

    def spy_create(manifest: Any) -> Any:
        seen.append(("create", manifest["metadata"]["name"]))
        return create(manifest)

    api.write_status = spy_write  # type: ignore[method-assign]
    api.create = spy_create  # type: ignore[method-assign]
    r = Reconciler(cast(Kube, api), OperatorConfig(status_coalesce=0), Metrics(), threads=1)
    r.reconcile("ns", "b")
    kinds = [k for k, _ in seen]
    first_pod = next(i for i, (k, v) in enumerate(seen) if k == "create" and v.endswith("-a1") and "-1-" in v)
    assert "write" in kinds[:first_pod]
    intent = next(v for k, v in seen[:first_pod] if k == "write")
    entries = {e["group"]: e for e in intent["stages"] if e.get("podToken")}
    assert entries and all("podUID" not in e for e in entries.values())
    final = api.ib["status"]
    for e in final["stages"]:
        if e["group"] in entries:
            p = api.pods[e["pod"]]
            assert e["podUID"] == p["metadata"]["uid"]
            assert e["podToken"] == trust.token_hash(p["metadata"]["annotations"][trust.ANNOTATION_TOKEN])
