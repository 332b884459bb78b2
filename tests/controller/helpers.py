"""Shared builders for the controller's pure unit tests: a seed-like plan and fake worker pods."""

from __future__ import annotations

import json
from typing import Any

from stagefleet.controller.model import GroupPlan, PlanView
from stagefleet.controller.podspec import BuildRef, pod_labels, pod_name
from stagefleet.controller.spec import ImageBuildSpec, parse_spec

from .crdschema import undeclared

BUILD = BuildRef(name="seed", namespace="ns", uid="0123456789abcdef-uid", generation=1)

SEED_PLAN = PlanView(
    target="final",
    groups=(
        GroupPlan("g1", ("build1",), (), (), ("token",), (), wave=0, critical=True, weight=3),
        GroupPlan("g2", ("build2",), (), (), (), (), wave=0, critical=False, weight=3),
        GroupPlan(
            "g3",
            ("final",),
            ("g1", "g2"),
            (("build1", "g1"), ("build2", "g2")),
            (),
            (),
            wave=1,
            critical=True,
            weight=4,
        ),
    ),
    critical_path=("build1", "final"),
    final_group="g3",
)


def make_spec(**overrides: Any) -> ImageBuildSpec:
    raw: dict[str, Any] = {
        "source": {"inline": {"dockerfile": "FROM x AS build1\nFROM x AS build2\nFROM x AS final\n"}},
        "target": "final",
        "output": {"image": "127.0.0.1:5000/t/app:latest"},
        "secrets": [
            {"id": "token", "secretRef": {"name": "build-token", "key": "value"}},
            {"id": "unused", "secretRef": {"name": "other-secret", "key": "v"}},
        ],
        "retries": 2,
        "timeout": "10m",
    }
    raw.update(overrides)
    return parse_spec(raw)


def result_json(
    group: str,
    target: str,
    digest: str,
    *,
    ok: bool = True,
    error: dict[str, Any] | None = None,
    cached: int = 0,
    upstreams: dict[str, str] | None = None,
) -> str:
    return json.dumps(
        {
            **({"upstreams": upstreams} if upstreams else {}),
            "ok": ok,
            "group": group,
            "target": target,
            "image": f"127.0.0.1:5000/t/app/stages:{group}",
            "digest": digest if ok else None,
            "cachedSteps": cached,
            "steps": 2,
            "stages": [{"name": target, "seconds": 1.5, "cachedSteps": cached, "steps": 2}],
            "error": error,
        }
    )


TOKEN = "stagefleet.io/creation-token"


def adopted(status: dict[str, Any], *pods: dict[str, Any]) -> dict[str, Any]:
    """``status`` with ``pods`` recorded as the operator records the pods it created (their attempt, name
    and UID on their groups): for tests that bring a later attempt's pod in without the pass that made it."""
    from stagefleet.controller import trust

    created = {}
    for p in pods:
        labels = p["metadata"]["labels"]
        name = p["metadata"]["name"]
        created[labels["stagefleet.io/group"]] = (
            int(labels["stagefleet.io/attempt"]), name, uid_of(name), trust.token_hash("t")
        )
    return trust.with_created(status, created)


def uid_of(name: str) -> str:
    """The UID the fake API gives pod ``name`` (and the reconciler records from the create response)."""
    return f"uid-{name}"


def recorded(d: Any) -> Any:
    """A `Decision` with its status as the reconciler writes it: the UIDs of the pods it created from
    ``d.create`` (here: those `pod` makes) recorded on their groups (controller.trust)."""
    from stagefleet.controller import trust

    build = BuildRef(BUILD.name, BUILD.namespace, BUILD.uid, BUILD.generation)
    created = {}
    for c in d.create:
        name = pod_name(build, c.group.id, c.attempt)
        created[c.group.id] = (c.attempt, name, uid_of(name), trust.token_hash("t"))
    d.status = trust.with_created(d.status, created)
    return d


def pod(
    group: str,
    attempt: int = 1,
    *,
    phase: str = "Running",
    exit_code: int | None = None,
    message: str | None = None,
    generation: int = 1,
    deleting: bool = False,
    node: str = "node-1",
    finished: str = "2026-01-01T00:01:00Z",
    reason: str | None = None,
    created: str = "2026-01-01T00:00:05Z",
    annotations: dict[str, str] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """A worker pod as the API would return it."""
    build = BuildRef(BUILD.name, BUILD.namespace, BUILD.uid, generation)
    state: dict[str, Any]
    if phase in ("Succeeded", "Failed"):
        state = {
            "terminated": {
                "exitCode": exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1),
                "startedAt": "2026-01-01T00:00:10Z",
                "finishedAt": finished,
                **({"message": message} if message else {}),
                **({"reason": reason} if reason else {}),
            }
        }
    elif phase == "Running":
        state = {"running": {"startedAt": "2026-01-01T00:00:10Z"}}
    else:
        state = {"waiting": {"reason": reason or "ContainerCreating"}}
    meta: dict[str, Any] = {
        "name": pod_name(build, group, attempt),
        "uid": uid_of(pod_name(build, group, attempt)),
        "namespace": "ns",
        "labels": pod_labels(build, group, attempt),
        "creationTimestamp": created,
    }
    if annotations or token:
        meta["annotations"] = {**(annotations or {}), **({TOKEN: token} if token else {})}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:30Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"phase": phase, "containerStatuses": [{"name": "worker", "state": state}]},
    }


def decide_pods(
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    *,
    now: Any,
    spec: ImageBuildSpec,
    plan: PlanView = SEED_PLAN,
    missing: dict[str, str] | None = None,
    record: bool = True,
    **options: Any,
) -> Any:
    """`status.decide` for BUILD on raw pod manifests, observed as the reconciler observes them, with the
    UIDs of the pods it creates recorded as the reconciler records them (`recorded`); ``options`` are
    decide's own keywords (backoff_base, early_start, nodes, ...)."""
    from stagefleet.controller.observe import observe_pod
    from stagefleet.controller.status import decide

    observed = [o for o in (observe_pod(p) for p in pods) if o is not None]
    d = decide(build=BUILD, spec=spec, plan=plan, status=status, pods=observed,
               missing_secrets=missing or {}, now=now, **options)
    d = recorded(d) if record else d
    # Every status decide writes survives the API server's pruning and type checks (the CRD declares it).
    assert undeclared(d.status) == [], undeclared(d.status)
    return d
