"""`stagefleet status` and `stagefleet logs` against an API server (the emulator; no kubelet needed).

The test plays the operator and the kubelet: it writes an ImageBuild with a status, stage pods with the
labels the operator sets, and the pods' log files where the kubelet would write them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
NS = "default"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


@dataclass
class Cluster:
    kubeconfig: Path
    logs_dir: Path
    api: Any


def without_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [without_cel(v) for v in node]
    return node


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    from kubernetes import client, config

    from stagefleet.devcluster.apiserver import APIServer, write_kubeconfig

    logs_dir = tmp_path / "pod-logs"
    logs_dir.mkdir()
    server = APIServer(logs_dir=logs_dir)
    url = server.start_in_thread()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
        api = config.new_client_from_config(config_file=str(kubeconfig))
        # CEL rules are the CRD tests' business; here they would only couple these tests to the emulator's CEL
        crd = without_cel(yaml.safe_load((REPO / "crds" / "imagebuild.yaml").read_text()))
        client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
        yield Cluster(kubeconfig, logs_dir, api)
    finally:
        server.stop_in_thread()


def stage(name: str, group: str, phase: str, pod: str | None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "group": group, "phase": phase, "pod": pod, **kw}


def make_build(c: Cluster, phase: str) -> None:
    from kubernetes import client

    custom = client.CustomObjectsApi(c.api)
    body = yaml.safe_load((REPO / "examples" / "seed" / "imagebuild.yaml").read_text())
    custom.create_namespaced_custom_object("stagefleet.io", "v1alpha1", NS, "imagebuilds", body)
    status = {
        "phase": phase,
        "stages": [
            stage("build1", "g1", "Succeeded", "seed-g1", node="node-1", duration=3.2, digest=D1,
                  cachedSteps=0, attempts=1, startTime="2026-11-27T22:00:00Z",
                  completionTime="2026-11-27T22:00:03Z"),
            stage("build2", "g2", "Succeeded", "seed-g2", node="node-2", duration=3.4, digest=D2,
                  cachedSteps=1, attempts=2, startTime="2026-11-27T22:00:00Z",
                  completionTime="2026-11-27T22:00:04Z"),
            stage("final", "g3", "Succeeded", "seed-g3", node="node-1", duration=1.0, digest=D3,
                  cachedSteps=0, attempts=1, startTime="2026-11-27T22:00:04Z",
                  completionTime="2026-11-27T22:00:05Z"),
        ],
        "image": {"name": "127.0.0.1:5000/stagefleet/seed:latest", "digest": D3},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "built"}],
    }
    custom.patch_namespaced_custom_object_status("stagefleet.io", "v1alpha1", NS, "imagebuilds", "seed",
                                                 {"status": status})


def set_pod_state(c: Cluster, name: str, *, running: bool) -> None:
    """What the kubelet reports: a running container, or one that terminated (the log is complete)."""
    from kubernetes import client

    state = {"running": {"startedAt": "2026-11-27T22:00:00Z"}} if running else {
        "terminated": {"exitCode": 0, "reason": "Completed"}}
    cs = {"name": "worker", "image": "x", "imageID": "", "ready": running, "restartCount": 0, "state": state}
    client.CoreV1Api(c.api).patch_namespaced_pod_status(name, NS, {"status": {
        "phase": "Running" if running else "Succeeded", "containerStatuses": [cs]}})


def append_log(c: Cluster, name: str, lines: list[str], mtime: float | None = None) -> None:
    log = c.logs_dir / NS / name / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write("".join(f"{ln}\n" for ln in lines))
    if mtime is not None:
        os.utime(log, (mtime, mtime))


def make_pod(c: Cluster, name: str, group: str, lines: list[str], mtime: float | None, *,
             running: bool = False, run: int = 1) -> None:
    """A worker pod of the seed ImageBuild's run ``run``, labelled as the operator labels it."""
    from kubernetes import client

    core = client.CoreV1Api(c.api)
    uid = client.CustomObjectsApi(c.api).get_namespaced_custom_object(
        "stagefleet.io", "v1alpha1", NS, "imagebuilds", "seed")["metadata"]["uid"]
    labels = {"stagefleet.io/imagebuild": "seed", "stagefleet.io/group": group,
              "stagefleet.io/imagebuild-uid": uid, "stagefleet.io/generation": str(run)}
    container = {"name": "worker", "image": "x", "command": ["true"]}
    core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": name, "labels": labels},
                                    "spec": {"restartPolicy": "Never", "containers": [container]}})
    set_pod_state(c, name, running=running)
    append_log(c, name, lines, mtime)


def stagefleet(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stagefleet.cli", *args, "--kubeconfig", str(c.kubeconfig)],
                          capture_output=True, text=True, timeout=120)


def test_status_table(cluster: Cluster) -> None:
    make_build(cluster, "Succeeded")
    proc = stagefleet(cluster, "status", "seed")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("imagebuild default/seed: Succeeded  stages 3/3  image 127.0.0.1:5000/")
    assert lines[0].endswith(D3)
    assert lines[1].split()[:3] == ["STAGE", "GROUP", "PHASE"]
    assert lines[2].split() == ["build1", "g1", "Succeeded", "seed-g1", "node-1", "3.2s", "0", "1",
                                "sha256:111111111111"]
    assert lines[3].split()[6:8] == ["1", "2"]  # cached steps, attempts of build2
    assert lines[-1] == "Ready=True (Succeeded): built"


def test_status_of_a_missing_imagebuild(cluster: Cluster) -> None:
    proc = stagefleet(cluster, "status", "nope")
    assert proc.returncode == 1
    assert 'imagebuild "nope" not found' in proc.stderr


def test_status_watch_follows_the_build_until_it_ends(cluster: Cluster) -> None:
    """`status -w` prints the table again on every change (no terminal: plain text) and ends with the build:
    0 when it succeeded. A terminal phase with a rebuild request not answered yet is not the end."""
    from kubernetes import client

    make_build(cluster, "Building")
    custom = client.CustomObjectsApi(cluster.api)

    def set_status(**status: Any) -> None:
        custom.patch_namespaced_custom_object_status("stagefleet.io", "v1alpha1", NS, "imagebuilds", "seed",
                                                     {"status": status})

    set_status(observedGeneration=1, run=1)
    proc = subprocess.Popen([sys.executable, "-m", "stagefleet.cli", "status", "seed", "-w",
                             "--kubeconfig", str(cluster.kubeconfig)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("imagebuild default/seed: Building")
        # Failed, but a rebuild is asked for and not answered yet: it goes on.
        asked = {"metadata": {"annotations": {"stagefleet.io/rebuild": "again"}}}
        custom.patch_namespaced_custom_object("stagefleet.io", "v1alpha1", NS, "imagebuilds", "seed", asked)
        set_status(phase="Failed")
        time.sleep(2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        set_status(phase="Succeeded", run=2, rebuild="again")
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        out = proc.stdout.read()
        assert "imagebuild default/seed: Failed" in out and "imagebuild default/seed: Succeeded" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_rebuild_sets_a_new_annotation_value_each_time(cluster: Cluster) -> None:
    from kubernetes import client

    make_build(cluster, "Failed")
    custom = client.CustomObjectsApi(cluster.api)
    values = []
    for _ in range(2):
        proc = stagefleet(cluster, "rebuild", "seed")
        assert proc.returncode == 0, proc.stderr
        obj = custom.get_namespaced_custom_object("stagefleet.io", "v1alpha1", NS, "imagebuilds", "seed")
        values.append(obj["metadata"]["annotations"]["stagefleet.io/rebuild"])
        assert values[-1] in proc.stdout
    assert values[0] != values[1], values
    missing = stagefleet(cluster, "rebuild", "nope")
    assert missing.returncode == 1 and 'imagebuild "nope" not found' in missing.stderr


def test_logs_interleaved_with_stage_prefixes_and_stage_filter(cluster: Cluster) -> None:
    make_build(cluster, "Succeeded")
    # build1's log was written before build2's, final's last
    make_pod(cluster, "seed-g1", "g1", ["[build1] STEP 1/2: FROM base", "[build1] one"], 1_800_000_000)
    make_pod(cluster, "seed-g2", "g2", ["[build2] STEP 1/2: FROM base", "[build2] two"], 1_800_000_001)
    make_pod(cluster, "seed-g3", "g3", ["[final] COPY --from=build1", "[final] COPY --from=build2"],
             1_800_000_002)
    proc = stagefleet(cluster, "logs", "seed")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "build1 | STEP 1/2: FROM base", "build1 | one",
        "build2 | STEP 1/2: FROM base", "build2 | two",
        "final  | COPY --from=build1", "final  | COPY --from=build2",
    ]
    only = stagefleet(cluster, "logs", "seed", "--stage", "build2")
    assert only.returncode == 0, only.stderr
    assert only.stdout.splitlines() == ["build2 | STEP 1/2: FROM base", "build2 | two"]
    bad = stagefleet(cluster, "logs", "seed", "--stage", "nope")
    assert bad.returncode == 1 and "no stage 'nope'" in bad.stderr


def test_logs_show_only_the_current_run_of_this_imagebuild(cluster: Cluster) -> None:
    """Pods are selected by the ImageBuild's UID and its run: an earlier run's pods (a rebuild) and a pod
    with the name label but another UID (a deleted ImageBuild of the same name) are left out."""
    from kubernetes import client

    make_build(cluster, "Succeeded")
    rebuilt = {"status": {"run": 2, "observedGeneration": 1}}  # run 2 of generation 1: a rebuild
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object_status(
        "stagefleet.io", "v1alpha1", NS, "imagebuilds", "seed", rebuilt)
    make_pod(cluster, "seed-1-g1-a1", "g1", ["[build1] from run one"], 1_800_000_000, run=1)
    make_pod(cluster, "seed-2-g1-a1", "g1", ["[build1] from run two"], 1_800_000_001, run=2)
    client.CoreV1Api(cluster.api).create_namespaced_pod(NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "seed-old-g2", "labels": {"stagefleet.io/imagebuild": "seed",
                                                        "stagefleet.io/group": "g2",
                                                        "stagefleet.io/imagebuild-uid": "another-uid"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "x"}]}})
    set_pod_state(cluster, "seed-old-g2", running=False)
    append_log(cluster, "seed-old-g2", ["[build2] from a deleted namesake"])
    proc = stagefleet(cluster, "logs", "seed")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["build1 | from run two"]


def test_logs_follow_ends_when_the_build_is_over(cluster: Cluster) -> None:
    make_build(cluster, "Succeeded")
    make_pod(cluster, "seed-g1", "g1", ["[build1] one"], 1_800_000_000)
    make_pod(cluster, "seed-g2", "g2", ["[build2] two"], 1_800_000_001)
    proc = stagefleet(cluster, "logs", "seed", "-f")
    assert proc.returncode == 0, proc.stderr
    # followed streams arrive in any order; each line keeps its stage prefix
    assert sorted(proc.stdout.splitlines()) == ["build1 | one", "build2 | two"]


def test_logs_follow_picks_up_pods_as_they_start_and_streams_new_lines(cluster: Cluster) -> None:
    from kubernetes import client

    make_build(cluster, "Building")
    make_pod(cluster, "seed-g1", "g1", ["[build1] first"], None, running=True)
    proc = subprocess.Popen([sys.executable, "-m", "stagefleet.cli", "logs", "seed", "-f",
                             "--kubeconfig", str(cluster.kubeconfig)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "build1 | first\n"
        # a line written while following, and a pod that starts later
        append_log(cluster, "seed-g1", ["[build1] second"])
        assert proc.stdout.readline() == "build1 | second\n"
        make_pod(cluster, "seed-g3", "g3", ["[final] third"], None, running=True)
        assert proc.stdout.readline() == "final  | third\n"
        # the build ends: the streams end, and so does `logs -f`
        set_pod_state(cluster, "seed-g1", running=False)
        set_pod_state(cluster, "seed-g3", running=False)
        client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object_status(
            "stagefleet.io", "v1alpha1", NS, "imagebuilds", "seed", {"status": {"phase": "Succeeded"}})
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
