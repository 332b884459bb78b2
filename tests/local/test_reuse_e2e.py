"""`stagefleet build` reuses unchanged stages (README "Local mode"): real workers, real buildah, the session
registry. The first build stores every group's result under its stage key in the cache repository (derived
from the tag); the same build again starts no worker and writes its tag from the stored result (the same
digest); after a change to one branch's file only that branch and the final stage are built.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .test_build_e2e import image_files, json_events, stagefleet

pytestmark = pytest.mark.builder

DOCKERFILE = """ARG BASE
FROM ${BASE} AS left
COPY left.txt /left.txt
RUN cat /left.txt > /left.out
FROM ${BASE} AS right
COPY right.txt /right.txt
FROM ${BASE} AS final
COPY --from=left /left.out /left.out
COPY --from=right /right.txt /right.txt
"""


def by_kind(events: list[dict[str, Any]], kind: str) -> list[str]:
    """The target stages of the groups with an event of ``kind``."""
    return sorted(e["stage"] for e in events if e["event"] == kind)


def tags_of(registry: LocalRegistry, repo: str) -> set[str]:
    with urllib.request.urlopen(f"{registry.url}/v2/{repo}/tags/list", timeout=30) as resp:
        return set(json.loads(resp.read())["tags"] or ())


def test_a_second_build_reuses_every_group_and_a_change_rebuilds_its_branch(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "left.txt").write_text("left 1\n")
    (ctx / "right.txt").write_text("right 1\n")
    repo = f"e2e/reuse-{uuid.uuid4().hex[:8]}"

    def build(tag: str, progress: str) -> str:
        proc = stagefleet("build", str(ctx), "--registry", registry.host, "--tag",
                          f"{registry.host}/{repo}:{tag}", "--build-arg", f"BASE={base_image}",
                          "--parallel", "2", "--progress", progress, cwd=ctx)
        assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
        return proc.stdout

    # 1. every group built, each result stored under its key in REPO/cache
    first = json_events(build("v1", "json"))
    assert by_kind(first, "group-started") == ["final", "left", "right"]
    assert by_kind(first, "group-reused") == []
    assert first[0]["cacheRepo"] == f"{registry.host}/{repo}/cache"
    digest = first[-1]["digest"]
    assert len({t for t in tags_of(registry, f"{repo}/cache") if t.startswith("stage-")}) == 3

    # 2. nothing changed: no worker at all; every group reused, the new tag names the same digest
    second = build("v2", "plain").splitlines()
    progress, summary = second[:second.index("")], second[second.index("") + 1:]
    assert not [ln for ln in progress if "==> group" in ln and "started" in ln], progress
    reused = [ln for ln in progress if re.search(r"==> group g\d reused: sha256:[0-9a-f]{12} ", ln)]
    assert len(reused) == 3, progress
    rows = {ln.split()[0]: ln.replace(" *", "").split() for ln in summary[1:4]}  # "*": critical path
    assert {r[2] for r in rows.values()} == {"reused"}, summary
    assert rows["final"][-1] == digest[:len("sha256:") + 12]
    assert f"image: {registry.host}/{repo}:v2@{digest}" in summary

    # 3. one branch's file changed: that branch and the final stage run, the other branch is reused
    (ctx / "left.txt").write_text("left 2\n")
    third = json_events(build("v3", "json"))
    assert by_kind(third, "group-started") == ["final", "left"]
    assert by_kind(third, "group-reused") == ["right"]
    assert third[-1]["ok"] is True and third[-1]["digest"] != digest
    files = image_files(registry, repo, third[-1]["digest"])
    assert files["left.out"] == b"left 2\n" and files["right.txt"] == b"right 1\n"


def test_what_dockerignore_leaves_out_changes_no_key(registry: LocalRegistry, base_image: str,
                                                     tmp_path: Path) -> None:
    """`COPY . /app/` of a context whose .dockerignore leaves out logs and node_modules: changing those
    starts no worker (buildah would not copy them), changing a copied file does."""
    ctx = tmp_path / "ctx"
    (ctx / "node_modules" / "pkg").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("ARG BASE\nFROM ${BASE} AS app\nCOPY . /app/\n")
    (ctx / ".dockerignore").write_text("node_modules\n*.log\n")
    (ctx / "app.txt").write_text("app 1\n")
    (ctx / "debug.log").write_text("log 1\n")
    (ctx / "node_modules" / "pkg" / "index.js").write_text("v1\n")
    repo = f"e2e/ignore-{uuid.uuid4().hex[:8]}"

    def build(tag: str) -> list[dict[str, Any]]:
        proc = stagefleet("build", str(ctx), "--registry", registry.host, "--tag",
                          f"{registry.host}/{repo}:{tag}", "--build-arg", f"BASE={base_image}",
                          "--progress", "json", cwd=ctx)
        assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
        return json_events(proc.stdout)

    first = build("v1")
    assert by_kind(first, "group-started") == ["app"]
    files = image_files(registry, repo, first[-1]["digest"])
    assert files["app/app.txt"] == b"app 1\n" and "app/debug.log" not in files
    assert not any(name.startswith("app/node_modules") for name in files)

    (ctx / "debug.log").write_text("log 2\n")
    (ctx / "node_modules" / "pkg" / "index.js").write_text("v2\n")
    second = build("v2")
    assert by_kind(second, "group-started") == [] and by_kind(second, "group-reused") == ["app"]
    assert second[-1]["digest"] == first[-1]["digest"]

    (ctx / "app.txt").write_text("app 2\n")
    third = build("v3")
    assert by_kind(third, "group-started") == ["app"]
    assert image_files(registry, repo, third[-1]["digest"])["app/app.txt"] == b"app 2\n"
