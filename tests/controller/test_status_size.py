"""A very wide Dockerfile's status stays far below the API's object size limit (etcd: 1.5 MiB per request).

With every stage listed in full and the plan in clear, a 2,000-stage build's status grows past 1.4 MB. Above
`status.SUMMARY_STAGES` stages, status.stages lists only what is not settled (groups that run, wait for a
retry, failed or just succeeded; one short entry per group that succeeded earlier, none once the build
ended), `stageCounts` counts every stage by phase and `stagesSummarized` says so; above
`model.PLAN_INLINE_GROUPS` groups the plan's groups are stored compressed. Summarising is lossless for
`decide`: `expand_stages` gives the next pass every stage back.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.controller import helpers
from tests.controller.helpers import BUILD, make_spec, pod, recorded, result_json

from stagefleet.controller import buildphase, observe, report
from stagefleet.controller import status as st
from stagefleet.controller.model import PlanView, plan_dockerfile
from stagefleet.controller.podspec import stage_result_ref

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
CAP = 256 * 1024  # well under the 1.5 MiB request limit: room for metadata, spec and managed fields
WORST_CAP = 512 * 1024  # a third of it


def wide(n: int) -> str:
    """n independent stages and a final stage that copies from every one: n + 1 groups, 2 waves."""
    lines: list[str] = []
    for i in range(n):
        lines += [f"FROM busybox AS s{i:04d}", f"RUN echo {i} > /o"]
    lines += ["FROM busybox AS final", *(f"COPY --from=s{i:04d} /o /o{i}" for i in range(n))]
    return "\n".join(lines) + "\n"


def size(status: dict[str, Any]) -> int:
    return len(json.dumps(status, separators=(",", ":")))


def digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()  # (random-looking: no free compression)


def real_uid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name))  # a pod UID as the API gives it, 36 characters


@pytest.mark.parametrize(("parallel", "cap"), [(256, WORST_CAP), (32, CAP)])
def test_a_2000_stage_build_stays_under_the_cap_from_plan_to_success(
    monkeypatch: pytest.MonkeyPatch, parallel: int, cap: int
) -> None:
    """Every pod started in a pass succeeds before the next: with maxParallelPods at the CRD's maximum (256)
    that lists 256 just-succeeded and 256 new Pending groups in full in one status, the worst case."""
    monkeypatch.setattr(helpers, "uid_of", real_uid)
    n = 2000
    plan = plan_dockerfile(wide(n), target=None, build_args={})
    assert len(plan.groups) == n + 1
    spec = make_spec(source={"inline": {"dockerfile": "FROM x\n"}}, target=None, secrets=[],
                     maxParallelPods=parallel)
    image_of = lambda gid, a: stage_result_ref(spec, BUILD, gid, a)  # noqa: E731
    status = report.planned_status(generation=1, plan=plan, source={}, old={}, now=NOW)
    assert size(status) < CAP
    assert status["stagesSummarized"] is True
    assert status["stageCounts"] == {"Waiting": n + 1}
    assert status["stagesTotal"] == n + 1 and status["progress"] == f"0/{n + 1}"
    assert PlanView.from_status(status["plan"]) == plan  # the compressed plan reads back whole

    targets = {g.id: g.target for g in plan.groups}
    pods: dict[str, dict[str, Any]] = {}  # by group
    observed: dict[str, Any] = {}
    biggest, now, passes = 0, NOW, 0
    sizes = []
    while status["phase"] not in buildphase.TERMINAL:
        passes += 1
        assert passes < 200
        now += timedelta(seconds=1)
        full = report.expand_stages(status, plan, image_of)
        assert len(full["stages"]) == n + 1
        d = recorded(st.decide(build=BUILD, spec=spec, plan=plan, status=full,
                               pods=list(observed.values()),
                               missing_secrets={}, now=now))
        status = d.status
        sizes.append(size(status))
        biggest = max(biggest, sizes[-1])
        assert sizes[-1] < cap, (passes, sizes[-1])
        counts = status["stageCounts"]
        assert sum(counts.values()) == n + 1
        assert counts.get("Succeeded", 0) == status["stagesDone"]
        for c in d.create:  # each pod created this pass succeeds before the next
            i = int(c.group.id[1:])
            pods[c.group.id] = pod(c.group.id, c.attempt, phase="Succeeded",
                                   message=result_json(c.group.id, targets[c.group.id], digest(i)))
            # (the worker pushes where the operator told it: the derived image)
            msg = json.loads(pods[c.group.id]["status"]["containerStatuses"][0]["state"]["terminated"]
                             ["message"])
            msg["image"] = image_of(c.group.id, c.attempt)
            pods[c.group.id]["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = (
                json.dumps(msg))
            observed[c.group.id] = observe.observe_pod(pods[c.group.id])
        if c_final := [c for c in d.create if c.group.id == plan.final_group]:
            # The final pod was given every upstream by its recorded digest and derived image.
            ups = dict(c_final[0].upstream)
            assert len(ups) == n
            assert ups["s0007"] == (image_of(plan.groups[7].id, 1), digest(int(plan.groups[7].id[1:])))

    assert status["phase"] == "Succeeded", status["message"]
    assert status["stageCounts"] == {"Succeeded": n + 1} and status["stagesDone"] == n + 1
    assert len(status["stages"]) <= 1  # at most the final group, which succeeded in that very pass
    assert "settledGroups" not in status
    assert size(status) < 64 * 1024
    assert biggest > 64 * 1024  # (the mid-build statuses hold every upstream digest: the test means it)
    print(f"maxParallelPods {parallel}: {passes} passes, peak {max(sizes)} B, at the end {size(status)} B")


def test_summarising_is_lossless_for_the_next_pass() -> None:
    """expand_stages(summarise_stages(full)) gives decide what it read from the full list."""
    plan = plan_dockerfile(wide(300), target=None, build_args={})
    spec = make_spec(source={"inline": {"dockerfile": "FROM x\n"}}, target=None, secrets=[])
    image_of = lambda gid, a: stage_result_ref(spec, BUILD, gid, a)  # noqa: E731
    planned = report.planned_status(generation=1, plan=plan, source={}, old={}, now=NOW)
    full = report.expand_stages(planned, plan, image_of)["stages"]
    for i, e in enumerate(full[:10]):  # a few settled, one running, one retrying
        e.update(phase="Succeeded", attempts=1, podUID=f"u{i}", pod=f"p{i}", node="n", duration=1.0,
                 digest=digest(i), image=image_of(e["group"], 1))
    full[10].update(phase="Running", attempts=1, podUID="u10", pod="p10", node="n")
    full[11].update(phase="Retrying", attempts=1, retryAt="2026-01-01T00:02:00Z", message="x")
    settled = {e["group"] for e in full[:10]}
    short: dict[str, Any] = {"phase": "Building"}
    report.summarise_stages(short, full, plan, settled, terminal=False, image_of=image_of)
    assert [e["name"] for e in short["stages"]] == [full[10]["name"], full[11]["name"]]
    assert short["stageCounts"] == {"Retrying": 1, "Running": 1, "Succeeded": 10, "Waiting": 289}
    back = report.expand_stages(short, plan, image_of)["stages"]
    keys = ("name", "group", "phase", "attempts", "digest", "image", "podUID")
    assert [{k: e.get(k) for k in keys} for e in back] == [{k: e.get(k) for k in keys} for e in full]
    assert back[11] == full[11] and back[10] == full[10]
    # An image other than the derived one is kept as it is.
    full[3]["image"] = "elsewhere/stages:x"
    report.summarise_stages(short, full, plan, settled, terminal=False, image_of=image_of)
    assert report.expand_stages(short, plan, image_of)["stages"][3]["image"] == "elsewhere/stages:x"
    # Once the build ended, settled groups are only counted.
    ended: dict[str, Any] = {"phase": "Failed"}
    report.summarise_stages(ended, full, plan, settled, terminal=True)
    assert [e["name"] for e in ended["stages"]] == [full[10]["name"], full[11]["name"]]
    assert "settledGroups" not in ended and ended["stageCounts"]["Succeeded"] == 10
    assert report.expand_stages(ended, plan) == ended  # (decide returns an ended build's status as it is)


def test_small_builds_are_listed_in_full() -> None:
    plan = plan_dockerfile(wide(3), target=None, build_args={})
    status = report.planned_status(generation=1, plan=plan, source={}, old={}, now=NOW)
    assert "stagesSummarized" not in status and "stageCounts" not in status
    assert len(status["stages"]) == 4 and "groups" in status["plan"]
    assert report.expand_stages(status, plan) == status
