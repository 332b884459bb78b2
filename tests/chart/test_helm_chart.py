"""The Helm chart through the real helm binary and the Kubernetes 1.34 and 1.25 JSON schemas.

helm is found through STAGEFLEET_HELM or <repo>/.tools/bin/helm (scripts/setup.sh installs it); without it
these tests skip and say so.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from binaries import find_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "stagefleet"
RELEASE = "sf"
NAMESPACE = "stagefleet-system"
K8S_VERSION = "1.34.0"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion), and the oldest schemas that
# kubernetes-validate ships: 1.25, whose CRD ValidationRule has the same two fields as 1.24's (rule, message).
OLDEST_K8S = "1.24"
OLDEST_SCHEMAS = "1.25.0"


HELM = find_tool("helm")
needs_helm = pytest.mark.skipif(
    HELM is None,
    reason="helm not found: set STAGEFLEET_HELM or run scripts/setup.sh (installs .tools/bin/helm)",
)

# name -> helm --set arguments
SCENARIOS: dict[str, list[str]] = {
    "default": [],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}"],
    "servicemonitor": ["--set", "metrics.serviceMonitor.enabled=true",
                       "--set", "metrics.serviceMonitor.labels.release=prom"],
    "everything": [
        "--set", "watchNamespaces={builds}",
        "--set", "rbac.clusterDiscovery=true",
        "--set", "operator.peering=default",
        "--set", "argocd.healthCheck.enabled=true",
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "worker.storageDriver=overlay",
        "--set", "worker.fuse.enabled=true",
        "--set", "worker.insecureRegistries={registry.builds.svc:5000}",
        "--set", "image.digest=sha256:" + "a" * 64,
    ],
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, check=False)


def render_text(*set_args: str, crds: bool = False) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *set_args]
    if crds:
        args.append("--include-crds")
    proc = helm(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(*set_args: str, crds: bool = False) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(*set_args, crds=crds)) if d]


def by_kind(docs: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --------------------------------------------------------------------------------------------------------
# helm lint / template


@needs_helm
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_strict(scenario: str) -> None:
    proc = helm("lint", "--strict", str(CHART), *SCENARIOS[scenario])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@needs_helm
def test_default_render_has_expected_objects() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"])
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


# --------------------------------------------------------------------------------------------------------
# Kubernetes schemas (kubernetes-validate ships them; no network)


def k8s_validate(doc: Mapping[str, Any], version: str = K8S_VERSION) -> str:
    import kubernetes_validate

    return str(kubernetes_validate.validate(dict(doc), version, strict=True))


def check_service_monitor(doc: Mapping[str, Any]) -> None:
    """monitoring.coreos.com is not in the Kubernetes schemas: check the fields Prometheus Operator needs."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["selector"]["matchLabels"]
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout"}
        assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", ep["interval"])


@needs_helm
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_manifests_validate_against_kubernetes_schemas(scenario: str) -> None:
    docs = render(*SCENARIOS[scenario], crds=True)
    validated = []
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc)
            continue
        assert k8s_validate(doc) == "1.34", doc["kind"]
        validated.append(doc["kind"])
    assert "Deployment" in validated and "CustomResourceDefinition" in validated


@needs_helm
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_manifests_validate_against_the_oldest_schemas(scenario: str) -> None:
    """Nothing newer than the supported range: a 1.28 fieldPath in a CEL rule, say, fails here (strict)."""
    docs = [d for d in render(*SCENARIOS[scenario], crds=True) if d["kind"] != "ServiceMonitor"]
    assert [k8s_validate(d, OLDEST_SCHEMAS) for d in docs] == ["1.25"] * len(docs)


def test_validator_rejects_a_crd_rule_field_the_oldest_server_lacks() -> None:
    import kubernetes_validate

    crd = yaml.safe_load((REPO / "crds" / "imagebuild.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["x-kubernetes-validations"][0]["fieldPath"] = ".cache.repository"
    assert k8s_validate(crd) == "1.34"
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(crd, OLDEST_SCHEMAS)


def crd_rules(schema: Mapping[str, Any], path: str = "") -> list[tuple[str, Mapping[str, Any]]]:
    out = [(path, r) for r in schema.get("x-kubernetes-validations", [])]
    for key, sub in (schema.get("properties") or {}).items():
        out += crd_rules(sub, f"{path}.{key}")
    if "items" in schema:
        out += crd_rules(schema["items"], f"{path}[]")
    return out


def test_crd_rules_are_portable_to_the_oldest_supported_server() -> None:
    """Rules carry only rule and message (fieldPath, reason: 1.28; messageExpression: 1.27) and are not
    transition rules (no oldSelf); a rule on an object names the field it is about in its message."""
    crd = yaml.safe_load((REPO / "crds" / "imagebuild.yaml").read_text())
    rules = crd_rules(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert len(rules) >= 5
    for path, rule in rules:
        assert set(rule) == {"rule", "message"}, (path, rule)
        assert "oldSelf" not in rule["rule"], (path, rule)
    for path, rule in rules:
        if path == ".spec":
            assert re.match(r"^spec(\.[A-Za-z]+)+: ", rule["message"]), rule["message"]


def test_chart_supports_kubernetes_from_1_24() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_K8S}.0-0"
    for readme in (REPO / "README.md", CHART / "README.md"):
        assert f"Supported Kubernetes: {OLDEST_K8S} and newer" in readme.read_text(), readme


@needs_helm
def test_helm_renders_for_the_oldest_supported_kubernetes_only() -> None:
    ok = helm("template", RELEASE, str(CHART), "--kube-version", f"{OLDEST_K8S}.0")
    assert ok.returncode == 0, ok.stderr
    too_old = helm("template", RELEASE, str(CHART), "--kube-version", "1.23.17")
    assert too_old.returncode != 0 and "requires kubeVersion" in too_old.stderr, too_old.stderr


def test_validator_rejects_bad_manifests() -> None:
    """The schema check can fail: a wrong type and an unknown field (strict) are both refused."""
    import kubernetes_validate

    base = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}}
    assert k8s_validate(base) == "1.34"
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate({**base, "automountServiceAccountToken": "yes"})
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate({**base, "metadata": {"name": "x", "lables": {}}})


# --------------------------------------------------------------------------------------------------------
# Pod Security "restricted" (https://kubernetes.io/docs/concepts/security/pod-security-standards/), v1.34

RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(
    pod_spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> list[str]:
    """Every Pod Security Standards check of the baseline and restricted levels (latest), one message each."""
    out: list[str] = []
    psc = pod_spec.get("securityContext") or {}
    containers = [*pod_spec.get("initContainers", []), *pod_spec.get("containers", []),
                  *pod_spec.get("ephemeralContainers", [])]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            out.append(f"{field} is true")
    if psc.get("windowsOptions", {}).get("hostProcess"):
        out.append("hostProcess")
    for v in pod_spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {v['name']} of type {sorted(kinds)}")
    for sysctl in psc.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            out.append(f"unsafe sysctl {sysctl['name']}")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value not in (
                "runtime/default", "localhost/") and not value.startswith("localhost/"):
            out.append(f"apparmor annotation {key}={value}")
    if psc.get("appArmorProfile", {}).get("type", "RuntimeDefault") == "Unconfined":
        out.append("pod appArmorProfile Unconfined")
    pod_seccomp = psc.get("seccompProfile", {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("pod seccompProfile Unconfined")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    se = psc.get("seLinuxOptions") or {}
    if se.get("user") or se.get("role") or se.get("type") not in (None, "", "container_t", "container_init_t",
                                                                  "container_kvm_t", "container_engine_t"):
        out.append("pod seLinuxOptions")
    for c in containers:
        name = c["name"]
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {sorted(set(caps['add']) - {'NET_BIND_SERVICE'})}")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount {sc['procMount']}")
        seccomp = sc.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        if sc.get("appArmorProfile", {}).get("type", "RuntimeDefault") == "Unconfined":
            out.append(f"{name}: appArmorProfile Unconfined")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        for p in c.get("ports", []):
            if p.get("hostPort"):
                out.append(f"{name}: hostPort {p['hostPort']}")
        if sc.get("windowsOptions", {}).get("hostProcess"):
            out.append(f"{name}: hostProcess")
    return out


@needs_helm
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_operator_pod_is_restricted(scenario: str) -> None:
    dep = one(render(*SCENARIOS[scenario]), "Deployment")
    template = dep["spec"]["template"]
    assert restricted_violations(template["spec"], template["metadata"].get("annotations")) == []


@needs_helm
def test_operator_pod_security_field_by_field() -> None:
    dep = one(render(), "Deployment")
    spec = dep["spec"]["template"]["spec"]
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] != 0 and psc["runAsGroup"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    # A read-only root needs a writable /tmp, and only that.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    # Probes hit the health port (/healthz, answered by the operator's event loop) by name, not /metrics.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert "--health-port=8081" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "health"
        assert container[probe]["httpGet"]["path"] == "/healthz"


def test_restricted_checker_flags_violations() -> None:
    """The checker is not vacuous: each classic violation is reported."""
    ok = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
          "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                           "capabilities": {"drop": ["ALL"]}}}]}
    assert restricted_violations(ok) == []
    bad = json.loads(json.dumps(ok))
    bad["hostNetwork"] = True
    bad["volumes"] = [{"name": "h", "hostPath": {"path": "/"}}]
    bad["containers"][0]["securityContext"] = {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}
    found = restricted_violations(bad)
    for expected in ("hostNetwork", "volume h", "privileged", "allowPrivilegeEscalation", "drop ALL",
                     "SYS_ADMIN"):
        assert any(expected in v for v in found), expected
    no_seccomp = json.loads(json.dumps(ok))
    del no_seccomp["securityContext"]["seccompProfile"]
    assert restricted_violations(no_seccomp) == ["c: seccompProfile None"]


@needs_helm
def test_worker_security_context_is_passed_and_documented_as_privileged_level() -> None:
    """Worker pods need Unconfined seccomp/AppArmor for rootless buildah: not restricted, never privileged."""
    dep = one(render(), "Deployment")
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    values = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]
    pod_sc = json.loads(env["STAGEFLEET_WORKER_POD_SECURITY_CONTEXT"])
    sc = json.loads(env["STAGEFLEET_WORKER_SECURITY_CONTEXT"])
    assert pod_sc == values["podSecurityContext"] and sc == values["securityContext"]
    assert json.loads(env["STAGEFLEET_WORKER_RESOURCES"]) == values["resources"]
    assert pod_sc["runAsUser"] == 1000 and pod_sc["runAsNonRoot"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"SETUID", "SETGID"}
    worker_pod = {"securityContext": pod_sc, "containers": [{"name": "worker", "securityContext": sc}]}
    found = restricted_violations(worker_pod)
    assert "pod seccompProfile Unconfined" in found and "pod appArmorProfile Unconfined" in found
    assert not any("privileged" in v or "hostPath" in v for v in found)
    # The contexts are valid Kubernetes 1.34 objects as the operator will paste them into a worker Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w"},
           "spec": {"securityContext": pod_sc, "restartPolicy": "Never",
                    "containers": [{"name": "worker", "image": env["STAGEFLEET_BUILDER_IMAGE"],
                                    "securityContext": sc,
                                    "resources": json.loads(env["STAGEFLEET_WORKER_RESOURCES"])}]}}
    assert k8s_validate(pod) == "1.34"
    assert env["STAGEFLEET_BUILDER_IMAGE"] == "ghcr.io/stagefleet/builder:0.1.0"
    assert env["STAGEFLEET_WORKER_STORAGE_DRIVER"] == ""  # the worker picks the fastest that works
    assert env["STAGEFLEET_WORKER_FUSE_RESOURCE"] == ""


@needs_helm
def test_worker_overrides_reach_the_operator() -> None:
    docs = render(*SCENARIOS["everything"])
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["STAGEFLEET_WORKER_STORAGE_DRIVER"] == "overlay"
    assert env["STAGEFLEET_WORKER_FUSE_RESOURCE"] == "github.com/fuse"
    assert "--insecure-registry=registry.builds.svc:5000" in container["args"]
    assert "--peering=default" in container["args"]
    assert "--no-early-start" not in container["args"]  # the default: early start on
    off = one(render("--set", "operator.earlyStart=false"), "Deployment")
    assert "--no-early-start" in off["spec"]["template"]["spec"]["containers"][0]["args"]
    assert container["image"] == "ghcr.io/stagefleet/stagefleet@sha256:" + "a" * 64


# --------------------------------------------------------------------------------------------------------
# operator arguments


@needs_helm
def test_operator_args_all_namespaces() -> None:
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["stagefleet"]
    assert container["args"] == [
        "operator", "--all-namespaces", "--metrics-port=8080", "--health-port=8081", "--log-format=json",
        "--concurrency=8",
        "--builder-image=ghcr.io/stagefleet/builder:0.1.0", "--node-lost-after=60",
        "--default-ttl-after-finished=0", "--keep-failed-seconds=3600", "--keep-succeeded-pods-seconds=0",
        "--source-timeout=60", "--source-resolutions=64", "--source-resolutions-per-namespace=8",
        "--max-worker-pods=0", "--plans-per-process=200", "--memory-sweep-seconds=300"]


@needs_helm
def test_operator_args_namespaced() -> None:
    docs = render(*SCENARIOS["namespaced"], "--set", "operator.metricsPort=9090")
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:4] == [
        "operator", "--namespace=team-a", "--namespace=team-b", "--metrics-port=9090"]
    assert "--all-namespaces" not in container["args"]
    assert container["ports"][0]["containerPort"] == 9090


# --------------------------------------------------------------------------------------------------------
# RBAC


def rules_by_resource(rules: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault(f"{group}/{resource}" if group else resource, set()).update(rule["verbs"])
    return out


# Exactly what the operator's code calls (controller/kube.py, controller/handlers.py, kopf 1.45 with
# annotation storage and posting off) -- nothing more.
NAMESPACED_RULES = {
    "stagefleet.io/imagebuilds": {"get", "list", "watch", "create", "patch", "delete"},
    "stagefleet.io/imagebuilds/status": {"patch"},
    "stagefleet.io/imagebuilds/finalizers": {"update"},
    "pods": {"create", "delete", "list", "watch"},
    "secrets": {"get"},
    "configmaps": {"create", "deletecollection"},
    "events": {"create", "patch"},
}
CLUSTER_EXTRA = {
    "apiextensions.k8s.io/customresourcedefinitions": {"list", "watch"},
    "namespaces": {"list", "watch"},
}
# controller/nodewatch.py: one list+watch of the Nodes' readiness (rbac.nodes, on by default).
NODE_RULES = {"nodes": {"list", "watch"}}


def assert_no_wildcards(rules: Iterable[Mapping[str, Any]]) -> None:
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert all("*" not in item for item in rule[key]), rule
        assert "resourceNames" not in rule or rule["resourceNames"]
        assert "nonResourceURLs" not in rule


@needs_helm
def test_rbac_cluster_wide() -> None:
    docs = render()
    role = one(docs, "ClusterRole")
    assert_no_wildcards(role["rules"])
    assert rules_by_resource(role["rules"]) == {**NAMESPACED_RULES, **CLUSTER_EXTRA, **NODE_RULES}
    without = one(render("--set", "rbac.nodes=false"), "ClusterRole")
    assert rules_by_resource(without["rules"]) == {**NAMESPACED_RULES, **CLUSTER_EXTRA}
    assert by_kind(docs, "Role") == [] and by_kind(docs, "RoleBinding") == []
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    pod_sa = one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert pod_sa == sa["metadata"]["name"]


@needs_helm
def test_rbac_never_writes_secrets_or_escalates() -> None:
    for scenario in SCENARIOS.values():
        docs = render(*scenario)
        for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            rules = rules_by_resource(role["rules"])
            assert rules.get("secrets", set()) <= {"get"}
            assert rules.get("nodes", set()) <= {"list", "watch"}
            for resource in rules:
                assert not resource.startswith("rbac.authorization.k8s.io/"), resource
                assert resource not in (
                    "pods/exec", "pods/attach", "nodes/proxy", "nodes/status", "serviceaccounts/token")
            assert not {"escalate", "bind", "impersonate"} & set().union(*rules.values())


@needs_helm
def test_rbac_namespaced_mode() -> None:
    docs = render(*SCENARIOS["namespaced"])
    # The one cluster-scoped grant: read-only nodes, in a ClusterRole of its own.
    nodes, binding = one(docs, "ClusterRole"), one(docs, "ClusterRoleBinding")
    assert nodes["metadata"]["name"].endswith("-nodes") and rules_by_resource(nodes["rules"]) == NODE_RULES
    assert binding["roleRef"]["name"] == nodes["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    off = render(*SCENARIOS["namespaced"], "--set", "rbac.nodes=false")
    assert by_kind(off, "ClusterRole") == [] and by_kind(off, "ClusterRoleBinding") == []
    roles = by_kind(docs, "Role")
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert_no_wildcards(role["rules"])
        assert rules_by_resource(role["rules"]) == NAMESPACED_RULES
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"][0]["namespace"] == NAMESPACE


@needs_helm
def test_rbac_namespaced_discovery_and_peering() -> None:
    docs = render(*SCENARIOS["everything"])
    (role,) = by_kind(docs, "Role")
    assert rules_by_resource(role["rules"]) == {
        **NAMESPACED_RULES, "kopf.dev/kopfpeerings": {"get", "list", "watch", "patch"}}
    (discovery,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-discovery")]
    assert rules_by_resource(discovery["rules"]) == CLUSTER_EXTRA
    cluster = one(render("--set", "operator.peering=default"), "ClusterRole")
    peering = rules_by_resource(cluster["rules"])["kopf.dev/clusterkopfpeerings"]
    assert peering == {"get", "list", "watch", "patch"}


@needs_helm
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_rbac_rule_has_a_justifying_comment(scenario: str) -> None:
    text = render_text(*SCENARIOS[scenario])
    rules_seen = 0
    for doc in text.split("\n---"):
        if not re.search(r"^kind: (Cluster)?Role$", doc, re.M):
            continue
        lines = doc.splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                rules_seen += 1
                assert lines[i - 1].strip().startswith("#"), f"rule without a comment: {line!r}"
    assert rules_seen >= len(NAMESPACED_RULES) - 1


# --------------------------------------------------------------------------------------------------------
# metrics


@needs_helm
def test_metrics_service_and_servicemonitor() -> None:
    docs = render(*SCENARIOS["servicemonitor"])
    svc = one(docs, "Service")
    dep = one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert by_kind(render(), "ServiceMonitor") == []


# --------------------------------------------------------------------------------------------------------
# values.schema.json


BAD_VALUES = [
    (["--set", "watchNamespace={a}"], "watchNamespace"),
    (["--set", "watchNamespaces={Not_A_Namespace}"], "/watchNamespaces/0"),
    (["--set", "operator.metricsPort=80"], "/operator/metricsPort"),
    (["--set", "operator.healthPort=80"], "/operator/healthPort"),
    (["--set", "operator.peering=Not_A_Name"], "/operator/peering"),
    (["--set", "operator.concurrency=0"], "/operator/concurrency"),
    (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["--set", "image.digest=latest"], "/image/digest"),
    (["--set", "worker.storageDriver=btrfs"], "/worker/storageDriver"),
    (["--set", "worker.resources.limits.memory=lots"], "/worker/resources/limits/memory"),
    (["--set", "worker.podSecurityContext.runAsUser=-1"], "/worker/podSecurityContext/runAsUser"),
    (["--set", "metrics.serviceMonitor.interval=often"], "/metrics/serviceMonitor/interval"),
    (["--set", "rbac.create=maybe"], "/rbac/create"),
    (["--set", "argocd.healthCheck.configMap=x"], "configMap"),
]


@needs_helm
@pytest.mark.parametrize(("args", "field"), BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_field(args: list[str], field: str) -> None:
    proc = helm("template", RELEASE, str(CHART), *args)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert field in proc.stderr, proc.stderr


@needs_helm
def test_servicemonitor_without_service_fails() -> None:
    proc = helm("template", RELEASE, str(CHART), "--set", "metrics.serviceMonitor.enabled=true",
                "--set", "metrics.service.enabled=false")
    assert proc.returncode != 0
    assert "metrics.service.enabled" in proc.stderr


def _walk_schema(schema: Mapping[str, Any], path: str = "") -> Iterable[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk_schema(sub, f"{path}.{key}")


def test_schema_covers_every_value_and_closes_objects() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)

    def walk(value: Any, sch: Mapping[str, Any], path: str) -> None:
        assert sch, f"{path} has no schema"
        if isinstance(value, dict) and "properties" in sch:
            for key, sub in value.items():
                assert key in sch["properties"], f"{path}.{key} is not in values.schema.json"
                walk(sub, sch["properties"][key], f"{path}.{key}")

    walk(values, schema, "")
    for path, sub in _walk_schema(schema):
        if "properties" in sub:
            assert sub.get("additionalProperties") is False, f"{path or '<root>'} is open"


# --------------------------------------------------------------------------------------------------------
# CRD and Argo CD copies


def test_chart_crd_is_byte_identical_to_repo_crd() -> None:
    source = REPO / "crds" / "imagebuild.yaml"
    copy = CHART / "crds" / "imagebuild.yaml"
    assert source.is_file(), "crds/imagebuild.yaml is missing"
    assert copy.is_file(), "charts/stagefleet/crds/imagebuild.yaml is missing: cp crds/imagebuild.yaml it"
    assert copy.read_bytes() == source.read_bytes(), (
        "charts/stagefleet/crds/imagebuild.yaml differs from crds/imagebuild.yaml: "
        "cp crds/imagebuild.yaml charts/stagefleet/crds/imagebuild.yaml"
    )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["imagebuild.yaml"]


@needs_helm
def test_crd_is_rendered_only_with_include_crds() -> None:
    assert by_kind(render(), "CustomResourceDefinition") == []
    crd = one(render(crds=True), "CustomResourceDefinition")
    assert crd == yaml.safe_load((REPO / "crds" / "imagebuild.yaml").read_text())


@needs_helm
def test_argocd_health_configmap_carries_the_lua() -> None:
    docs = render("--set", "argocd.healthCheck.enabled=true")
    cm = one(docs, "ConfigMap")
    lua = (REPO / "gitops" / "argocd-health.lua").read_text()
    assert cm["data"] == {"resource.customizations.health.stagefleet.io_ImageBuild": lua}
    assert by_kind(render(), "ConfigMap") == []
    assert all(c["metadata"]["name"] != "argocd-cm" for c in by_kind(docs, "ConfigMap"))


def test_chart_readme_documents_crd_upgrade() -> None:
    readme = (CHART / "README.md").read_text()
    assert "kubectl apply --server-side" in readme and "crds/imagebuild.yaml" in readme
    assert "never" in readme.lower()


@needs_helm
def test_notes_render() -> None:
    proc = helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                "--set", "argocd.healthCheck.enabled=true", "--set", "watchNamespaces={builds}")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "namespaced mode" in notes and "builds" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    assert "argocd-cm" in notes
