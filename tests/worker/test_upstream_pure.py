"""The pure side of `--upstream-wait`: flags, pull errors, digest pinning, what to pre-pull, the loop."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from stagefleet.worker.buildah import image_digest_argv, pull_argv
from stagefleet.worker.result import Result, render
from stagefleet.worker.spec import Upstream, UpstreamWait, UsageError, parse_args
from stagefleet.worker.upstream import (
    Prefetchable,
    classify,
    external_images,
    parse_digest,
    pinned,
    pull_error,
    repository,
    timeout_message,
)
from stagefleet.worker.waiting import UpstreamError, probing_poll, wait_for_upstreams

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
REF = "127.0.0.1:5000/team/app/stages:mybuild-1a2b3c4d-1-build1"
BASE = ["--context", ".", "--target", "final", "--push", "127.0.0.1:5000/team/app:1"]


def test_parse_upstream_wait_and_timeout() -> None:
    spec = parse_args([*BASE, "--upstream-wait", f"build1={REF}", "--upstream", f"build2=r.io/x/stages@{D2}",
                       "--upstream-timeout", "90"])
    assert spec.upstream_waits == (UpstreamWait("build1", REF),)
    assert spec.upstreams == (Upstream("build2", f"r.io/x/stages@{D2}"),)
    assert spec.upstream_timeout == 90.0
    assert parse_args(BASE).upstream_timeout is None and parse_args(BASE).upstream_waits == ()


@pytest.mark.parametrize("value", ["build1", "build1=", f"={REF}", f"build1={REF}@{D1}",
                                   "build1=127.0.0.1:5000/Team/stages:x", "build1=stages", "b 1=" + REF])
def test_parse_upstream_wait_rejects(value: str) -> None:
    with pytest.raises(UsageError, match="--upstream-wait"):
        parse_args([*BASE, "--upstream-wait", value])


@pytest.mark.parametrize("value", ["-1", "0", "nan", "soon"])
def test_parse_upstream_timeout_rejects(value: str) -> None:
    with pytest.raises(UsageError, match="--upstream-timeout"):
        parse_args([*BASE, "--upstream-wait", f"build1={REF}", "--upstream-timeout", value])


def test_a_stage_is_consumed_once() -> None:
    with pytest.raises(UsageError, match="more than once"):
        parse_args([*BASE, "--upstream-wait", f"build1={REF}", "--upstream", f"build1=r.io/x@{D1}"])
    with pytest.raises(UsageError, match="more than once"):
        parse_args([*BASE, "--upstream-wait", f"build1={REF}", "--upstream-wait", f"build1={REF}2"])


@pytest.mark.parametrize(("message", "outcome"), [
    ("initializing source docker://h/x:t: reading manifest t in h/x: manifest unknown: manifest unknown",
     "missing"),
    ("reading manifest t in h/x: name unknown: repository name not known to registry", "missing"),
    ('pinging container registry h: Get "https://h/v2/": dial tcp h: connect: connection refused',
     "transient"),
    ("reading manifest t in h/x: received unexpected HTTP status: 503 Service Unavailable", "transient"),
    ("reading manifest t in h/x: unauthorized: authentication required", "permanent"),
    ("reading manifest t in h/x: denied: requested access to the resource is denied", "permanent"),
    ("invalid reference format", "permanent"),
    ('pinging container registry h: Get "https://h/v2/": http: server gave HTTP response to HTTPS client',
     "permanent"),
])
def test_classify_pull_errors(message: str, outcome: str) -> None:
    assert classify(message) == outcome


def test_classify_ignores_the_reference_itself() -> None:
    ref = "reg.io/denied/unauthorized-app:v1"
    message = f"initializing source docker://{ref}: reading manifest v1 in reg.io/denied/unauthorized-app: "
    assert classify(message + "manifest unknown", ref) == "missing"
    assert classify(message + "connection reset by peer", ref) == "transient"
    assert classify(message + "denied: requested access to the resource is denied", ref) == "permanent"


def test_pull_error_takes_buildahs_error_line() -> None:
    stderr = ('time="x" level=warning msg="Failed, retrying in 10ms ... (1/3)"\n'
              "Error: initializing source docker://h/x:t: manifest unknown\n")
    assert pull_error(stderr, 125) == "initializing source docker://h/x:t: manifest unknown"
    assert pull_error("", 125) == "buildah pull exited 125"


@pytest.mark.parametrize(("ref", "repo"), [
    (REF, "127.0.0.1:5000/team/app/stages"),
    ("127.0.0.1:5000/team/app", "127.0.0.1:5000/team/app"),
    ("reg.io/a/b:t", "reg.io/a/b"),
    (f"reg.io/a/b:t@{D1}", "reg.io/a/b"),
])
def test_pinned_reference_drops_the_tag(ref: str, repo: str) -> None:
    assert repository(ref) == repo
    assert pinned(ref, D1) == f"{repo}@{D1}"
    with pytest.raises(ValueError):
        pinned(ref, "sha256:short")


def test_parse_digest() -> None:
    assert parse_digest(f"{D1}\n") == D1
    assert parse_digest("<none>\n") is None


def test_argv_helpers() -> None:
    assert pull_argv(REF)[:2] == ["buildah", "pull"] and pull_argv(REF)[-1] == f"docker://{REF}"
    assert pull_argv(REF, platform="linux/arm64")[-3:-1] == ["--platform", "linux/arm64"]
    assert image_digest_argv(REF)[-1] == REF


DOCKERFILE = """ARG BASE=busybox
FROM ${BASE} AS build1
RUN echo 1 > /one
FROM reg.io/tools:2 AS build2
RUN echo 2 > /two
FROM build2 AS build2b
FROM --platform=linux/arm64 reg.io/arm:1 AS final
COPY --from=build1 /one /
COPY --from=build2b /two /
COPY --from=reg.io/extra:3 /x /x
FROM scratch AS empty
"""


def test_external_images_are_the_groups_own_bases() -> None:
    images = external_images(DOCKERFILE, target="final", build_args={"BASE": "reg.io/base:1"},
                             consumed={"build1"})
    # build2 -> build2b is built here; build1 comes from an upstream, whose result sits on its base
    assert images == [Prefetchable("reg.io/tools:2"), Prefetchable("reg.io/arm:1", "linux/arm64"),
                      Prefetchable("reg.io/extra:3", "linux/arm64"), Prefetchable("reg.io/base:1")]
    # consuming build2b: the bottom of its FROM chain (build2b -> build2 -> reg.io/tools:2)
    assert external_images(DOCKERFILE, target="final", build_args={"BASE": "reg.io/base:1"},
                           consumed={"build1", "build2b"})[-2:] == [Prefetchable("reg.io/base:1"),
                                                                   Prefetchable("reg.io/tools:2")]
    assert external_images(DOCKERFILE, target="empty", build_args={}, consumed=()) == []
    assert external_images("FROM", target="x", build_args={}, consumed=()) == []  # buildah reports it


def test_wait_loop_polls_until_every_reference_exists() -> None:
    answers = {"r/a:1": [("", "manifest unknown"), ("", "connection refused"), (D1, "")],
               "r/b:1": [(D2, "")]}
    polls: list[str] = []
    logs: list[str] = []
    now = [0.0]

    def poll(ref: str, env: Mapping[str, str]) -> tuple[str | None, str]:
        polls.append(ref)
        digest, reason = answers[ref].pop(0)
        return digest or None, reason

    def sleep(seconds: float) -> None:
        now[0] += seconds

    early: list[Upstream] = []
    found = wait_for_upstreams([UpstreamWait("a", "r/a:1"), UpstreamWait("b", "r/b:1")], {}, logs.append,
                               poll=poll, clock=lambda: now[0], sleep=sleep, interval=0.5,
                               on_early=early.append)
    assert found == [Upstream("a", f"r/a@{D1}"), Upstream("b", f"r/b@{D2}")]
    assert early == [Upstream("b", f"r/b@{D2}")]  # found while a was awaited; a, the last, is the build's
    assert polls == ["r/a:1", "r/b:1", "r/a:1", "r/a:1"]
    assert logs == ["waiting for upstream stage a at r/a:1",
                    "upstream b ready: r/b:1@" + D2 + " after 0.0 s",
                    "upstream a: registry not answering yet (connection refused); still waiting",
                    "upstream a ready: r/a:1@" + D1 + " after 1.0 s"]


def test_wait_loop_timeout_and_permanent_errors() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(UpstreamError, match=r"stage a at r/a:1 did not appear within 2 s"):
        wait_for_upstreams([UpstreamWait("a", "r/a:1")], {}, lambda _: None, timeout=2,
                           poll=lambda ref, env: (None, "manifest unknown"), clock=lambda: now[0],
                           sleep=sleep)
    with pytest.raises(UpstreamError, match=r"upstream stage a: cannot pull r/a:1: unauthorized"):
        wait_for_upstreams([UpstreamWait("a", "r/a:1")], {}, lambda _: None,
                           poll=lambda ref, env: (None, "unauthorized: authentication required"))
    assert timeout_message({"a": "r/a:1", "b": "r/b:1"}, 1.5) == (
        "upstream stage a at r/a:1, b at r/b:1 did not appear within 1.5 s (--upstream-timeout)")


def test_result_reports_upstream_digests_only_when_there_are_some() -> None:
    assert "upstreams" not in json.loads(render(Result(True, "g1", "t", digest=D1)))
    one = json.loads(render(Result(True, "g3", "t", digest=D1, upstreams={"a": D1})))
    assert one["upstreams"] == {"a": D1}
    many = {f"stage{i}": D2 for i in range(60)}
    text = render(Result(True, "g3", "t", digest=D1, upstreams=many))
    assert len(text.encode()) <= 4096 and json.loads(text)["digest"] == D1


def test_probing_poll_pulls_only_when_the_probe_cannot_name_the_digest() -> None:
    now = [0.0]
    answers: list[tuple[bool | None, str | None]] = [(False, None), (False, None), (True, D2)]
    pulls: list[str] = []

    def pull(ref: str, env: Mapping[str, str]) -> tuple[str | None, str]:
        pulls.append(ref)
        return (D1, "") if ref == REF else (None, "unauthorized")

    poll = probing_poll(clock=lambda: now[0], head=lambda ref, env: answers.pop(0), pull=pull)
    assert poll(REF, {}) == (None, "manifest unknown (HTTP 404)")
    assert poll(REF, {}) == (None, "manifest unknown (HTTP 404)") and pulls == []
    assert poll(REF, {}) == (D2, "") and pulls == []  # the registry named the digest: nothing to pull
    answers[:] = [(True, None)]  # there, but no digest header: the builder pulls and pins it
    assert poll(REF, {}) == (D1, "") and pulls == [REF]
    # A registry that will not answer anonymously: the builder asks, but at most every PULL_INTERVAL.
    answers[:] = [(None, None)] * 3
    hub = "team/app:t"
    assert poll(hub, {}) == (None, "unauthorized") and pulls == [REF, hub]
    now[0] += 0.1
    assert poll(hub, {}) == (None, "unauthorized") and pulls == [REF, hub]
    now[0] += 0.3
    poll(hub, {})
    assert pulls == [REF, hub, hub]
