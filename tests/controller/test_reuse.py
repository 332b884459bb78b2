"""Stage reuse at plan time (controller/reuse.py): which images are resolved, which key tags are looked up,
and how the outcome lands in the planned status — with a registry stand-in that records every request."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stagefleet.controller import clock, report, reuse
from stagefleet.controller import registry as reg
from stagefleet.controller.model import plan_dockerfile
from stagefleet.stagekey import KeyResult, key_tag

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HOST = "reg.example:5000"
CACHE = f"{HOST}/team/app/cache/ns"

WIDE = f"""FROM {HOST}/base:1 AS a
RUN echo a > /a
FROM {HOST}/base:1 AS b
RUN echo b > /b
FROM {HOST}/base:1 AS final
COPY --from=a /a /a
COPY --from=b /b /b
"""


class FakeRegistry(reg.Registry):
    """Answers HEADs from ``tags`` (repository:tag → digest); records what was asked."""

    def __init__(self, tags: dict[str, str], fail: Exception | None = None) -> None:
        super().__init__(HOST, insecure=True)
        self.known = tags
        self.fail = fail
        self.asked: list[str] = []

    def digest(self, repository: str, tag: str) -> str | None:
        self.asked.append(f"{repository}:{tag}")
        if self.fail is not None:
            raise self.fail
        return self.known.get(f"{repository}:{tag}")


def _lookup(fake: FakeRegistry, text: str = WIDE) -> tuple[reuse.Reuse, object]:
    plan = plan_dockerfile(text, target=None, build_args={})
    assert plan.graph is not None
    found = reuse.lookup(plan.graph, plan, platform="linux/amd64", context=None, cache_repo=CACHE,
                         client_for=lambda host: fake)
    return found, plan


def test_nothing_stored_yet_every_stage_keyed_base_resolved_nothing_found() -> None:
    fake = FakeRegistry({"base:1": "sha256:" + "b" * 64})
    found, _ = _lookup(fake)
    assert found.bases == {f"{HOST}/base:1": "sha256:" + "b" * 64}
    assert set(found.keys) == {"a", "b", "final"}
    assert all(k.key for k in found.keys.values())
    assert found.found == {}
    # one HEAD for the base, one per group target's key tag
    assert fake.asked[0] == "base:1"
    assert sorted(fake.asked[1:]) == sorted(
        f"team/app/cache/ns:{key_tag(found.keys[s].key or '')}" for s in ("a", "b", "final")
    )


def test_stored_results_are_found_and_marked_succeeded_without_a_pod() -> None:
    base = {"base:1": "sha256:" + "b" * 64}
    first, plan = _lookup(FakeRegistry(base))
    stored = {f"team/app/cache/ns:{key_tag(first.keys['a'].key or '')}": "sha256:" + "1" * 64}
    found, plan = _lookup(FakeRegistry({**base, **stored}))
    assert found.found == {"g1": "sha256:" + "1" * 64}
    planned = report.planned_status(generation=1, plan=plan, source={"inline": True}, old={}, now=NOW)
    marked = reuse.mark(planned, plan, found, clock.fmt_time(NOW))
    by_name = {e["name"]: e for e in marked["stages"]}
    assert by_name["a"]["phase"] == "Succeeded" and by_name["a"]["reused"] == "sha256:" + "1" * 64
    assert by_name["a"]["image"] == f"{CACHE}:{key_tag(first.keys['a'].key or '')}"
    assert by_name["b"]["phase"] == "Waiting" and "reused" not in by_name["b"]
    assert by_name["b"]["key"] == first.keys["b"].key
    assert marked["baseImages"] == [{"image": f"{HOST}/base:1", "digest": "sha256:" + "b" * 64}]
    assert marked["reuse"]["reused"] == 1 and marked["reuse"]["keyed"] == 3
    # what the workers of the other groups are given
    keys, bases = reuse.recorded(marked)
    assert keys["final"] == first.keys["final"].key and bases == {f"{HOST}/base:1": "sha256:" + "b" * 64}


def test_an_unresolvable_base_leaves_its_stages_unkeyed_and_asks_for_no_key_tag() -> None:
    fake = FakeRegistry({})  # the base is not there
    found, _ = _lookup(fake)
    assert all(k.key is None for k in found.keys.values())
    assert fake.asked == ["base:1"]
    assert any("not found" in n for n in found.notes)


def test_an_unreachable_registry_stops_the_lookups_and_fails_nothing() -> None:
    fake = FakeRegistry({}, fail=reg.RegistryError("reg.example:5000 unreachable", transient=True))
    found, _ = _lookup(fake)
    assert found.found == {} and fake.asked == ["base:1"]
    assert any("unreachable" in n for n in found.notes)


def test_a_docker_hub_short_name_is_not_resolved() -> None:
    fake = FakeRegistry({})
    found, _ = _lookup(fake, "FROM busybox:1.36\nRUN true\n")
    assert fake.asked == [] and found.keys["stage-0"].key is None
    assert any("names no registry host" in n for n in found.notes)


def test_the_key_platform_follows_the_node_selector(monkeypatch: pytest.MonkeyPatch) -> None:
    assert reuse.build_arch({"kubernetes.io/arch": "arm64"}) == "arm64"
    monkeypatch.setattr(reuse._platform, "machine", lambda: "x86_64")
    assert reuse.build_arch({}) == "amd64"
    monkeypatch.setattr(reuse._platform, "machine", lambda: "aarch64")
    assert reuse.build_arch({"other": "x"}) == "arm64"


def test_unkeyed_reasons_reach_the_status_note() -> None:
    plan = plan_dockerfile(WIDE, target=None, build_args={})
    planned = report.planned_status(generation=1, plan=plan, source={"inline": True}, old={}, now=NOW)
    found = reuse.Reuse(keys={"a": KeyResult(None, "ADD of a URL without --checksum")})
    marked = reuse.mark(planned, plan, found, clock.fmt_time(NOW))
    assert marked["reuse"] == {"keyed": 0, "reused": 0, "notes": ["ADD of a URL without --checksum"]}
    assert "baseImages" not in marked


def test_what_planning_recorded_survives_the_passes() -> None:
    """`decide` rebuilds the status each pass: the keys, the pins and the reuse summary stay."""
    from .helpers import decide_pods, make_spec

    fake = FakeRegistry({"base:1": "sha256:" + "b" * 64})
    found, plan = _lookup(fake)
    planned = report.planned_status(generation=1, plan=plan, source={"inline": True}, old={}, now=NOW)
    marked = reuse.mark(planned, plan, found, clock.fmt_time(NOW))
    d = decide_pods(marked, [], now=NOW, spec=make_spec(), plan=plan)
    assert d.status["baseImages"] == marked["baseImages"] and d.status["reuse"] == marked["reuse"]
    assert reuse.recorded(d.status) == reuse.recorded(marked)
