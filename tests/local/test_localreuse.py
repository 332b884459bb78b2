"""Local mode's stage reuse (localreuse, local.run_plan with stored results), with a registry stand-in that
records every request and a fake worker: which keys are looked up, what a found result saves, and what the
workers of keyed groups are told."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stagefleet import local
from stagefleet import registryclient as reg
from stagefleet.local import reuse as localreuse
from stagefleet.plan import Plan, make_plan
from stagefleet.stagekey import key_tag
from stagefleet.stages import StageGraph, parse_stage_graph

from .fakes import FakeGroup, FakePlan, seed_plan

HOST = "127.0.0.1:5999"
BASE = f"{HOST}/base/busybox:1"
BASE_DIGEST = "sha256:" + "b" * 64
CACHE = f"{HOST}/app/cache"
TAGS = (f"{HOST}/app:dev",)
MANIFEST = json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + "c" * 64},
                       "layers": [{"digest": "sha256:" + "d" * 64}]}).encode()
STORED = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
FAKE_WORKER = Path(__file__).with_name("fake_worker.py")

DOCKERFILE = f"""FROM {BASE} AS left
COPY left.txt /left.txt
FROM {BASE} AS right
COPY right.txt /right.txt
FROM {BASE} AS final
COPY --from=left /left.txt /left.txt
COPY --from=right /right.txt /right.txt
"""


class FakeRegistry(reg.Registry):
    """Answers HEADs from ``known`` (repository:tag → digest), serves ``MANIFEST`` by digest, takes PUTs."""

    def __init__(self, known: dict[str, str], fail: reg.RegistryError | None = None) -> None:
        super().__init__(HOST, insecure=True)
        self.known = dict(known)
        self.fail = fail
        self.asked: list[str] = []
        self.put: dict[str, str] = {}

    def digest(self, repository: str, tag: str) -> str | None:
        self.asked.append(f"{repository}:{tag}")
        if self.fail is not None:
            raise self.fail
        return self.known.get(f"{repository}:{tag}")

    def manifest(self, repository: str, reference: str) -> tuple[str, bytes]:
        if reference != STORED:
            raise reg.RegistryError(f"GET {repository}@{reference}: 404")
        return "application/vnd.oci.image.manifest.v1+json", MANIFEST

    def mount_blob(self, repository: str, digest: str, source: str) -> None:
        pass

    def put_manifest(self, repository: str, tag: str, media_type: str, body: bytes) -> str:
        self.put[f"{repository}:{tag}"] = "sha256:" + hashlib.sha256(body).hexdigest()
        return self.put[f"{repository}:{tag}"]


def context(root: Path, left: str = "left 1\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(DOCKERFILE)
    (root / "left.txt").write_text(left)
    (root / "right.txt").write_text("right 1\n")
    return root


def planned() -> tuple[StageGraph, Plan]:
    graph = parse_stage_graph(DOCKERFILE)
    return graph, make_plan(graph)


def prepare(ctx: Path, fake: FakeRegistry, *, find: bool = True) -> localreuse.Prepared:
    graph, plan = planned()
    return localreuse.prepare(graph, plan, context=ctx, platform="linux/amd64", cache_repo=CACHE, tags=TAGS,
                              client_for=lambda host: fake, find=find)


def key_tags(prepared: localreuse.Prepared, *stages: str) -> dict[str, str]:
    return {s: f"app/cache:{key_tag(prepared.keys[s])}" for s in stages}


# ------------------------------------------------------------------------------------------ where keys live


def test_the_cache_repository_is_the_given_one_else_derived_from_the_first_tag() -> None:
    assert localreuse.cache_repository("r:5000/c", TAGS, outlives_build=False) == "r:5000/c"
    assert localreuse.cache_repository(None, TAGS, outlives_build=True) == f"{HOST}/app/cache"
    two = ("r:5000/a/b:1", "x:1/y:2")
    assert localreuse.cache_repository(None, two, outlives_build=True) == "r:5000/a/b/cache"
    # a throwaway registry's cache would go with it; a Docker Hub short name names no registry to ask
    assert localreuse.cache_repository(None, TAGS, outlives_build=False) is None
    assert localreuse.cache_repository(None, ("app:1",), outlives_build=True) is None


# ------------------------------------------------------------------------------------------ the lookup


def test_nothing_stored_every_stage_keyed_and_looked_up(tmp_path: Path) -> None:
    fake = FakeRegistry({"base/busybox:1": BASE_DIGEST})
    got = prepare(context(tmp_path / "ctx"), fake)
    assert set(got.keys) == {"left", "right", "final"} and len(set(got.keys.values())) == 3
    assert got.pins == {BASE: BASE_DIGEST}
    assert got.stored == {} and got.notes == []
    assert fake.asked[0] == "base/busybox:1"
    assert sorted(fake.asked[1:]) == sorted(key_tags(got, "left", "right", "final").values())


def test_a_stored_branch_needs_no_worker_and_is_consumed_by_digest(tmp_path: Path) -> None:
    ctx = context(tmp_path / "ctx")
    first = prepare(ctx, FakeRegistry({"base/busybox:1": BASE_DIGEST}))
    left = key_tags(first, "left")["left"]
    got = prepare(ctx, FakeRegistry({"base/busybox:1": BASE_DIGEST, left: STORED}))
    gid = next(g.id for g in planned()[1].groups if g.stages[-1] == "left")
    assert got.stored == {gid: local.Stored(f"{CACHE}:{key_tag(first.keys['left'])}", STORED)}
    assert got.stored[gid].ref == f"{CACHE}@{STORED}"
    assert got.keys == first.keys  # the others are built, and stored under their keys


def test_a_stored_final_result_is_copied_to_every_tag(tmp_path: Path) -> None:
    ctx = context(tmp_path / "ctx")
    first = prepare(ctx, FakeRegistry({"base/busybox:1": BASE_DIGEST}))
    fake = FakeRegistry({"base/busybox:1": BASE_DIGEST,
                         **{tag: STORED for tag in key_tags(first, "left", "right", "final").values()}})
    got = prepare(ctx, fake)
    assert {s.digest for s in got.stored.values()} == {STORED} and len(got.stored) == 3
    assert fake.put == {"app:dev": STORED}
    assert any("output written from the stored result" in n for n in got.notes)


def test_a_final_result_that_cannot_be_copied_is_built(tmp_path: Path) -> None:
    ctx = context(tmp_path / "ctx")
    first = prepare(ctx, FakeRegistry({"base/busybox:1": BASE_DIGEST}))
    final = key_tags(first, "final")["final"]
    fake = FakeRegistry({"base/busybox:1": BASE_DIGEST, final: STORED})
    graph, plan = planned()
    got = localreuse.prepare(graph, plan, context=ctx, platform="linux/amd64", cache_repo=CACHE,
                             tags=("other.example:5000/app:1",), client_for=lambda host: fake)
    assert plan.final_group not in got.stored
    assert any("not in registry" in n for n in got.notes)


def test_a_changed_file_rekeys_its_branch_and_the_final_stage_only(tmp_path: Path) -> None:
    fake = FakeRegistry({"base/busybox:1": BASE_DIGEST})
    before = prepare(context(tmp_path / "ctx"), fake)
    after = prepare(context(tmp_path / "ctx", left="left 2\n"), fake)
    assert [s for s in before.keys if before.keys[s] != after.keys[s]] == ["left", "final"]


def test_the_platform_is_in_the_key(tmp_path: Path) -> None:
    ctx = context(tmp_path / "ctx")
    fake = FakeRegistry({"base/busybox:1": BASE_DIGEST})
    graph, plan = planned()
    arm = localreuse.prepare(graph, plan, context=ctx, platform="linux/arm64", cache_repo=CACHE, tags=TAGS,
                             client_for=lambda host: fake)
    assert not set(arm.keys.values()) & set(prepare(ctx, fake).keys.values())


def test_without_lookup_stages_are_keyed_but_nothing_is_asked_for(tmp_path: Path) -> None:
    fake = FakeRegistry({"base/busybox:1": BASE_DIGEST})
    got = prepare(context(tmp_path / "ctx"), fake, find=False)
    assert fake.asked == ["base/busybox:1"] and len(got.keys) == 3 and got.stored == {}


def test_an_unreachable_registry_keys_nothing_and_fails_nothing(tmp_path: Path) -> None:
    fake = FakeRegistry({}, fail=reg.RegistryError(f"{HOST} unreachable", transient=True))
    got = prepare(context(tmp_path / "ctx"), fake)
    assert got.keys == {} and got.stored == {} and got.pins == {}
    assert any("unreachable" in n for n in got.notes) and len(got.notes) <= localreuse.MAX_NOTES


def test_a_context_that_cannot_be_read_keys_nothing(tmp_path: Path) -> None:
    got = prepare(tmp_path / "missing", FakeRegistry({"base/busybox:1": BASE_DIGEST}))
    assert got.keys == {} and got.notes and "nothing keyed" in got.notes[0]


# ------------------------------------------------------------------------------------------ workers


def _settings(tmp_path: Path, **kw: object) -> local.BuildSettings:
    args: dict[str, object] = dict(
        context=tmp_path, dockerfile=tmp_path / "Dockerfile", registry=HOST, build_id="b1", tags=TAGS,
        cache_repo=CACHE, keys={"build1": "1" * 64, "final": "f" * 64},
        pins={BASE: BASE_DIGEST, f"{HOST}/pinned@{BASE_DIGEST}": BASE_DIGEST})
    args.update(kw)
    return local.BuildSettings(**args)  # type: ignore[arg-type]


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    return list(zip(argv, argv[1:], strict=False))


def test_a_keyed_group_gets_its_key_and_the_pins(tmp_path: Path) -> None:
    argv = local.worker_argv(_settings(tmp_path, platform="linux/arm64"), seed_plan().groups[0],
                             final_group="g3", upstream={}, storage_root=tmp_path, result_file=tmp_path)
    pairs = _pairs(argv)
    assert ("--stage-key", "1" * 64) in pairs and ("--cache-repo", CACHE) in pairs
    assert [b for a, b in pairs if a == "--pin-image"] == [f"{BASE}={BASE}@{BASE_DIGEST}"]
    assert ("--platform", "linux/arm64") in pairs and "--no-cache" not in argv


def test_no_key_without_a_cache_repository_or_for_an_unkeyed_group(tmp_path: Path) -> None:
    for settings, group in ((_settings(tmp_path, cache_repo=None), seed_plan().groups[0]),
                            (_settings(tmp_path), seed_plan().groups[1])):
        argv = local.worker_argv(settings, group, final_group="g3", upstream={}, storage_root=tmp_path,
                                 result_file=tmp_path)
        assert "--stage-key" not in argv and "--pin-image" not in argv


def test_no_cache_reaches_the_worker(tmp_path: Path) -> None:
    argv = local.worker_argv(_settings(tmp_path, no_cache=True), seed_plan().groups[0], final_group="g3",
                             upstream={}, storage_root=tmp_path, result_file=tmp_path)
    assert "--no-cache" in argv and ("--stage-key", "1" * 64) in _pairs(argv)


def test_needed_groups_stop_at_stored_results() -> None:
    chain = (FakeGroup("g1", ("a",)), FakeGroup("g2", ("b",), after=("g1",)),
             FakeGroup("g3", ("c",), after=("g2",)), FakeGroup("g4", ("d",)))
    assert local.needed_groups(chain, "g3", set()) == {"g1", "g2", "g3"}
    assert local.needed_groups(chain, "g3", {"g2"}) == {"g3"}  # g1 fed only g2
    assert local.needed_groups(chain, "g3", {"g3"}) == set()


# ------------------------------------------------------------------------------------------ the runner


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "calls"
    d.mkdir()
    monkeypatch.setenv("FAKE_DIR", str(d))
    return d


def _run(plan: FakePlan, tmp_path: Path, stored: dict[str, local.Stored],
         ) -> tuple[local.BuildResult, list[local.Event]]:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    settings = local.BuildSettings(context=tmp_path, dockerfile=tmp_path / "Dockerfile", registry=HOST,
                                   build_id="b1", tags=TAGS, parallel=2, cache_repo=CACHE,
                                   worker=(sys.executable, str(FAKE_WORKER)))
    events: list[local.Event] = []
    result = asyncio.run(local.run_plan(plan, settings, events.append, stored=stored, notes=["a note"]))
    return result, events


def test_stored_branches_run_no_worker_and_feed_the_final_group(tmp_path: Path, calls: Path) -> None:
    stored = {"g1": local.Stored(f"{CACHE}:stage-{'1' * 64}", "sha256:" + "1" * 64),
              "g2": local.Stored(f"{CACHE}:stage-{'2' * 64}", "sha256:" + "2" * 64)}
    result, events = _run(seed_plan(), tmp_path, stored)
    assert result.ok and sorted(p.stem for p in calls.glob("g?.json")) == ["g3"]
    final = _pairs(json.loads((calls / "g3.json").read_text())["argv"])
    assert ("--upstream", f"build1={CACHE}@sha256:{'1' * 64}") in final
    assert ("--upstream", f"build2={CACHE}@sha256:{'2' * 64}") in final
    assert [e.group for e in events if e.kind == local.GROUP_REUSED] == ["g1", "g2"]
    assert [e.group for e in events if e.kind == local.GROUP_STARTED] == ["g3"]
    rows = {r.stage: r for r in result.summary.rows}
    assert rows["build1"].status == "reused" and rows["build1"].digest == "sha256:" + "1" * 64
    assert rows["build1"].seconds is None and rows["final"].status == "done"
    note = next(e for e in events if e.kind == local.NOTE)
    assert local.format_plain(note, 0.0) is not None and "a note" in str(local.format_plain(note, 0.0))


def test_a_stored_final_group_starts_nothing(tmp_path: Path, calls: Path) -> None:
    stored = {"g3": local.Stored(f"{CACHE}:stage-{'3' * 64}", "sha256:" + "3" * 64)}
    result, events = _run(seed_plan(), tmp_path, stored)
    assert list(calls.glob("*.json")) == []
    assert result.ok and result.digest == "sha256:" + "3" * 64 and result.image == TAGS[0]
    assert {r.stage: r.status for r in result.summary.rows} == {
        "build1": "not run", "build2": "not run", "final": "reused"}
    reused = next(e for e in events if e.kind == local.GROUP_REUSED)
    line = local.format_plain(reused, reused.time)
    assert line == "   0.00 [final] ==> group g3 reused: sha256:333333333333 (stored result, no worker)"
    assert events[0].data["reused"] == ["g3"] and events[-1].data["ok"] is True


def test_the_command_derives_the_cache_repo_and_passes_the_switches(tmp_path: Path, calls: Path) -> None:
    """`stagefleet build --registry R`: results outlive the build, so the cache repository is the tag's
    repository + /cache; an unreachable registry leaves the stages unkeyed (a note), the build goes on."""
    (tmp_path / "Dockerfile").write_text("FROM 127.0.0.1:9/b AS one\nRUN x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stagefleet.cli", "build", str(tmp_path), "--registry", "127.0.0.1:9",
         "--tag", "127.0.0.1:9/app:1", "--platform", "linux/arm64", "--no-cache", "--progress", "plain",
         "--worker", str(FAKE_WORKER)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    argv = _pairs(json.loads((calls / "g1.json").read_text())["argv"])
    assert ("--cache-repo", "127.0.0.1:9/app/cache") in argv and ("--platform", "linux/arm64") in argv
    assert ("--no-cache", "--push") in argv and not any(a == "--stage-key" for a, _ in argv)
    assert "[build] stage reuse: " in proc.stdout and "unreachable" in proc.stdout
