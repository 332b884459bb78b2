"""Pure pieces of local mode (its scheduling is the core's: tests/buildstate): references, worker
arguments, masking, events, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stagefleet import local

from .fakes import FakeGroup, FakePlan, seed_plan

# ---------------------------------------------------------------------------------------------- scheduling


def test_unschedulable_names_groups_waiting_for_unknown_groups() -> None:
    groups = (FakeGroup("g1", ("a",)), FakeGroup("g2", ("b",), after=("g9",)))
    assert local.unschedulable(groups, {"g1"}) == ["g2"]


# ---------------------------------------------------------------------------------------------- references


def test_references() -> None:
    assert local.stage_repo("127.0.0.1:5000", "b1") == "127.0.0.1:5000/stagefleet/b1/stages"
    assert local.default_tag("127.0.0.1:5000", "b1") == "127.0.0.1:5000/stagefleet/local:b1"
    assert local.repository_of("127.0.0.1:5000/a/b:t") == "127.0.0.1:5000/a/b"
    assert local.repository_of("127.0.0.1:5000/a/b@sha256:ab") == "127.0.0.1:5000/a/b"
    assert local.repository_of("127.0.0.1:5000/a/b") == "127.0.0.1:5000/a/b"
    assert local.ref_host("busybox:1") is None
    assert local.ref_host("library/busybox") is None
    assert local.ref_host("localhost/x") == "localhost"
    assert local.insecure_hosts(["127.0.0.1:5000", "127.0.0.1:6000/x:y", "quay.io/a/b", None,
                                 "docker.io/library/busybox"]) == ["127.0.0.1:5000", "127.0.0.1:6000"]


def test_build_id_is_a_valid_tag_and_unique() -> None:
    ids = {local.new_build_id(0) for _ in range(20)}
    assert len(ids) == 20
    for i in ids:
        assert i.startswith("19700101-000000-")
        assert all(c.isalnum() or c in "-_." for c in i) and len(i) <= 128


@pytest.mark.parametrize(("spec", "expected"), [
    ("id=tok,src=/tmp/t", ("tok", "/tmp/t")),
    ("src=/tmp/t,id=tok", ("tok", "/tmp/t")),
    ("type=file,id=tok,source=/tmp/t", ("tok", "/tmp/t")),
    ("tok", ("tok", "tok")),
])
def test_parse_secret(spec: str, expected: tuple[str, str]) -> None:
    assert local.parse_secret(spec) == expected


@pytest.mark.parametrize("spec", ["id=tok", "src=/x", "type=env,id=a,src=b", "a,b"])
def test_parse_secret_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="--secret"):
        local.parse_secret(spec)


def test_parse_kv() -> None:
    assert local.parse_kv("A=b=c", "--build-arg") == ("A", "b=c")
    with pytest.raises(ValueError, match="--build-arg"):
        local.parse_kv("A", "--build-arg")


def _settings(tmp_path: Path, **kw: object) -> local.BuildSettings:
    args: dict[str, object] = dict(
        context=tmp_path, dockerfile=tmp_path / "Dockerfile", registry="127.0.0.1:5000", build_id="b1",
        tags=("127.0.0.1:5000/app:1", "127.0.0.1:5000/app:latest"), build_args={"BASE": "x"},
        secrets={"tok": "/s/tok", "other": "/s/other"}, ssh={"default": "/k/id"},
        insecure=("127.0.0.1:5000",), parallel=2)
    args.update(kw)
    return local.BuildSettings(**args)  # type: ignore[arg-type]


def test_worker_argv_for_an_intermediate_group(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    g = FakeGroup("g1", ("build1",), secrets=("tok",), ssh=("default",))
    argv = local.worker_argv(s, g, final_group="g3", upstream={}, storage_root=tmp_path / "r",
                             result_file=tmp_path / "res.json")
    joined = " ".join(argv)
    assert argv[0] == "stagefleet-worker"
    assert f"--context {tmp_path}" in joined and "--dockerfile Dockerfile" in joined
    assert "--target build1" in joined and "--stage build1" in joined
    assert "--push 127.0.0.1:5000/stagefleet/b1/stages:g1" in joined
    assert "--secret id=tok,src=/s/tok" in joined
    assert "other" not in joined  # only the secrets the group's stages use
    assert "--ssh default=/k/id" in joined
    assert "--build-arg BASE=x" in joined
    assert "--insecure-registry 127.0.0.1:5000" in joined
    assert f"--storage-root {tmp_path / 'r'}" in joined and f"--result-file {tmp_path / 'res.json'}" in joined
    assert "--upstream" not in joined


def test_worker_argv_for_the_final_group(tmp_path: Path) -> None:
    s = _settings(tmp_path, cache_repo="127.0.0.1:5000/cache")
    g = seed_plan().groups[2]
    up = {"g1": "127.0.0.1:5000/stagefleet/b1/stages@sha256:" + "1" * 64,
          "g2": "127.0.0.1:5000/stagefleet/b1/stages@sha256:" + "2" * 64}
    argv = local.worker_argv(s, g, final_group="g3", upstream=up, storage_root=tmp_path, result_file=tmp_path)
    pairs = list(zip(argv, argv[1:], strict=False))
    assert ("--upstream", "build1=" + up["g1"]) in pairs
    assert ("--upstream", "build2=" + up["g2"]) in pairs
    assert [b for a, b in pairs if a == "--push"] == ["127.0.0.1:5000/app:1", "127.0.0.1:5000/app:latest"]
    assert ("--cache-repo", "127.0.0.1:5000/cache") in pairs
    assert "--secret" not in argv


def test_worker_argv_dockerfile_outside_context(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    s = _settings(ctx, dockerfile=tmp_path / "other.Dockerfile")
    argv = local.worker_argv(s, FakeGroup("g1", ("a",)), final_group="g1", upstream={},
                             storage_root=tmp_path, result_file=tmp_path)
    pairs = list(zip(argv, argv[1:], strict=False))
    assert ("--inline-dockerfile", str(tmp_path / "other.Dockerfile")) in pairs


# ---------------------------------------------------------------------------------------------- masking


def test_masker_hides_values_and_lines_of_multiline_secrets(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text("canary-4711\n")
    key = tmp_path / "k"
    key.write_text("-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END KEY-----\n")
    mask = local.Masker.from_files([f, key, tmp_path / "missing"])
    assert mask("value is canary-4711!") == "value is ****!"
    assert "AAAABBBBCCCC" not in mask("line AAAABBBBCCCC")
    assert mask("nothing secret") == "nothing secret"
    assert local.Masker([""])("x") == "x"


# ---------------------------------------------------------------------------------------------- events


def test_stage_tracker_follows_prefixes_and_buildah_from_lines() -> None:
    t = local.StageTracker(["base", "app"])
    assert t.feed("hello") == ("base", "hello")
    assert t.feed("[app] STEP 1/2: RUN x") == ("app", "STEP 1/2: RUN x")
    assert t.feed("more output") == ("app", "more output")
    assert t.feed("[other] text") == ("app", "[other] text")  # unknown prefix: not a stage
    assert t.feed("[2/2] STEP 1/3: FROM 127.0.0.1:5000/x AS base")[0] == "base"


def test_plain_format_has_elapsed_time_and_stage_prefix() -> None:
    ev = local.Event(local.LOG, 102.5, "g1", "build1", {"line": "STEP 2/2: RUN sleep 2"})
    assert local.format_plain(ev, 100.0) == "   2.50 [build1] STEP 2/2: RUN sleep 2"
    started = local.Event(local.GROUP_STARTED, 100.0, "g1", "build1", {"stages": ["build1"]})
    assert local.format_plain(started, 100.0) == "   0.00 [build1] ==> group g1 started (stages: build1)"
    failed = local.Event(local.GROUP_FINISHED, 101, "g1", "build1", {"ok": False, "message": "boom"})
    assert "FAILED: boom" in (local.format_plain(failed, 100.0) or "")
    ok = local.Event(local.GROUP_FINISHED, 101, "g1", "build1",
                     {"ok": True, "seconds": 1.0, "cachedSteps": 1, "steps": 2, "digest": "sha256:ab"})
    assert local.format_plain(ok, 100.0) == (
        "   1.00 [build1] ==> group g1 done in 1.00s (1/2 steps cached) sha256:ab")
    assert local.format_plain(local.Event("unknown", 1), 0) is None


def test_json_event_shape() -> None:
    ev = local.Event(local.LOG, 1.5, "g1", "build1", {"stream": "stdout", "line": "x"})
    assert ev.to_json() == {"event": "log", "time": 1.5, "group": "g1", "stage": "build1",
                            "stream": "stdout", "line": "x"}
    assert json.loads(json.dumps(local.Event(local.BUILD_FINISHED, 2, data={"ok": True}).to_json())) == {
        "event": "build-finished", "time": 2, "ok": True}


def test_result_line_detection_and_parsing(tmp_path: Path) -> None:
    line = json.dumps({"ok": True, "group": "g1", "digest": "sha256:aa", "error": None})
    assert local.looks_like_result(line)
    assert not local.looks_like_result('{"ok": 1}')
    assert not local.looks_like_result("STEP 1: ok")
    assert local.parse_result(line, tmp_path / "missing") == json.loads(line)
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"ok": False, "error": {"message": "m"}}))
    assert local.parse_result(line, f) == {"ok": False, "error": {"message": "m"}}  # the file wins
    assert local.parse_result("garbage", None) is None


# ---------------------------------------------------------------------------------------------- summary


def _ok(gid: str, stages: tuple[str, ...], t0: float, t1: float, digest: str,
        cached: int = 0) -> local.GroupOutcome:
    return local.GroupOutcome(gid, stages, t0, t1, 0, {
        "ok": True, "digest": digest, "cachedSteps": cached, "steps": 2,
        "stages": [{"name": s, "seconds": (t1 - t0) / len(stages) - 0.5, "cachedSteps": cached, "steps": 2}
                   for s in stages]})


def test_summary_rows_critical_path_and_speedup() -> None:
    plan = seed_plan()
    outcomes = {"g1": _ok("g1", ("build1",), 0, 4, "sha256:" + "a" * 64, cached=1),
                "g2": _ok("g2", ("build2",), 0, 4, "sha256:" + "b" * 64),
                "g3": _ok("g3", ("final",), 4, 6, "sha256:" + "c" * 64)}
    s = local.summarize(plan, outcomes, wall_seconds=6.0)
    assert [r.stage for r in s.rows] == ["build1", "build2", "final"]
    assert s.rows[0].seconds == pytest.approx(3.5) and s.rows[0].cached_steps == 1
    assert s.rows[0].critical and not s.rows[1].critical
    assert s.group_seconds == pytest.approx(10.0)
    assert s.stage_seconds == pytest.approx(3.5 + 3.5 + 1.5)
    assert s.critical_seconds == pytest.approx(3.5 + 1.5)
    assert s.speedup == pytest.approx(10 / 6)
    lines = local.format_summary(s)
    assert lines[0].split() == ["STAGE", "GROUP", "STATUS", "DURATION", "CACHED", "DIGEST"]
    assert lines[1].split() == ["build1", "*", "g1", "done", "3.5s", "1/2", "sha256:aaaaaaaaaaaa"]
    assert "critical path (*): build1 -> final (5.0s)" in lines
    assert lines[-1].endswith("parallel speed-up 1.67x")
    assert "wall time 6.0s; groups one after another 10.0s" in lines[-1]


def test_an_early_groups_wait_is_not_counted_as_work() -> None:
    """The final group started early (at 0.5 s) waits until its upstreams finish (4 s): one builder running
    the groups in turn would not have spent that wait, so the speed-up does not count it."""
    plan = seed_plan()
    outcomes = {"g1": _ok("g1", ("build1",), 0, 4, "sha256:" + "a" * 64),
                "g2": _ok("g2", ("build2",), 0, 3, "sha256:" + "b" * 64),
                "g3": _ok("g3", ("final",), 0.5, 5, "sha256:" + "c" * 64)}
    s = local.summarize(plan, outcomes, wall_seconds=5.0)
    assert s.group_seconds == pytest.approx(4 + 3 + 1)


def test_summary_of_a_failed_build() -> None:
    plan = seed_plan()
    failed = local.GroupOutcome("g1", ("build1",), 0, 2, 13, {
        "ok": False, "error": {"kind": "build-step", "message": "exit 1", "stage": "build1", "line": 4}})
    cancelled = local.GroupOutcome("g2", ("build2",), 0, 2.5, None, error="stopped", cancelled=True)
    s = local.summarize(plan, {"g1": failed, "g2": cancelled}, wall_seconds=2.5)
    assert [(r.stage, r.status) for r in s.rows] == [("build1", "failed"), ("build2", "cancelled"),
                                                      ("final", "not run")]
    assert s.rows[0].seconds == 2.0 and s.rows[2].seconds is None
    assert failed.message() == "build-step (stage build1, line 4): exit 1"
    assert cancelled.message() == "stopped"
    assert local.GroupOutcome("g", ("a",), 0, 1, 3).message() == "worker exited with status 3"


def test_multi_stage_group_without_per_stage_times_has_no_guess() -> None:
    plan = FakePlan(groups=(FakeGroup("g1", ("a", "b")),), critical_path=("a", "b"), final_group="g1")
    o = local.GroupOutcome("g1", ("a", "b"), 0, 2, 0, {"ok": True, "digest": "sha256:1"})
    s = local.summarize(plan, {"g1": o}, 2.0)
    assert [r.seconds for r in s.rows] == [None, None]
    assert [r.digest for r in s.rows] == [None, "sha256:1"]  # the group's result is its last stage


def test_rich_progress_shows_each_stage_state() -> None:
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    p = local.RichProgress(seed_plan(), 100.0, console=console)
    try:
        p.handle(local.Event(local.GROUP_STARTED, 100.0, "g1", "build1", {"stages": ["build1"]}))
        p.handle(local.Event(local.LOG, 101.0, "g1", "build1", {"line": "STEP 2/2: RUN sleep 2"}))
        p.handle(local.Event(local.GROUP_STARTED, 100.0, "g2", "build2", {"stages": ["build2"]}))
        p.handle(local.Event(local.GROUP_FINISHED, 102.0, "g2", "build2",
                             {"ok": False, "message": "build-step: exit 3"}))
        p.handle(local.Event(local.GROUP_REUSED, 100.0, "g3", "final", {"digest": "sha256:" + "3" * 64}))
        render = Console(file=io.StringIO(), width=120, record=True)
        render.print(p._render())
        text = render.export_text()
    finally:
        p.close()
    lines = {ln.split()[1]: ln for ln in text.splitlines() if ln.strip()}
    assert "STEP 2/2: RUN sleep 2" in lines["build1"] and "g1" in lines["build1"]
    assert lines["build2"].lstrip().startswith("✖") and "build-step: exit 3" in lines["build2"]
    assert lines["build2"].split()[3] == "2.0s"
    assert lines["final"].lstrip().startswith("↺") and "reused sha256:333333333333" in lines["final"]
