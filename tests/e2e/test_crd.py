"""The CRD refuses bad specs at apply time, naming the field; `kubectl explain` documents the fields."""

from __future__ import annotations

import copy
import subprocess
import time
from typing import Any

import pytest
import yaml

from stagefleet.controller.spec import SpecError, parse_spec

from .conftest import Kubectl

pytestmark = [pytest.mark.cluster]

GOOD: dict[str, Any] = {
    "apiVersion": "stagefleet.io/v1alpha1",
    "kind": "ImageBuild",
    "metadata": {"name": "check"},
    "spec": {"source": {"inline": {"dockerfile": "FROM busybox\n"}}, "output": {"image": "r.example/a/b:1"}},
}


def server_keeps_cel_rules(kubectl: Kubectl) -> bool:
    """Whether the API server kept the CRD's x-kubernetes-validations (1.25+, or 1.24 with the gate on)."""
    crd = kubectl.json("get", "crd", "imagebuilds.stagefleet.io")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return "x-kubernetes-validations" in version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    node = doc["spec"]
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return doc


# The cases an x-kubernetes-validations rule refuses (the others are plain OpenAPI schema checks). The rules
# carry no fieldPath (1.28+): a rule on spec names its field at the start of its message.
CEL_CASES = {"git-and-inline", "no-source", "cache-disabled-with-repo", "inline-context-dir",
             "toleration-exists-value", "empty-timeout"}


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        (
            _with("source.git", {"url": "https://example.com/r.git"}),
            ("spec.source", "exactly one of spec.source.git, spec.source.inline and spec.source.oci"),
        ),
        (_with("source.inline", None), ("spec.source", "exactly one of")),
        (_with("cache.mode", "all"), ("spec.cache.mode", "Unsupported value")),
        (
            _with("cache", {"disabled": True, "repository": "r.example/c"}),
            ("spec.cache.repository: must not be set when spec.cache.disabled is true",),
        ),
        (
            _with("source.contextDir", "sub"),
            ("spec.source.contextDir: needs spec.source.git or spec.source.oci "
             "(an inline Dockerfile has no build context)",),
        ),
        (
            _with("tolerations", [{"key": "k", "operator": "Exists", "value": "v"}]),
            ("spec.tolerations[0]", "a toleration with operator Exists must not have a value"),
        ),
        (_with("timeout", ""), ("spec.timeout: must not be empty",)),
        (_with("retries", 11), ("spec.retries",)),
        (_with("maxParallelPods", 0), ("spec.maxParallelPods",)),
        (_with("timeout", "soon"), ("spec.timeout",)),
        # kube-apiserver 1.24 names a list item's schema failure at the list, without the index
        (
            _with("output.tags", ["ok", "not a tag"]),
            ('spec.output.tags: Invalid value: "not a tag": spec.output.tags in body should match',),
        ),
        (_with("output.image", "UPPER/case"), ("spec.output.image",)),
        # issue #14: a path that leaves the source is refused by a pattern, which every server enforces
        (_with("dockerfile", "../../etc/passwd"), ('spec.dockerfile: Invalid value: "../../etc/passwd"',)),
        # missing fields: kubectl's own check against the published schema (1.24 has no server-side field
        # validation, so kubectl validates on the client)
        (
            _with("output", None),
            ('ValidationError(ImageBuild.spec): missing required field "output" in '
             "io.stagefleet.v1alpha1.ImageBuild.spec",),
        ),
        (
            _with("secrets", [{"id": "a", "secretRef": {"name": "s"}}]),
            ('ValidationError(ImageBuild.spec.secrets[0].secretRef): missing required field "key" in '
             "io.stagefleet.v1alpha1.ImageBuild.spec.secrets.secretRef",),
        ),
    ],
    ids=[
        "git-and-inline",
        "no-source",
        "cache-mode",
        "cache-disabled-with-repo",
        "inline-context-dir",
        "toleration-exists-value",
        "empty-timeout",
        "retries",
        "parallel",
        "timeout",
        "tag",
        "image",
        "dockerfile-traversal",
        "no-output",
        "secret-key",
    ],
)
def test_bad_specs_are_refused_at_apply_naming_the_field(
    kubectl: Kubectl, doc: dict[str, Any], needles: tuple[str, ...], request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.id in CEL_CASES and not server_keeps_cel_rules(kubectl):
        # Kubernetes 1.24 without the CustomResourceValidationExpressions feature gate drops the rules: the
        # object is stored, and the operator's own spec validation refuses it with the same words.
        kubectl.run("apply", "-f", "-", input=yaml.safe_dump(doc))
        with pytest.raises(SpecError) as e:
            parse_spec(kubectl.ib("check")["spec"])
        for needle in needles:
            assert needle in str(e.value), str(e.value)
        return
    # kubectl checks required fields against the published schema: wait for it (a moment after the CRD)
    assert explain(kubectl, "imagebuild.spec").returncode == 0
    proc = kubectl.run("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0, proc.stdout
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert kubectl.run("get", "imagebuild", "check", check=False).returncode != 0


def test_good_spec_is_accepted_with_defaults(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", "-", input=yaml.safe_dump(GOOD))
    spec = kubectl.ib("check")["spec"]
    assert spec["retries"] == 2 and spec["timeout"] == "1h" and spec["maxParallelPods"] == 8
    assert spec["dockerfile"] == "Dockerfile"


def explain(kubectl: Kubectl, field: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`kubectl explain`, retried while it fails: the API server publishes a CRD's schema a moment after
    the CRD is Established (~1 s, asynchronously), so right after the cluster came up it is not there yet."""
    deadline = time.monotonic() + timeout
    while True:
        out = kubectl.run("explain", field, check=False)
        if out.returncode == 0 or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def test_kubectl_explain_documents_the_spec(kubectl: Kubectl) -> None:
    out = explain(kubectl, "imagebuild.spec.source")
    if out.returncode != 0:
        pytest.skip(f"kubectl explain unsupported by this API server: {out.stderr.strip()[:200]}")
    text = " ".join(out.stdout.split())
    assert "exactly one of git, oci and inline" in text
    git_url = explain(kubectl, "imagebuild.spec.source.git.url")
    assert git_url.returncode == 0, git_url.stderr
    assert "Repository URL" in " ".join(git_url.stdout.split())
    oci = explain(kubectl, "imagebuild.spec.source.oci.image")
    assert oci.returncode == 0 and "the registry host must be named" in " ".join(oci.stdout.split()), oci
    pinned = explain(kubectl, "imagebuild.status.source.oci.digest")
    assert pinned.returncode == 0 and "every worker pod unpacks" in " ".join(pinned.stdout.split()), pinned


def test_kubectl_explain_documents_the_status(kubectl: Kubectl) -> None:
    """Every field the operator writes per stage, plan group and failure is described (`kubectl explain`)."""
    out = explain(kubectl, "imagebuild.status.stages")
    if out.returncode != 0:
        pytest.skip(f"kubectl explain unsupported by this API server: {out.stderr.strip()[:200]}")
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith(" ") and line.split()}
    for field in ("name", "group", "phase", "attempts", "restarts", "admissionRejections", "rejections",
                  "pod", "node", "retryAt", "duration", "cachedSteps", "digest", "podUID", "key", "reused"):
        assert field in listed, (field, out.stdout)
    groups = explain(kubectl, "imagebuild.status.plan.groups.consumes")
    assert groups.returncode == 0 and "stage" in groups.stdout, groups.stderr
    line = explain(kubectl, "imagebuild.status.failure.line")
    assert line.returncode == 0 and "Dockerfile line" in " ".join(line.stdout.split()), line.stdout
    run = explain(kubectl, "imagebuild.status.run")
    assert run.returncode == 0 and "rebuild" in " ".join(run.stdout.split()), run.stdout
