"""A git source: the revision pinned to a commit, the context fetched by each worker; metrics served."""

from __future__ import annotations

import base64
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagefleet.controller.podspec import secret_names_in_pod
from stagefleet.localregistry import LocalRegistry, free_port

from .conftest import Kubectl, Operator, git_run, wait_for, wait_terminal
from .oci import image_files

pytestmark = [pytest.mark.cluster, pytest.mark.builder]

DOCKERFILE = """ARG BASE
FROM ${BASE} AS greeting
COPY hello.txt /hello.txt
FROM ${BASE} AS other
RUN echo other > /other
FROM ${BASE} AS final
COPY --from=greeting /hello.txt /hello.txt
COPY --from=other /other /other
"""


def test_git_source_pinned_and_built(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str,
    git_daemon: tuple[Path, str],
) -> None:
    served, url = git_daemon
    repo = served / "repo"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "Dockerfile").write_text(DOCKERFILE)
    (repo / "app" / "hello.txt").write_text("hello from git\n")
    (repo / "unrelated.bin").write_bytes(b"\0" * 1024)
    git_run(repo, "init", "-q", "-b", "main")
    git_run(repo, "add", ".")
    git_run(repo, "commit", "-qm", "first")
    commit = git_run(repo, "rev-parse", "HEAD")
    # what the operator's blob-less fetch of one commit and the workers' shallow fetch ask of the server
    git_run(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    git_run(repo, "config", "uploadpack.allowFilter", "true")

    port = free_port()
    operator.stop()
    operator.extra = ["--metrics-port", str(port), "--metrics-address", "127.0.0.1"]
    operator.start()
    kubectl.apply(
        {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": "fromgit"},
            "spec": {
                "source": {"git": {"url": f"{url}/repo", "revision": "main"}, "contextDir": "app"},
                "buildArgs": {"BASE": base_image},
                "output": {"image": f"{registry.host}/e2e/fromgit:v1"},
                "timeout": "10m",
            },
        }
    )
    obj = wait_terminal(kubectl, operator, "fromgit")
    status = obj["status"]
    assert status["phase"] == "Succeeded", status["message"]
    assert (
        status["source"]["git"]["commit"] == commit
        and status["source"]["git"]["dockerfile"] == "app/Dockerfile"
    )
    files = image_files(registry.host, "e2e/fromgit", status["image"]["digest"])
    assert files["/hello.txt"] == b"hello from git\n" and files["/other"] == b"other\n"
    for pod in kubectl.pods("fromgit"):
        args = pod["spec"]["containers"][0]["args"]
        assert args[args.index("--git-revision") + 1] == commit
        assert args[args.index("--context-dir") + 1] == "app"

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'stagefleet_builds_total{result="Succeeded"} 1.0' in metrics
    assert "stagefleet_worker_pods_created_total 3.0" in metrics
    assert "stagefleet_stage_duration_seconds_count 3.0" in metrics


def test_unnamed_final_stage(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str
) -> None:
    dockerfile = f"FROM {base_image} AS a\nRUN echo a > /a\nFROM {base_image}\nCOPY --from=a /a /a\n"
    kubectl.apply(
        {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": "unnamed"},
            "spec": {
                "source": {"inline": {"dockerfile": dockerfile}},
                "output": {"image": f"{registry.host}/e2e/unnamed:1"},
                "retries": 0,
            },
        }
    )
    obj = wait_terminal(kubectl, operator, "unnamed")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def sshd_repo(tmp_path: Path, base_image: str) -> Iterator[tuple[str, Path, str, str]]:
    """A bare repository served by a throwaway sshd on a loopback port: (ssh URL, private key, commit, the
    known_hosts line of its host key)."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).exists():
        pytest.skip("openssh-server not installed")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    work, bare = tmp_path / "work", tmp_path / "private.git"
    (work / "app").mkdir(parents=True)
    (work / "app" / "Dockerfile").write_text(DOCKERFILE)
    (work / "app" / "hello.txt").write_text("hello over ssh\n")
    git_run(work, "init", "-q", "-b", "main")
    git_run(work, "add", ".")
    git_run(work, "commit", "-qm", "private")
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nLogLevel ERROR\n"
    )
    # sshd's privilege-separation directory; left in place (another sshd on the host may be using it).
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=(d / "sshd.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, (d / "sshd.log").read_text()
            time.sleep(0.05)
        yield (
            f"ssh://{getpass.getuser()}@127.0.0.1:{port}{bare}",
            d / "client",
            git_run(work, "rev-parse", "HEAD"),
            f"[127.0.0.1]:{port} {(d / 'host.pub').read_text().split()[0]} "
            f"{(d / 'host.pub').read_text().split()[1]}\n",
        )
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.mark.tiers("real")
def test_private_git_over_ssh_with_a_deploy_key_secret(
    kubectl: Kubectl,
    operator: Operator,
    registry: LocalRegistry,
    base_image: str,
    sshd_repo: tuple[str, Path, str, str],
) -> None:
    url, key, commit, known_host = sshd_repo
    kubectl.apply(
        {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": "private"},
            "spec": {
                "source": {
                    "git": {"url": url, "revision": "main", "secretRef": {"name": "deploy-key"}},
                    "contextDir": "app",
                },
                "buildArgs": {"BASE": base_image},
                "output": {"image": f"{registry.host}/e2e/private:1"},
            },
        }
    )
    # Without the deploy key the operator cannot even pin the revision: Stalled, naming the Secret.
    obj = wait_for(
        kubectl,
        operator,
        "private",
        lambda o: "deploy-key" in (o.get("status") or {}).get("message", ""),
        "a message naming the missing Secret",
    )
    assert obj["status"]["phase"] == "Pending"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "deploy-key"},
        "type": "kubernetes.io/ssh-auth",
        "data": {"ssh-privatekey": base64.b64encode(key.read_bytes()).decode()},
    }
    kubectl.apply(secret)
    # Host keys are never trusted on first use: without known_hosts the build stays Stalled, naming the key.
    obj = wait_for(
        kubectl,
        operator,
        "private",
        lambda o: '"known_hosts"' in (o.get("status") or {}).get("message", ""),
        "a message naming the missing known_hosts key",
    )
    stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "KnownHostsMissing"
    assert 'Secret "deploy-key"' in obj["status"]["message"]
    secret["data"]["known_hosts"] = base64.b64encode(known_host.encode()).decode()
    kubectl.apply(secret)
    obj = wait_terminal(kubectl, operator, "private")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
    assert obj["status"]["source"]["git"]["commit"] == commit
    files = image_files(registry.host, "e2e/private", obj["status"]["image"]["digest"])
    assert files["/hello.txt"] == b"hello over ssh\n"
    private_key = key.read_text().strip().splitlines()[1]
    for pod in kubectl.pods("private"):
        assert secret_names_in_pod(pod) == ["deploy-key"]
        args = pod["spec"]["containers"][0]["args"]
        assert args[args.index("--git-known-hosts") + 1] == "/run/stagefleet/git/known_hosts"
        assert "--git-insecure-ignore-host-key" not in args and private_key not in json.dumps(pod)
    assert private_key not in operator.log.read_text(errors="replace")
    assert private_key not in json.dumps(kubectl.ib("private"))


@pytest.mark.tiers("real")
def test_black_holed_git_sources_delay_only_their_own_builds(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str,
    git_daemon: tuple[Path, str],
) -> None:
    """Issue #14: more builds whose git host accepts connections and never answers than the operator has
    reconcile threads, plus one normal build: the normal one plans and starts while the others say
    "resolving source", and each of them then fails on its own, naming spec.source.git.url."""
    served, url = git_daemon
    repo = served / "repo"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "Dockerfile").write_text(DOCKERFILE)
    (repo / "app" / "hello.txt").write_text("hello from git\n")
    git_run(repo, "init", "-q", "-b", "main")
    git_run(repo, "add", ".")
    git_run(repo, "commit", "-qm", "first")
    git_run(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    git_run(repo, "config", "uploadpack.allowFilter", "true")
    timeout = 15
    operator.stop()
    operator.extra = ["--concurrency", "2", "--source-timeout", str(timeout)]
    operator.start()
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        dead = f"git://127.0.0.1:{hole.getsockname()[1]}/repo"
        holes = [f"hole-{i}" for i in range(4)]
        for name in holes:
            kubectl.apply(
                {
                    "apiVersion": "stagefleet.io/v1alpha1",
                    "kind": "ImageBuild",
                    "metadata": {"name": name},
                    "spec": {
                        "source": {"git": {"url": dead}},
                        "output": {"image": f"{registry.host}/e2e/{name}:1"},
                    },
                }
            )
        kubectl.apply(
            {
                "apiVersion": "stagefleet.io/v1alpha1",
                "kind": "ImageBuild",
                "metadata": {"name": "normal"},
                "spec": {
                    "source": {"git": {"url": f"{url}/repo", "revision": "main"}, "contextDir": "app"},
                    "buildArgs": {"BASE": base_image},
                    "output": {"image": f"{registry.host}/e2e/normal:1"},
                },
            }
        )
        started = time.monotonic()
        wait_for(kubectl, operator, "normal", lambda o: "plan" in (o.get("status") or {}), "a plan",
                 timeout=timeout)
        assert time.monotonic() - started < timeout
        for name in holes:
            obj = wait_for(kubectl, operator, name,
                           lambda o: "resolving source" in (o.get("status") or {}).get("message", ""),
                           '"resolving source"', timeout=10)
            assert obj["status"]["phase"] == "Planning" and dead in obj["status"]["message"]
        assert time.monotonic() - started < timeout  # all of them still waiting for their source
        for name in holes:
            obj = wait_terminal(kubectl, operator, name, timeout=timeout + 60)
            message = obj["status"]["message"]
            assert obj["status"]["phase"] == "Failed", obj["status"]
            assert "spec.source.git.url" in message and dead in message and "no answer within" in message
    assert wait_terminal(kubectl, operator, "normal")["status"]["phase"] == "Succeeded"


def test_symlink_out_of_the_repository_fails_without_leaking_its_target(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, git_daemon: tuple[Path, str]
) -> None:
    """Issue #14: a repository whose Dockerfile is a symlink to /etc/passwd: Failed, naming the path; the
    operator never reads the file, so nothing of it reaches the status or the events."""
    served, url = git_daemon
    repo = served / "evil"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "Dockerfile").symlink_to("/etc/passwd")
    git_run(repo, "init", "-q", "-b", "main")
    git_run(repo, "add", ".")
    git_run(repo, "commit", "-qm", "evil")
    git_run(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    git_run(repo, "config", "uploadpack.allowFilter", "true")
    kubectl.apply(
        {
            "apiVersion": "stagefleet.io/v1alpha1",
            "kind": "ImageBuild",
            "metadata": {"name": "evil"},
            "spec": {
                "source": {"git": {"url": f"{url}/evil", "revision": "main"}, "contextDir": "app"},
                "output": {"image": f"{registry.host}/e2e/evil:1"},
            },
        }
    )
    obj = wait_terminal(kubectl, operator, "evil")
    status = obj["status"]
    assert status["phase"] == "Failed", status
    assert "app/Dockerfile" in status["message"] and "symlink" in status["message"], status["message"]
    everything = json.dumps(obj) + kubectl.run("get", "events", "-o", "json").stdout
    assert "root:x:0:0" not in everything and "root:x:0:0" not in operator.log.read_text(errors="replace")
    assert kubectl.pods("evil") == []
