"""Every example under examples/: well-formed YAML, valid against the CRD schema, and a Dockerfile that plans.

The ImageBuild check uses the CRD's own openAPIV3Schema (from crds/imagebuild.yaml) with unknown fields
refused, like `kubectl apply` with its default strict field validation, plus the CEL rules re-stated in
Python. The kustomize overlays are rendered with the real kubectl (`STAGEFLEET_KUBECTL` or
.tools/bin/kubectl).
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from binaries import find_tool

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
API_VERSION = "stagefleet.io/v1alpha1"
# Every example directory this test knows about; a new directory must be added here (and so get checked).
EXPECTED_DIRS = {"seed", "secrets", "cache-mounts", "private-git-ssh", "go-microservice", "kustomize",
                 "oci-source"}
# Kustomize patches are partial objects: not ImageBuilds on their own.
PARTIAL = {"examples/kustomize/overlays/production/imagebuild-patch.yaml"}


KUBECTL = find_tool("kubectl")


def yaml_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*.yaml") if p.is_file())


def docs_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def imagebuilds() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in yaml_files():
        rel = str(path.relative_to(REPO))
        if rel in PARTIAL:
            continue
        for doc in docs_of(path):
            if doc.get("kind") == "ImageBuild":
                yield rel, doc


IMAGEBUILDS = list(imagebuilds())


def _strict(schema: Any) -> Any:
    """The CRD schema as JSON Schema with unknown fields refused (what kubectl's strict validation does)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((REPO / "crds" / "imagebuild.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def cel_problems(spec: Mapping[str, Any]) -> list[str]:
    """The CRD's x-kubernetes-validations rules, restated."""
    out = []
    source = spec["source"]
    if [k in source for k in ("git", "inline", "oci")].count(True) != 1:
        out.append("exactly one of spec.source.git, spec.source.inline and spec.source.oci")
    if "inline" in source and source.get("contextDir"):
        out.append("contextDir with an inline Dockerfile")
    cache = spec.get("cache", {})
    if cache.get("disabled") and "repository" in cache:
        out.append("cache.repository with cache.disabled")
    return out


def dockerfile_of(rel: str, doc: Mapping[str, Any]) -> tuple[str, str]:
    """(Dockerfile text, its name) for an example ImageBuild."""
    source = doc["spec"]["source"]
    if "inline" in source:
        return source["inline"]["dockerfile"], f"{rel}:spec.source.inline.dockerfile"
    example_dir = (REPO / rel).parent
    if "kustomize" in rel:  # the overlays build examples/go-microservice of this repository
        example_dir = REPO / source.get("contextDir", "")
    path = example_dir / doc["spec"].get("dockerfile", "Dockerfile")
    assert path.is_file(), f"{rel}: a git-sourced example ships its Dockerfile next to it ({path})"
    return path.read_text(), str(path.relative_to(REPO))


# --------------------------------------------------------------------------------------------------------


def test_every_example_directory_is_known_and_documented() -> None:
    dirs = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert dirs == EXPECTED_DIRS
    for name in dirs - {"seed"}:  # examples/seed belongs to the operator issue
        readme = EXAMPLES / name / "README.md"
        assert readme.is_file(), f"examples/{name} needs a README.md"
        assert readme.read_text().startswith("# ")
    assert len(IMAGEBUILDS) >= len(EXPECTED_DIRS)
    assert {Path(rel).parts[1] for rel, _ in IMAGEBUILDS} == EXPECTED_DIRS


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_yaml_is_well_formed(path: Path) -> None:
    docs = docs_of(path)
    assert docs, "empty YAML"
    for doc in docs:
        assert isinstance(doc, dict)
        kind = doc.get("kind")
        if kind == "Kustomization":
            assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        elif kind in ("Secret", "ConfigMap"):  # companions an example may ship
            assert doc["apiVersion"] == "v1"
        else:
            assert doc.get("apiVersion") == API_VERSION and kind == "ImageBuild", path
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


@pytest.mark.parametrize(("rel", "doc"), IMAGEBUILDS, ids=[r for r, _ in IMAGEBUILDS])
def test_imagebuild_matches_crd_schema(rel: str, doc: dict[str, Any],
                                       crd_validator: jsonschema.Draft7Validator) -> None:
    errors = sorted(crd_validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    assert cel_problems(doc["spec"]) == []


def test_crd_schema_check_can_fail(crd_validator: jsonschema.Draft7Validator) -> None:
    _, good = IMAGEBUILDS[0]
    assert crd_validator.is_valid(good)
    typo = copy.deepcopy(good)
    typo["spec"]["outptu"] = typo["spec"]["output"]
    assert not crd_validator.is_valid(typo)
    bad_image = copy.deepcopy(good)
    bad_image["spec"]["output"]["image"] = "Not An Image"
    assert not crd_validator.is_valid(bad_image)
    both = copy.deepcopy(good)
    both["spec"]["source"] = {"git": {"url": "https://x.example/r.git"}, "inline": {"dockerfile": "FROM a"}}
    assert cel_problems(both["spec"])


@pytest.mark.parametrize(("rel", "doc"), IMAGEBUILDS, ids=[r for r, _ in IMAGEBUILDS])
def test_dockerfile_plans(rel: str, doc: dict[str, Any]) -> None:
    stages = pytest.importorskip("stagefleet.stages")
    plan_mod = pytest.importorskip("stagefleet.plan")
    text, name = dockerfile_of(rel, doc)
    spec = doc["spec"]
    graph = stages.parse_stage_graph(text, filename=name, target=spec.get("target"),
                                     build_args=spec.get("buildArgs"))
    plan = plan_mod.make_plan(graph)
    if spec.get("target"):
        assert graph.target == spec["target"]
    assert plan.groups and plan.final_group
    # Every build secret / ssh id the built stages use is supplied by the ImageBuild, and nothing extra.
    used_secrets = {s.id for st in graph.built for s in st.secrets}
    required = {s.id for st in graph.built for s in st.secrets if s.required}
    declared = {s["id"] for s in spec.get("secrets", [])}
    assert required <= declared and declared <= used_secrets, (used_secrets, declared)
    used_ssh = {i for st in graph.built for i in st.ssh}
    assert used_ssh == {s["id"] for s in spec.get("ssh", [])}
    # Resource overrides name real stages.
    names = {st.name for st in graph.stages}
    assert set(spec.get("resources", {}).get("stages", {})) <= names


def _plan_of(rel_suffix: str) -> Any:
    stages = pytest.importorskip("stagefleet.stages")
    plan_mod = pytest.importorskip("stagefleet.plan")
    rel, doc = next((r, d) for r, d in IMAGEBUILDS if r.endswith(rel_suffix))
    text, name = dockerfile_of(rel, doc)
    spec = doc["spec"]
    graph = stages.parse_stage_graph(text, filename=name, target=spec.get("target"),
                                     build_args=spec.get("buildArgs"))
    return plan_mod.make_plan(graph)


def test_go_microservice_runs_test_and_build_in_parallel() -> None:
    plan = _plan_of("go-microservice/imagebuild.yaml")
    by_target = {g.target: g for g in plan.groups}
    assert {"deps", "test", "build", "final"} <= set(by_target)
    assert by_target["test"].wave == by_target["build"].wave
    assert by_target["test"].id != by_target["build"].id
    assert set(by_target["final"].after) == {by_target["test"].id, by_target["build"].id}


def test_secret_is_confined_to_its_group() -> None:
    plan = _plan_of("secrets/imagebuild.yaml")
    with_secret = [g for g in plan.groups if "npm-token" in g.secrets]
    assert [g.target for g in with_secret] == ["deps"]
    assert len(plan.groups) == 3


@pytest.mark.skipif(KUBECTL is None,
                    reason="kubectl not found: set STAGEFLEET_KUBECTL or run scripts/setup.sh")
@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_kustomize_overlay_renders(overlay: str, crd_validator: jsonschema.Draft7Validator) -> None:
    assert KUBECTL is not None
    proc = subprocess.run([KUBECTL, "kustomize", str(EXAMPLES / "kustomize" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    (doc,) = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert doc["kind"] == "ImageBuild" and doc["metadata"]["namespace"] == f"builds-{overlay}"
    assert crd_validator.is_valid(doc), list(crd_validator.iter_errors(doc))
    assert cel_problems(doc["spec"]) == []
    assert f"/{overlay}/" in doc["spec"]["output"]["image"]
    assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "stagefleet-examples"
