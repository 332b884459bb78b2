"""platforms: a build of several spec.platforms is one child ImageBuild per platform, joined into an OCI
image index; the parent's status follows its children's."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from stagefleet.controller import platforms as pl
from stagefleet.controller.podspec import BuildRef
from stagefleet.controller.runs import Run, spec_hash
from stagefleet.controller.spec import SpecError, parse_spec

from .crdschema import undeclared

NOW = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "source": {"inline": {"dockerfile": "FROM busybox\nRUN uname -m > /m\n"}},
    "output": {"image": "127.0.0.1:5000/team/app:1.0", "tags": ["latest"]},
    "platforms": ["linux/amd64", "linux/arm64"],
    "ttlSecondsAfterFinished": 60,
    "timeout": "10m",
}
PARENT: dict[str, Any] = {
    "apiVersion": "stagefleet.io/v1alpha1",
    "kind": "ImageBuild",
    "metadata": {"name": "app", "namespace": "team", "uid": "uid-app", "generation": 1},
    "spec": SPEC,
}


def test_the_spec_names_platforms_as_buildkit_does() -> None:
    assert parse_spec(SPEC).platforms == ("linux/amd64", "linux/arm64")
    assert parse_spec(SPEC).platform is None
    assert parse_spec({**SPEC, "platforms": ["linux/arm/v7"]}).platform == "linux/arm/v7"
    assert parse_spec({k: v for k, v in SPEC.items() if k != "platforms"}).platforms == ()
    for bad, path, why in [
        (["arm64"], "spec.platforms[0]", "'arm64' is not a platform"),
        (["linux/amd64", "linux/amd64"], "spec.platforms[1]", "linux/amd64 is named twice"),
        ([f"linux/a{i}" for i in range(9)], "spec.platforms", "at most 8 platforms"),
    ]:
        with pytest.raises(SpecError) as e:
            parse_spec({**SPEC, "platforms": bad})
        assert e.value.path == path and why in e.value.message
    polled = {**SPEC, "source": {"git": {"url": "https://git.example/x.git", "pollInterval": "1m"}}}
    with pytest.raises(SpecError, match="spec.source.git.pollInterval: is not supported with more than one"):
        parse_spec(polled)


def test_a_child_is_the_parents_spec_for_one_platform_under_its_own_tag() -> None:
    child = pl.child_manifest(PARENT, "linux/arm64", native=False, rebuild=None)
    assert child["metadata"]["name"] == "app-arm64"
    assert child["metadata"]["labels"] == {pl.LABEL_PARENT: "app"}
    assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-app"
    assert child["metadata"]["ownerReferences"][0]["controller"] is True
    spec = child["spec"]
    assert spec["platforms"] == ["linux/arm64"] and "ttlSecondsAfterFinished" not in spec
    assert spec["output"] == {"image": "127.0.0.1:5000/team/app:1.0-linux-arm64"}
    assert "nodeSelector" not in spec  # no arm64 node: built under emulation wherever it lands
    native = pl.child_manifest(PARENT, "linux/arm64", native=True, rebuild="r1")
    assert native["spec"]["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert native["metadata"]["annotations"]["stagefleet.io/rebuild"] == "r1"
    assert parse_spec(native["spec"]).platform == "linux/arm64"
    assert pl.child_name("a" * 250, "linux/arm/v7").endswith("-arm-v7")
    assert len(pl.child_name("a" * 250, "linux/arm/v7")) <= 253
    untagged = {**PARENT, "spec": {**SPEC, "output": {"image": "127.0.0.1:5000/team/app"}}}
    assert pl.child_manifest(untagged, "linux/amd64", False, None)["spec"]["output"]["image"] == (
        "127.0.0.1:5000/team/app:latest-linux-amd64")


def test_a_child_follows_its_parents_spec_edits() -> None:
    wanted = pl.child_manifest(PARENT, "linux/arm64", native=False, rebuild=None)
    stored = json.loads(json.dumps(wanted))
    stored["spec"]["maxParallelPods"] = 8  # (the API server's defaults)
    assert pl.spec_difference(stored, wanted) is None
    edited = {**PARENT, "spec": {**SPEC, "buildArgs": {"A": "1"}, "suspend": True}}
    patch = pl.spec_difference(stored, pl.child_manifest(edited, "linux/arm64", False, "again"))
    assert patch is not None
    assert patch["spec"]["buildArgs"] == {"A": "1"} and patch["spec"]["suspend"] is True
    assert patch["metadata"] == {"annotations": {"stagefleet.io/rebuild": "again"}}
    stored["spec"]["target"] = "old"  # a field the parent's spec no longer has goes
    assert pl.spec_difference(stored, wanted) == {"spec": {"target": None, **wanted["spec"]}}


def _child(platform: str, phase: str | None, digest: str | None = None, **status: Any) -> pl.Child:
    name = pl.child_name("app", platform)
    if phase is None:
        return pl.Child(platform, name, None)
    spec = {**SPEC, "platforms": [platform]}
    st: dict[str, Any] = {"phase": phase, "observedGeneration": 1, "run": 1, "specHash": spec_hash(spec),
                          "message": status.pop("message", f"{phase.lower()} ..."), **status}
    if digest:
        st["image"] = {"digest": digest}
    obj = {"metadata": {"name": name, "generation": 1}, "spec": spec, "status": st}
    return pl.Child(platform, name, obj)


def _fan(children: list[pl.Child], status: dict[str, Any] | None = None, run: int = 1,
         **kw: Any) -> tuple[dict[str, Any], list[Any]]:
    build = BuildRef("app", "team", "uid-app", run, Run(run, run, None, spec_hash(SPEC)))
    args: dict[str, Any] = {"index_digest": None, "failure": None, **kw}
    return pl.fan_status(build=build, spec_suspend=False, status=status or {}, children=children,
                         image="127.0.0.1:5000/team/app:1.0", tags=["127.0.0.1:5000/team/app:1.0"], now=NOW,
                         **args)


def test_the_parent_builds_while_its_children_do_and_succeeds_with_the_index() -> None:
    status, events = _fan([_child("linux/amd64", None), _child("linux/arm64", "Building")])
    assert status["phase"] == "Building" and status["progress"] == "0/2"
    assert status["platforms"][0] == {"platform": "linux/amd64", "imageBuild": "app-amd64",
                                      "phase": "Pending", "message": "starting"}
    assert "linux/arm64: Building (building ...)" in status["message"] and events == []
    assert undeclared(status) == []

    done = [_child("linux/amd64", "Succeeded", "sha256:" + "a" * 64),
            _child("linux/arm64", "Succeeded", "sha256:" + "b" * 64)]
    status, _ = _fan(done)
    assert status["phase"] == "Building" and status["message"] == "writing the image index of 2 platforms"
    status, events = _fan(done, index_digest="sha256:" + "c" * 64)
    assert status["phase"] == "Succeeded" and status["progress"] == "2/2"
    assert status["image"]["digest"] == "sha256:" + "c" * 64
    assert status["image"]["platforms"] == [{"platform": "linux/amd64", "digest": "sha256:" + "a" * 64},
                                            {"platform": "linux/arm64", "digest": "sha256:" + "b" * 64}]
    assert [e.reason for e in events] == ["BuildSucceeded"] and undeclared(status) == []
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_a_childs_failure_or_an_earlier_runs_status_is_not_taken_for_the_current() -> None:
    failed = _child("linux/arm64", "Failed", message="group g1 (build) failed: exit 1")
    status, events = _fan([_child("linux/amd64", "Building"), failed])
    assert status["phase"] == "Failed"
    assert status["message"] == ("platform linux/arm64 (ImageBuild app-arm64) failed: group g1 (build) "
                                 "failed: exit 1")
    assert status["failure"]["platform"] == "linux/arm64" and [e.reason for e in events] == ["BuildFailed"]
    stale = _child("linux/arm64", "Failed")
    assert stale.obj is not None
    stale.obj["metadata"]["generation"] = 2  # its spec was just patched: the status is an earlier run's
    assert stale.phase == "Pending"
    status, _ = _fan([_child("linux/amd64", "Succeeded", "sha256:" + "a" * 64)],
                     failure="writing the image index failed: 403")
    assert status["phase"] == "Failed" and status["message"] == "writing the image index failed: 403"


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def test_the_index_lists_each_platforms_manifest() -> None:
    images = [pl.PlatformImage("linux/amd64", OCI_MANIFEST, "sha256:" + "a" * 64, 10),
              pl.PlatformImage("linux/arm/v7", OCI_MANIFEST, "sha256:" + "b" * 64, 9)]
    doc = pl.index_document(images)
    index = json.loads(doc)
    assert index["mediaType"] == pl.OCI_INDEX and index["schemaVersion"] == 2
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm", "os": "linux", "variant": "v7"}]
    assert [m["size"] for m in index["manifests"]] == [10, 9]
    assert [m["mediaType"] for m in index["manifests"]] == [OCI_MANIFEST] * 2
    # The same images, the same bytes: a pass that writes it again changes no digest.
    assert hashlib.sha256(doc).digest() == hashlib.sha256(pl.index_document(list(images))).digest()


def test_a_new_run_of_the_parent_starts_its_own_clock() -> None:
    done = [_child("linux/amd64", "Succeeded", "sha256:" + "a" * 64)]
    earlier = {"phase": "Succeeded", "run": 1, "observedGeneration": 1,
               "startTime": "2025-01-01T00:00:00Z", "completionTime": "2025-01-01T00:05:00Z"}
    same, _ = _fan(done, earlier, run=1, index_digest="sha256:" + "c" * 64)
    assert (same["startTime"], same["completionTime"]) == ("2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z")
    later, _ = _fan(done, earlier, run=2, index_digest="sha256:" + "c" * 64)
    assert (later["startTime"], later["completionTime"]) == ("2026-01-01T00:01:00Z", "2026-01-01T00:01:00Z")
