"""The real helm (v4) on both tiers: template with validation, install, upgrade, uninstall."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CHART_YAML = "apiVersion: v2\nname: tiny\nversion: 0.1.0\n"
CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  greeting: {{ .Values.greeting | default "hello" | quote }}
"""
CRD = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.helmtest.stagefleet.dev
spec:
  group: helmtest.stagefleet.dev
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"""


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    (root / "templates").mkdir(parents=True)
    (root / "Chart.yaml").write_text(CHART_YAML)
    (root / "templates" / "configmap.yaml").write_text(CONFIGMAP)
    (root / "templates" / "crd.yaml").write_text(CRD)
    return root


def greeting(kube: Any, release: str) -> str | None:
    proc = kube.kubectl("get", "configmap", f"{release}-config", "-o", "json", check=False)
    return json.loads(proc.stdout)["data"]["greeting"] if proc.returncode == 0 else None


def test_template_validates_against_the_server(kube: Any, chart: Path) -> None:
    out = kube.helm("template", "r0", str(chart), "--validate").stdout
    assert "name: r0-config" in out
    dry = kube.helm("install", "r0", str(chart), "--dry-run=server")
    assert "STATUS: pending-install" in dry.stdout
    assert greeting(kube, "r0") is None


def test_install_upgrade_uninstall(kube: Any, chart: Path) -> None:
    kube.helm("install", "r1", str(chart), "--set", "greeting=hi")
    assert greeting(kube, "r1") == "hi"
    kube.kubectl("get", "crd", "gadgets.helmtest.stagefleet.dev")
    releases = json.loads(kube.helm("list", "-o", "json").stdout)
    assert [(r["name"], r["status"], r["revision"]) for r in releases] == [("r1", "deployed", "1")]

    kube.helm("upgrade", "r1", str(chart), "--set", "greeting=bye")
    assert greeting(kube, "r1") == "bye"
    history = json.loads(kube.helm("history", "r1", "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2]

    kube.helm("uninstall", "r1", "--wait")
    assert greeting(kube, "r1") is None
    assert json.loads(kube.helm("list", "-o", "json").stdout) == []
    assert kube.kubectl("get", "crd", "gadgets.helmtest.stagefleet.dev", check=False).returncode != 0
