"""The two cluster tiers the end-to-end suites run on, and what the real one needs around it.

"dev": the project's dev cluster (API emulator + host-process kubelet), fast and able to inject faults.
"real": `stagefleet.realcluster.RealCluster` — a real kube-apiserver, controller-manager, scheduler,
containerd and kubelets. On the real tier the operator runs as the chart installs it: the chart's
ServiceAccount, ClusterRole and binding are applied from `helm template`, the operator authenticates with
that ServiceAccount's token (so a missing or excess permission shows), and it gets the chart's worker
settings (the env and flags of the chart's Deployment). Worker pods run the builder image built by
`stagefleet.images`; they use the node's network only because the test registry listens on loopback.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from binaries import REPO, find_tool

TIERS = ("dev", "real")
CHART = REPO / "charts" / "stagefleet"
OPERATOR_NAMESPACE = "stagefleet-system"
RELEASE = "stagefleet"
# Build namespaces: rootless buildah needs Unconfined seccomp and SETUID/SETGID, i.e. Pod Security
# "privileged" (README, install section); a real API server enforces the label, the emulator ignores it.
BUILD_NAMESPACE_LABELS = {
    "pod-security.kubernetes.io/enforce": "privileged",
    "pod-security.kubernetes.io/warn": "privileged",
}
# Env entries of the chart's operator container that only make sense inside its pod.
POD_ONLY_ENV = ("HOME", "TMPDIR", "STAGEFLEET_OPERATOR_POD")


def real_tier_unavailable() -> str | None:
    """None when the real tier can start here, else the one-line reason it is skipped."""
    from stagefleet.realcluster import find_assets

    assets, why = find_assets()
    return None if assets is not None else why


def helm_template(*set_args: str, namespace: str = OPERATOR_NAMESPACE) -> list[dict[str, Any]]:
    """The chart rendered by the real helm (`helm template`), as a list of objects."""
    helm = find_tool("helm")
    assert helm is not None, "helm not found: set STAGEFLEET_HELM or run scripts/setup.sh"
    proc = subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", namespace, *set_args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def chart_operator(*set_args: str) -> tuple[dict[str, str], list[str]]:
    """The operator container's literal env (downward-API entries left out) and args from `helm template`."""
    (deploy,) = [d for d in helm_template(*set_args) if d["kind"] == "Deployment"]
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    return env, list(c["args"])


@dataclass
class ChartOperator:
    """How the real tier starts `stagefleet operator`: as the chart's ServiceAccount, with its settings."""

    kubeconfig: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


def chart_set_args(builder_image: str, registry: str) -> list[str]:
    """The only values the real tier sets, each for a reason of this machine: the builder image is in the
    test registry, which is plain HTTP and on loopback (hence insecure and hostNetwork)."""
    if "@" in builder_image:
        repo, digest = builder_image.split("@", 1)
        pin = f"worker.builderImage.digest={digest}"
    else:
        repo, tag = builder_image.rsplit(":", 1)
        pin = f"worker.builderImage.tag={tag}"
    return ["--set-string", f"worker.builderImage.repository={repo}", "--set-string", pin,
            "--set", "worker.hostNetwork=true", "--set-string", f"worker.insecureRegistries[0]={registry}"]


def install_chart_identity(kubectl: Sequence[str], env: dict[str, str], workdir: Path,
                           set_args: Sequence[str], server: str, ca_pem: bytes) -> ChartOperator:
    """Apply the chart's ServiceAccount and RBAC (not its Deployment: the operator runs as a test-controlled
    process) and return a kubeconfig with that ServiceAccount's token plus the chart's operator settings."""
    from stagefleet.realcluster import configs

    docs = helm_template(*set_args)
    keep = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                             "Role", "RoleBinding")]
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}

    def run(*args: str, input: str | None = None) -> str:
        proc = subprocess.run([*kubectl, *args], input=input, text=True, capture_output=True, env=env,
                              timeout=120, check=False)
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    run("apply", "-f", "-", input=yaml.safe_dump_all([ns, *keep]))
    (sa,) = [d["metadata"]["name"] for d in keep if d["kind"] == "ServiceAccount"]
    token = run("create", "token", sa, "-n", OPERATOR_NAMESPACE, "--duration=24h").strip()
    kc = workdir / "operator.kubeconfig"
    kc.write_text(yaml.safe_dump(configs.token_kubeconfig(
        server, ca_pem, f"system:serviceaccount:{OPERATOR_NAMESPACE}:{sa}", token)))
    chart_env, chart_args = chart_operator(*set_args)
    op_env = {k: v for k, v in chart_env.items() if k not in POD_ONLY_ENV}
    op_env["STAGEFLEET_OPERATOR_NAMESPACE"] = OPERATOR_NAMESPACE
    op_args = [a for a in chart_args if a.startswith(("--builder-image=", "--log-format="))]
    return ChartOperator(kc, op_env, op_args)


def kube_env(kubeconfig: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home),
            "KUBECACHEDIR": str(home / "kube-cache")}
