"""The pure side of `--stage-key` and `--pin-image`: flags, buildah argv, which images a group uses and
whether each is pinned, the storage check, the result JSON, and when the key tag is (not) written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stagefleet.stagekey import key_tag
from stagefleet.worker import keytag
from stagefleet.worker.buildah import build_argv, images_argv
from stagefleet.worker.dockerinfo import analyse
from stagefleet.worker.pins import PinPlan, check_listing, plan_pins
from stagefleet.worker.push import PushError
from stagefleet.worker.result import Result, render
from stagefleet.worker.spec import ImagePin, StepSpec, Upstream, UsageError, parse_args

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
KEY = "ab" * 32
REG = "127.0.0.1:5000"
BASE = ["--context", ".", "--target", "final", "--push", f"{REG}/team/app:1"]


def test_parse_pins_and_key() -> None:
    spec = parse_args([*BASE, "--pin-image", f"{REG}/base:1={REG}/base:1@{D1}",
                       "--pin-image", f"busybox=mirror.io/library/busybox@{D2}",
                       "--cache-repo", f"{REG}/team/cache", "--stage-key", KEY], env={})
    # the tag beside a digest is dropped: the digest alone decides
    assert spec.pins == (ImagePin(f"{REG}/base:1", f"{REG}/base@{D1}"),
                         ImagePin("busybox", f"mirror.io/library/busybox@{D2}"))
    assert spec.stage_key == KEY
    assert spec.key_ref == f"{REG}/team/cache:{key_tag(KEY)}"
    plain = parse_args(BASE, env={})
    assert plain.pins == () and plain.stage_key is None and plain.key_ref is None


@pytest.mark.parametrize("extra,fragment", [
    (["--stage-key", KEY], "needs --cache-repo"),
    (["--cache-repo", "r/c", "--stage-key", KEY.upper()], "64 lower-case hex"),
    (["--cache-repo", "r/c", "--stage-key", KEY[:-1]], "64 lower-case hex"),
    (["--cache-repo", "r/c:1", "--stage-key", KEY], "without tag"),
    (["--pin-image", f"{REG}/base:1"], "REF=REPO@sha256"),
    (["--pin-image", f"{REG}/base:1={REG}/base:1"], "REF=REPO@sha256"),
    (["--pin-image", f"{REG}/base:1={REG}/base@sha256:abc"], "REF=REPO@sha256"),
    (["--pin-image", f"{REG}/base:1=Bad/Repo@{D1}"], "REF=REPO@sha256"),
    (["--pin-image", f"{REG}/base@{D2}={REG}/base@{D1}"], "by name or tag"),
    (["--pin-image", f"scratch=r/x@{D1}"], "by name or tag"),
    (["--pin-image", f"Up/Per=r/x@{D1}"], "by name or tag"),
    (["--pin-image", f"a=r/x@{D1}", "--pin-image", f"a=r/y@{D2}"], "more than once"),
    (["--pin-image", f"build1=r/x@{D1}", "--upstream", f"build1=r/s@{D2}"], "--upstream"),
])
def test_pin_and_key_usage_errors(extra: list[str], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_args([*BASE, *extra], env={})


def test_build_argv_replaces_pinned_images_by_build_context() -> None:
    spec = StepSpec(target="t", push=("r/x:1",), upstreams=(Upstream("build1", f"r/s:t@{D1}"),),
                    pins=(ImagePin("r/base:1", f"r/base@{D2}"),))
    args = dict(paths := {"context_dir": Path("/c"), "dockerfile": Path("/c/D"), "iidfile": Path("/i")})
    argv = build_argv(spec, ssh_sockets={}, **args)
    contexts = [argv[i + 1] for i, a in enumerate(argv) if a == "--build-context"]
    assert contexts == [f"build1=docker-image://r/s@{D1}", f"r/base:1=docker-image://r/base@{D2}"]
    given = build_argv(spec, ssh_sockets={}, image_contexts={"${BASE}": f"r/b:1@{D1}", "r/b:1": f"r/b@{D1}"},
                       **paths)
    contexts = [given[i + 1] for i, a in enumerate(given) if a == "--build-context"]
    assert contexts == [f"build1=docker-image://r/s@{D1}", f"${{BASE}}=docker-image://r/b@{D1}",
                        f"r/b:1=docker-image://r/b@{D1}"]
    assert images_argv("r/b:1") == ["buildah", "images", "--json", "--no-trunc", "r/b:1"]


def test_dockerinfo_keeps_each_froms_word_as_written() -> None:
    info = analyse("ARG B=x\nFROM --platform=$P ${B} AS a\nFROM a\nfrom reg.io/c:1 as c\n")
    assert info.from_words == ("${B}", "a", "reg.io/c:1")


DOCKERFILE = f"""ARG BASE={REG}/base:1
FROM ${{BASE}} AS one
RUN --mount=type=bind,from={REG}/tools:2,target=/t true
FROM {REG}/base:1 AS two
COPY --from={REG}/extra:3 /x /x
COPY --from=one /y /y
FROM {REG}/other:1 AS upstream
FROM two AS final
COPY --from=upstream /z /z
COPY --from=reg.io/by-digest@{D1} /d /d
FROM scratch AS empty
"""
PINS = (ImagePin(f"{REG}/base:1", f"{REG}/base@{D1}"), ImagePin(f"{REG}/tools:2", f"{REG}/tools@{D2}"))


def _plan(pins: tuple[ImagePin, ...], target: str = "final", text: str = DOCKERFILE,
          consumed: tuple[str, ...] = ("upstream",)) -> PinPlan:
    return plan_pins(text, pins, from_words=analyse(text).from_words, target=target, build_args={},
                     consumed=consumed)


def test_plan_pins_every_use_and_the_raw_word_of_an_arg_from() -> None:
    plan = _plan((*PINS, ImagePin(f"{REG}/extra:3", f"{REG}/extra@{D2}")))
    # buildah looks FROM's word up before expanding ARGs: the pin is passed under `${BASE}` as well
    assert plan.contexts == {f"{REG}/base:1": f"{REG}/base@{D1}", f"{REG}/tools:2": f"{REG}/tools@{D2}",
                             f"{REG}/extra:3": f"{REG}/extra@{D2}", "${BASE}": f"{REG}/base@{D1}"}
    # the consumed stage's base is not this group's input; an image by digest pins itself
    assert plan.used == {f"{REG}/base:1": f"{REG}/base@{D1}", f"{REG}/tools:2": f"{REG}/tools@{D2}",
                         f"{REG}/extra:3": f"{REG}/extra@{D2}"}
    assert plan.unpinned == () and plan.key_blocker() is None


def test_plan_pins_names_what_is_not_pinned() -> None:
    plan = _plan(PINS)
    assert plan.unpinned == (f"{REG}/extra:3",)
    assert plan.key_blocker() == f"not every image it builds from is pinned (--pin-image): {REG}/extra:3"
    assert _plan((), consumed=()).unpinned == (f"{REG}/base:1", f"{REG}/tools:2", f"{REG}/extra:3",
                                               f"{REG}/other:1")
    empty = _plan((), target="empty")
    assert empty.used == {} and empty.unpinned == () and empty.key_blocker() is None


def test_a_pin_named_like_a_stage_is_ignored_and_a_bad_dockerfile_blocks_the_key() -> None:
    plan = _plan((*PINS, ImagePin("one", f"r/one@{D2}")))
    assert plan.ignored == ("one",) and "one" not in plan.contexts
    # an image named like the stage it starts is still an image: ignored as a pin, so not pinned
    same = plan_pins("FROM a AS a\n", (ImagePin("a", f"r/a@{D1}"),), from_words=("a",), target="a",
                     build_args={}, consumed=())
    assert same.ignored == ("a",) and same.unpinned == ("a",)
    broken = plan_pins("FROM r/a:1 AS a\nFROM r/a:1 AS a\n", PINS, from_words=("r/a:1", "r/a:1"),
                       target="a", build_args={}, consumed=())
    assert broken.problem and broken.problem.startswith("its stages could not be resolved")
    assert broken.key_blocker() == broken.problem and broken.contexts  # the pins still apply to the build


def _listing(*digests: str) -> str:
    return json.dumps([{"id": "sha256:" + "9" * 64, "names": ["r/b:1"], "digest": d} for d in digests])


def test_check_listing() -> None:
    assert check_listing("r/b:1", f"r/b@{D1}", _listing(D1)) is None  # the tag named the pinned digest
    assert check_listing("r/b:1", f"r/b@{D1}", _listing(D2)) == (
        f"r/b:1 was resolved by its tag to {D2}, not the pinned {D1}")
    assert check_listing("r/b:1", f"r/b@{D1}", "not json") == "cannot read buildah's image list for r/b:1"
    assert check_listing("r/b:1", f"r/b@{D1}", "[1]") == "cannot read buildah's image list for r/b:1"


def test_result_reports_the_key_only_with_one() -> None:
    plain = json.loads(render(Result(True, "g1", "t", digest=D1)))
    assert "key" not in plain and "keyTagged" not in plain
    tagged = json.loads(render(Result(True, "g1", "t", digest=D1, key=KEY, key_tagged=True)))
    assert tagged["key"] == KEY and tagged["keyTagged"] is True
    long = render(Result(True, "g1", "t", digest=D1, key=KEY, upstreams={f"s{i}": D2 for i in range(60)}))
    assert len(long.encode()) <= 4096 and json.loads(long)["keyTagged"] is False


KEYED = StepSpec(target="t", push=(f"{REG}/app:1",), cache_repo=f"{REG}/cache", stage_key=KEY)
USED = PinPlan(used={f"{REG}/base:1": f"{REG}/base@{D1}"})


def _store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, plan: PinPlan = USED,
           spec: StepSpec = KEYED, copy: str | None = None, pushed: str | Exception = D1,
           storage: str | None = None) -> tuple[bool, list[str], list[str]]:
    """`store_under_key` with the registry, buildah and the storage check replaced."""
    calls: list[str] = []
    monkeypatch.setattr(keytag, "verify_pins", lambda used, env: calls.append("verify") or storage)
    monkeypatch.setattr(keytag, "copy_manifest", lambda *a, **k: calls.append("copy") or copy)

    def push_all(image_id: str, refs: tuple[str, ...], *_: object) -> str:
        calls.append(f"push {refs[0]}")
        if isinstance(pushed, Exception):
            raise pushed
        return pushed

    monkeypatch.setattr(keytag, "push_all", push_all)
    logs: list[str] = []
    ok = keytag.store_under_key(spec, plan, "iid", D1, tmp_path, {}, logs.append)
    return ok, calls, logs


def test_store_under_key_copies_the_manifest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ok, calls, logs = _store(monkeypatch, tmp_path)
    assert ok and calls == ["verify", "copy"]
    assert logs[-1].startswith(f"stored as {KEYED.key_ref}@{D1} (manifest copied in ")


def test_store_under_key_pushes_when_the_copy_cannot_work(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    ok, calls, logs = _store(monkeypatch, tmp_path, copy="GET of the manifest answered 401")
    assert ok and calls == ["verify", "copy", f"push {KEYED.key_ref}"]
    assert "cannot copy the manifest (GET of the manifest answered 401); pushing instead" in logs[0]
    # another registry: no copy tried at all
    other = StepSpec(target="t", push=("elsewhere.io/app:1",), cache_repo=f"{REG}/cache", stage_key=KEY)
    ok, calls, _ = _store(monkeypatch, tmp_path, spec=other)
    assert ok and calls == ["verify", f"push {KEYED.key_ref}"]


def test_a_failed_key_tag_is_a_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ok, _, logs = _store(monkeypatch, tmp_path, copy="x", pushed=PushError("push to r failed: boom", False))
    assert not ok and logs[-1] == "warning: storing the result under its key failed: push to r failed: boom"
    ok, _, logs = _store(monkeypatch, tmp_path, copy="x", pushed=D2)
    assert not ok and logs[-1].startswith(f"warning: {KEYED.key_ref} got digest {D2}, not the result's {D1}")
    ok, _, logs = _store(monkeypatch, tmp_path, copy="x", pushed=OSError("disk full"))
    assert not ok and logs[-1] == "warning: storing the result under its key failed: OSError: disk full"


def test_no_key_tag_for_inputs_it_cannot_vouch_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ok, calls, logs = _store(monkeypatch, tmp_path, plan=PinPlan(unpinned=("r/x:1",)))
    assert not ok and calls == []
    assert logs == [f"result not stored under its key ({KEYED.key_ref}): not every image it builds from is "
                    "pinned (--pin-image): r/x:1"]
    why = f"r/b:1 was resolved by its tag to {D2}, not the pinned {D1}"
    ok, calls, logs = _store(monkeypatch, tmp_path, storage=why)
    assert not ok and calls == ["verify"] and logs[-1].endswith(why)
    ok, calls, _ = _store(monkeypatch, tmp_path, spec=StepSpec(target="t", push=("r/x:1",)))
    assert not ok and calls == []
