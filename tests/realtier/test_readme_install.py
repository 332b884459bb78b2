"""The README's "Install into a real cluster" block, run as written on a real cluster of its own.

The block's lines run unchanged in bash. What this machine needs beyond them is added around them, each for
a reason of this machine, never by editing a line:

* REGISTRY and TAG, which the block asks the reader to set: the session's loopback registry, holding the
  project's operator and builder images (stagefleet.images) under that tag.
* `helm` is a shell function that appends `--set` values: the registry is plain HTTP
  (`worker.insecureRegistries`) and listens on the node's loopback, so the operator and worker pods use the
  node's network (`operator.hostNetwork`, `worker.hostNetwork`; the tier forwards the `kubernetes` Service
  address to the API server), on free metrics/health ports.
* `kubectl apply` gets the seed with its `BASE` image pointed at the registry's busybox: nothing can be
  pulled from Docker Hub here.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from binaries import REPO, find_tool
from e2e.oci import blobs_containing, image_files
from e2e.test_git import sshd_repo  # noqa: F401 - the fixture, for the git-over-ssh build below
from stagefleet.localregistry import LocalRegistry, free_port
from stagefleet.realcluster import RealCluster
from tiers import real_tier_unavailable

pytestmark = pytest.mark.xdist_group("realtier")
SECTION = "## Install into a real cluster"
SEED_BASE = "docker.io/library/busybox:1.36"


def install_block() -> list[str]:
    """The lines of the first ```sh block under the README's install section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION):]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m, "no sh block in the install section"
    return m.group(1).splitlines()


def tag(registry: str, pinned: str, tag_name: str) -> str:
    """Give the image ``pinned`` (HOST/REPO@DIGEST) the tag ``tag_name`` in its registry; HOST/REPO back."""
    repo_ref, digest = pinned.split("@", 1)
    repo = repo_ref.split("/", 1)[1]
    accept = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json"])
    url = f"http://{registry}/v2/{repo}/manifests"
    req = urllib.request.Request(f"{url}/{digest}", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body, media = resp.read(), resp.headers["Content-Type"]
    put = urllib.request.Request(f"{url}/{tag_name}", data=body, method="PUT",
                                 headers={"Content-Type": media})
    with urllib.request.urlopen(put, timeout=30) as resp:
        assert resp.status == 201
    return repo_ref


@pytest.fixture
def own_cluster(tmp_path: Path, registry: LocalRegistry, pause_image: str) -> Iterator[RealCluster]:
    """A real cluster for this test alone: the README installs a cluster-wide operator, which must not
    meet the other tests' operators."""
    why = real_tier_unavailable()
    if why:
        pytest.skip(f"real tier: {why}")
    rc = RealCluster(tmp_path / "rt", pause_image=pause_image, registries=[registry.host], nodes=2)
    rc.start()
    yield rc
    rc.stop()


def test_readme_install_section_runs_as_written(own_cluster: RealCluster, registry: LocalRegistry,
                                                base_image: str, tier_images: Any, tmp_path: Path,
                                                sshd_repo: tuple[str, Path, str, str]) -> None:  # noqa: F811
    """Then, through the operator the block installed (its image, the chart's ServiceAccount and RBAC),
    a build with a secret and a private git-over-ssh build, and the secret canary looked for everywhere."""
    from stagefleet.images import ensure_images

    images = ensure_images(registry.host)
    tag_name = "readme"
    operator_repo = tag(registry.host, images.operator, tag_name)
    builder_repo = tag(registry.host, images.builder, tag_name)
    prefix = f"{registry.host}/stagefleet"
    assert operator_repo == f"{prefix}/operator" and builder_repo == f"{prefix}/builder"
    block = install_block()
    assert block[0].startswith("REGISTRY=") and block[1].startswith("TAG=")
    helm, kubectl = find_tool("helm"), find_tool("kubectl")
    assert helm and kubectl
    extra = ["--set", "operator.hostNetwork=true", "--set", "worker.hostNetwork=true",
             "--set-string", f"worker.insecureRegistries[0]={registry.host}",
             "--set", f"operator.metricsPort={free_port()}", "--set", f"operator.healthPort={free_port()}",
             "--set", "operator.logFormat=text",
             "--set", "operator.keepSucceededPodsSeconds=3600"]  # the workers' logs are searched below
    prologue = [
        "set -euo pipefail",
        f"helm() {{ {helm} \"$@\" {' '.join(repr(a) for a in extra)}; }}",
        # the seed's Docker Hub base image is unreachable here: apply gets the registry's busybox instead
        f"kubectl() {{ if [ \"${{1:-}}\" = apply ]; then sed 's|{SEED_BASE}|{base_image}|g' |"
        f" {kubectl} \"$@\"; else {kubectl} \"$@\"; fi; }}",
    ]
    # The block's own REGISTRY/TAG lines stay; the values this machine needs are set right after them.
    script = "\n".join([*prologue, block[0], block[1], f"REGISTRY={prefix}", f"TAG={tag_name}", *block[2:]])
    (tmp_path / "install.sh").write_text(script + "\n")
    env = {**os.environ, "KUBECONFIG": str(own_cluster.kubeconfig), "HOME": str(tmp_path),
           "HELM_CACHE_HOME": str(tmp_path / "helm-cache"), "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
           "HELM_DATA_HOME": str(tmp_path / "helm-data"), "KUBECACHEDIR": str(tmp_path / "kube-cache")}
    proc = subprocess.run(["bash", str(tmp_path / "install.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900, check=False)

    def k(*args: str, input: str | None = None) -> str:
        return subprocess.run([kubectl, *args], env=env, capture_output=True, text=True, timeout=60,
                              check=False, input=input).stdout

    assert proc.returncode == 0, (
        f"{proc.stdout}\n{proc.stderr}\n--- operator ---\n"
        + k("logs", "-n", "stagefleet-system", "-l", "app.kubernetes.io/name=stagefleet", "--tail=80")
        + "\n--- ib ---\n" + k("get", "ib", "-n", "builds", "-o", "yaml")
    )
    assert re.search(r"seed\s+Succeeded", proc.stdout), proc.stdout
    ib = json.loads(k("get", "ib", "seed", "-n", "builds", "-o", "json"))
    image = ib["status"]["image"]
    assert image["name"].startswith(f"{prefix}/seed"), image
    # the operator ran from its image as the chart runs it; every worker from the builder image
    (op_pod,) = json.loads(k("get", "pods", "-n", "stagefleet-system", "-o", "json"))["items"]
    assert op_pod["spec"]["containers"][0]["image"] == f"{operator_repo}:{tag_name}"
    assert op_pod["spec"]["securityContext"]["runAsUser"] == 65532
    workers = json.loads(k("get", "pods", "-n", "builds", "-o", "json"))["items"]
    assert workers
    assert {p["spec"]["containers"][0]["image"] for p in workers} == {f"{builder_repo}:{tag_name}"}
    assert {p["status"]["phase"] for p in workers} == {"Succeeded"}
    req = urllib.request.Request(
        f"http://{registry.host}/v2/stagefleet/seed/manifests/latest", method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                           "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Docker-Content-Digest"] == image["digest"]

    secret_and_ssh_builds(k, registry, prefix, base_image, sshd_repo)


SECRET_DOCKERFILE = """ARG BASE
FROM ${BASE} AS withsecret
RUN --mount=type=secret,id=token,required=true test "$(wc -c < /run/secrets/token)" -gt 0 && echo used > /used
FROM ${BASE} AS plain
RUN echo plain > /plain
FROM ${BASE} AS final
COPY --from=withsecret /used /used
COPY --from=plain /plain /plain
"""


def secret_and_ssh_builds(k: Callable[..., str], registry: LocalRegistry, prefix: str, base_image: str,
                          ssh: tuple[str, Path, str, str]) -> None:
    """The secrets example's shape (a secret mounted by one stage, a sibling stage without it) and the
    private-git-ssh example's (deploy key and known_hosts from a Secret), built by the in-cluster operator
    in namespace `builds`; then the canary is in no registry blob, pod log, event or status."""
    canary = f"canary-{uuid.uuid4().hex}"
    url, key, commit, known_hosts = ssh

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "build-token"},
         "data": {"token": b64(canary)}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "deploy-key"},
         "type": "kubernetes.io/ssh-auth",
         "data": {"ssh-privatekey": b64(key.read_text()), "known_hosts": b64(known_hosts)}},
        {"apiVersion": "stagefleet.io/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "secrets"},
         "spec": {"source": {"inline": {"dockerfile": SECRET_DOCKERFILE}}, "buildArgs": {"BASE": base_image},
                  "secrets": [{"id": "token", "secretRef": {"name": "build-token", "key": "token"}}],
                  "output": {"image": f"{prefix}/secrets:1"}}},
        {"apiVersion": "stagefleet.io/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "private"},
         "spec": {"source": {"git": {"url": url, "revision": "main", "secretRef": {"name": "deploy-key"}},
                             "contextDir": "app"},
                  "buildArgs": {"BASE": base_image}, "output": {"image": f"{prefix}/private:1"}}},
    ]
    applied = k("apply", "-n", "builds", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    assert "imagebuild.stagefleet.io/private" in applied, applied
    obs: dict[str, Any] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        obs = {n: json.loads(k("get", "ib", n, "-n", "builds", "-o", "json")).get("status") or {}
               for n in ("secrets", "private")}
        if all(o.get("phase") in ("Succeeded", "Failed", "Cancelled") for o in obs.values()):
            break
        time.sleep(2)
    assert {n: o.get("phase") for n, o in obs.items()} == {"secrets": "Succeeded", "private": "Succeeded"}, (
        json.dumps(obs, indent=1)[-4000:]
        + k("logs", "-n", "stagefleet-system", "-l", "app.kubernetes.io/name=stagefleet", "--tail=60"))
    host = registry.host
    secret_files = image_files(host, "stagefleet/secrets", obs["secrets"]["image"]["digest"])
    assert secret_files["/used"] == b"used\n" and secret_files["/plain"] == b"plain\n"
    assert obs["private"]["source"]["git"]["commit"] == commit
    private_files = image_files(host, "stagefleet/private", obs["private"]["image"]["digest"])
    assert private_files["/hello.txt"] == b"hello over ssh\n"

    # The canary and the deploy key: in no blob, no pod's log (workers and the operator), no event, no status.
    key_line = key.read_text().strip().splitlines()[1]
    assert blobs_containing(registry.data_dir, canary.encode()) == []
    pods = json.loads(k("get", "pods", "-A", "-o", "json"))["items"]
    logs = [k("logs", "-n", p["metadata"]["namespace"], p["metadata"]["name"], "--all-containers")
            for p in pods if p["metadata"]["namespace"] in ("builds", "stagefleet-system")]
    assert len(logs) >= 7 and any("withsecret" in log for log in logs)  # the 6 workers and the operator
    evidence = "\n".join([*logs, k("get", "events", "-A", "-o", "json"),
                          k("get", "ib", "-n", "builds", "-o", "json")])
    assert canary not in evidence and key_line not in evidence
