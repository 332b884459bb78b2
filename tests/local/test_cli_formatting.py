"""Pure formatting of `stagefleet status` and `stagefleet logs` (status dict → rows, log lines → merge)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from stagefleet.commands import logs, status

NOW = dt.datetime(2026, 11, 27, 22, 0, 10, tzinfo=dt.UTC)
D1, D2, D3 = ("sha256:" + c * 64 for c in "abc")


def imagebuild(phase: str = "Building") -> dict[str, Any]:
    return {
        "metadata": {"name": "seed", "namespace": "default"},
        "status": {
            "phase": phase,
            "message": None,
            "stages": [
                {"name": "build1", "group": "g1", "phase": "Succeeded", "pod": "seed-g1-1", "node": "node-1",
                 "startTime": "2026-11-27T21:59:50Z", "completionTime": "2026-11-27T21:59:55Z",
                 "duration": 5.04, "digest": D1, "cachedSteps": 1, "attempts": 1, "message": ""},
                {"name": "build2", "group": "g2", "phase": "Running", "pod": "seed-g2-1", "node": "node-2",
                 "startTime": "2026-11-27T21:59:50Z", "attempts": 2,
                 "message": "retrying after   pod evicted\n(node lost) " + "x" * 100},
                {"name": "final", "group": "g3", "phase": "Pending"},
            ],
            "image": {"name": "127.0.0.1:5000/seed:latest", "digest": D3},
            "conditions": [{"type": "Ready", "status": "False", "reason": "Building", "message": "2/3 left"},
                           {"type": "Reconciling", "status": "True"}],
        },
    }


def test_stage_rows() -> None:
    rows = status.stage_rows(imagebuild()["status"], NOW)
    assert rows[0] == ["build1", "g1", "Succeeded", "seed-g1-1", "node-1", "5.0s", "1", "1",
                       "sha256:aaaaaaaaaaaa", ""]
    # running: time since start; message on one line and cut to the column width
    assert rows[1][5] == "20.0s"
    assert rows[1][9].startswith("retrying after pod evicted (node lost) x")
    assert len(rows[1][9]) == status.MESSAGE_WIDTH and rows[1][9].endswith("…")
    assert rows[2] == ["final", "g3", "Pending", "-", "-", "-", "-", "-", "-", ""]


def test_render_headline_table_and_conditions() -> None:
    lines = status.render(imagebuild("Succeeded"), NOW)
    assert lines[0] == ("imagebuild default/seed: Succeeded  stages 1/3  "
                        f"image 127.0.0.1:5000/seed:latest@{D3}")
    assert lines[1].split() == list(status.HEADER)
    assert lines[2].split()[:3] == ["build1", "g1", "Succeeded"]
    # columns line up: every row has the GROUP column at the same offset
    assert {ln.index("g") for ln in lines[2:5]} == {lines[1].index("GROUP")}
    assert lines[-2:] == ["Ready=False (Building): 2/3 left", "Reconciling=True"]


def test_render_a_summarised_status_says_so_and_counts_every_stage() -> None:
    ib = imagebuild()
    ib["status"].update(stagesSummarized=True, stagesDone=1800, stagesTotal=2001,
                        stageCounts={"Running": 1, "Pending": 1, "Succeeded": 1800, "Waiting": 199})
    ib["status"]["stages"] = ib["status"]["stages"][1:]
    lines = status.render(ib, NOW)
    assert "stages 1800/2001" in lines[0]
    assert "(summarised: 2 of 2001 stages listed; 1 Running, 1 Pending, 1800 Succeeded, 199 Waiting)" in lines


def test_render_without_status() -> None:
    assert status.render({"metadata": {"name": "x", "namespace": "ns"}}, NOW) == [
        "imagebuild ns/x: Pending", "(no stages yet)"]


def test_durations() -> None:
    assert status.human_duration(4.25) == "4.2s"
    assert status.human_duration(192) == "3m12s"
    assert status.human_duration(3840) == "1h4m"
    assert status.human_duration(2 * 86400 + 3 * 3600) == "2d3h"
    assert status.stage_duration({"duration": "7s"}, NOW) == "7s"
    assert status.stage_duration({}, NOW) == "-"


# ------------------------------------------------------------------------------------------------ logs


def pod(name: str, group: str, created: str, phase: str = "Running", started: bool = True) -> dict[str, Any]:
    state = {"running": {}} if started else {"waiting": {"reason": "ContainerCreating"}}
    return {"metadata": {"name": name, "creationTimestamp": created,
                         "labels": {logs.IMAGEBUILD_LABEL: "seed", logs.GROUP_LABEL: group}},
            "spec": {"containers": [{"name": "worker"}]},
            "status": {"phase": phase, "containerStatuses": [{"state": state}]}}


def test_stage_pods_and_selection() -> None:
    st = {"stages": [{"name": "base", "group": "g1"}, {"name": "app", "group": "g1"},
                     {"name": "other", "group": "g2"}]}
    pods = logs.stage_pods([pod("p2", "g2", "2026-01-01T00:00:02Z", phase="Pending", started=False),
                            pod("p1", "g1", "2026-01-01T00:00:01Z"),
                            pod("p3", "g9", "2026-01-01T00:00:03Z")], st)
    assert [(p.pod, p.group, p.stages, p.started) for p in pods] == [
        ("p1", "g1", ("base", "app"), True), ("p2", "g2", ("other",), False), ("p3", "g9", ("g9",), True)]
    assert pods[0].container == "worker"
    assert [p.pod for p in logs.select(pods, "app")] == ["p1"]
    assert len(logs.select(pods, None)) == 3


def test_split_timestamp_handles_nanoseconds_and_plain_lines() -> None:
    ts, text = logs.split_timestamp("2026-11-27T21:58:50.123456789Z STEP 1/2: FROM x")
    assert ts == dt.datetime(2026, 11, 27, 21, 58, 50, 123456, tzinfo=dt.UTC)
    assert text == "STEP 1/2: FROM x"
    assert logs.split_timestamp("2026-11-27T21:58:50Z  two spaces")[1] == " two spaces"
    assert logs.split_timestamp("no timestamp here") == (None, "no timestamp here")


def test_interleave_orders_by_time_and_keeps_each_pods_order() -> None:
    a = logs.StagePod("pa", "g1", ("build1",), "w", "Running", True)
    b = logs.StagePod("pb", "g2", ("build2",), "w", "Running", True)
    la = logs.attribute(a, ["2026-01-01T00:00:01Z a1", "2026-01-01T00:00:03Z a2", "a3 (no stamp)"],
                        timestamps=True)
    lb = logs.attribute(b, ["2026-01-01T00:00:02Z b1", "2026-01-01T00:00:04Z b2"], timestamps=True)
    merged = [(ln.stage, ln.text) for ln in logs.interleave([la, lb])]
    assert merged == [("build1", "a1"), ("build2", "b1"), ("build1", "a2"), ("build1", "a3 (no stamp)"),
                      ("build2", "b2")]


def test_attribute_splits_a_multi_stage_group_by_worker_prefixes() -> None:
    p = logs.StagePod("p", "g1", ("base", "app"), None, "Running", True)
    out = logs.attribute(p, ["[base] one", "two", "[app] three"], timestamps=False)
    assert [(ln.stage, ln.text) for ln in out] == [("base", "one"), ("base", "two"), ("app", "three")]
    assert [ln.text for ln in out if logs.keep(ln, "app")] == ["three"]


def test_colours_are_stable_and_prefixes_aligned() -> None:
    c = logs.stage_colors(["build1", "build2", "final", "build1"])
    assert list(c) == ["build1", "build2", "final"] and len(set(c.values())) == 3
    assert logs.stage_colors(["build1"])["build1"] == c["build1"]
    assert logs.prefix("final", 6) == "final  |"


def test_result_json_lines_become_one_line_outcomes() -> None:
    ok = '{"ok": true, "group": "g1", "image": "r/x:1", "digest": "sha256:ab", "cachedSteps": 1, "steps": 2}'
    bad = '{"ok": false, "error": {"kind": "build-step", "message": "RUN failed"}}'
    assert logs.display(ok) == "==> pushed r/x:1@sha256:ab (1/2 steps cached)"
    assert logs.display(bad) == "==> FAILED (build-step): RUN failed"
    assert logs.display("STEP 1/2") == "STEP 1/2"
