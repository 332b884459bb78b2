"""The CRD refuses bad specs at apply time, naming the field; `kubectl explain` documents the fields."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from .conftest import Kubectl

pytestmark = [pytest.mark.cluster]

GOOD: dict[str, Any] = {
    "apiVersion": "stagefleet.io/v1alpha1",
    "kind": "ImageBuild",
    "metadata": {"name": "check"},
    "spec": {"source": {"inline": {"dockerfile": "FROM busybox\n"}}, "output": {"image": "r.example/a/b:1"}},
}


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


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        (
            _with("source.git", {"url": "https://example.com/r.git"}),
            ("spec.source", "exactly one of spec.source.git and spec.source.inline"),
        ),
        (_with("source.inline", None), ("spec.source", "exactly one of")),
        (_with("cache.mode", "all"), ("spec.cache.mode", "Unsupported value")),
        (_with("cache", {"disabled": True, "repository": "r.example/c"}), ("spec.cache.repository",)),
        (_with("retries", 11), ("spec.retries",)),
        (_with("maxParallelPods", 0), ("spec.maxParallelPods",)),
        (_with("timeout", "soon"), ("spec.timeout",)),
        (_with("output.tags", ["ok", "not a tag"]), ("spec.output.tags[1]",)),
        (_with("output.image", "UPPER/case"), ("spec.output.image",)),
        (_with("output", None), ("spec.output", "Required")),
        (
            _with("secrets", [{"id": "a", "secretRef": {"name": "s"}}]),
            ("spec.secrets[0].secretRef.key", "Required"),
        ),
    ],
    ids=[
        "git-and-inline",
        "no-source",
        "cache-mode",
        "cache-disabled-with-repo",
        "retries",
        "parallel",
        "timeout",
        "tag",
        "image",
        "no-output",
        "secret-key",
    ],
)
def test_bad_specs_are_refused_at_apply_naming_the_field(
    kubectl: Kubectl, doc: dict[str, Any], needles: tuple[str, ...]
) -> None:
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


def test_kubectl_explain_documents_the_spec(kubectl: Kubectl) -> None:
    out = kubectl.run("explain", "imagebuild.spec.source", check=False)
    if out.returncode != 0:
        pytest.skip(f"kubectl explain unsupported by this API server: {out.stderr.strip()[:200]}")
    text = " ".join(out.stdout.split())
    assert "exactly one of git and inline" in text
    assert "Repository URL" in " ".join(
        kubectl.run("explain", "imagebuild.spec.source.git.url").stdout.split()
    )
