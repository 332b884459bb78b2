"""A branch that moves (docs/operator.md, "Following a branch"): with spec.source.git.pollInterval the
operator asks the repository for the branch's commit once a run finished, and a new commit starts a new run
of the same spec; the stagefleet.io/resolve annotation asks at once and starts nothing when the branch did
not move. status.lastSucceeded keeps the last good image across runs. Both tiers, real builder, git daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stagefleet.localregistry import LocalRegistry

from .conftest import Kubectl, Operator, git_run, wait_for
from .oci import image_files

pytestmark = [pytest.mark.cluster, pytest.mark.builder]

DOCKERFILE = """ARG BASE
FROM ${BASE} AS greeting
COPY hello.txt /hello.txt
FROM ${BASE}
COPY --from=greeting /hello.txt /hello.txt
"""
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def served_repo(repo: Path, hello: str) -> str:
    """A git repository the daemon serves (the operator's and the workers' fetches allowed), one commit of
    the Dockerfile and hello.txt; its commit."""
    repo.mkdir()
    (repo / "Dockerfile").write_text(DOCKERFILE)
    (repo / "hello.txt").write_text(hello)
    git_run(repo, "init", "-q", "-b", "main")
    git_run(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    git_run(repo, "config", "uploadpack.allowFilter", "true")
    git_run(repo, "add", ".")
    git_run(repo, "commit", "-qm", "first")
    return git_run(repo, "rev-parse", "HEAD")


def run_ended(number: int) -> Any:
    return lambda o: (o.get("status") or {}).get("run") == number and o["status"].get("phase") in TERMINAL


@pytest.mark.tiers("real")
def test_a_moved_branch_starts_a_new_run_and_an_unmoved_one_does_not(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str,
    git_daemon: tuple[Path, str],
) -> None:
    served, url = git_daemon
    repo = served / "follow"
    first = served_repo(repo, "first\n")
    kubectl.apply({
        "apiVersion": "stagefleet.io/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": "follow"},
        "spec": {
            "source": {"git": {"url": f"{url}/follow", "revision": "main", "pollInterval": "10s"}},
            "buildArgs": {"BASE": base_image},
            "output": {"image": f"{registry.host}/e2e/follow:latest"},
            "timeout": "10m",
        },
    })
    one = wait_for(kubectl, operator, "follow", run_ended(1), "run 1 to end")["status"]
    assert one["phase"] == "Succeeded" and one["source"]["git"]["commit"] == first, one.get("message")
    last = one["lastSucceeded"]
    assert last["commit"] == first and last["digest"] == one["image"]["digest"] and last["run"] == 1, last

    # The branch did not move: asking at once (the annotation) answers it and starts nothing.
    kubectl.run("annotate", "imagebuild", "follow", "stagefleet.io/resolve=one")
    asked = wait_for(kubectl, operator, "follow", lambda o: (o.get("status") or {}).get("resolve") == "one",
                     "the resolve request answered")["status"]
    assert asked["run"] == 1 and asked["phase"] == "Succeeded" and asked.get("polledAt")

    # It moves: within the poll interval a new run builds the new commit.
    (repo / "hello.txt").write_text("second\n")
    git_run(repo, "commit", "-qam", "second")
    second = git_run(repo, "rev-parse", "HEAD")
    two = wait_for(kubectl, operator, "follow", run_ended(2), "run 2 (the moved branch) to end")
    st = two["status"]
    assert st["phase"] == "Succeeded" and st["source"]["git"]["commit"] == second, st.get("message")
    assert two["metadata"]["generation"] == 1 and st["observedGeneration"] == 1
    assert st["lastSucceeded"]["commit"] == second and st["lastSucceeded"]["run"] == 2
    assert image_files(registry.host, "e2e/follow", st["image"]["digest"])["/hello.txt"] == b"second\n"
    said = [e["message"] for e in kubectl.events()
            if e["involvedObject"].get("name") == "follow" and e["reason"] == "RunStarted"]
    moved = f"spec.source.git.revision 'main' moved from {first[:12]} to {second[:12]}: run 2 starts"
    assert said == [moved], said


def test_a_repository_that_was_missing_is_tried_again_on_request(
    kubectl: Kubectl, operator: Operator, registry: LocalRegistry, base_image: str,
    git_daemon: tuple[Path, str],
) -> None:
    """The first run's repository does not exist yet (SourceUnavailable); once it does, a resolve request
    starts a new run that builds it, without a spec edit."""
    served, url = git_daemon
    kubectl.apply({
        "apiVersion": "stagefleet.io/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": "late"},
        "spec": {
            "source": {"git": {"url": f"{url}/late", "revision": "main", "pollInterval": "1h"}},
            "buildArgs": {"BASE": base_image},
            "output": {"image": f"{registry.host}/e2e/late:latest"},
            "timeout": "10m",
        },
    })
    one = wait_for(kubectl, operator, "late", run_ended(1), "run 1 to end")["status"]
    assert one["phase"] == "Failed" and one["failure"]["reason"] == "SourceUnavailable", one
    commit = served_repo(served / "late", "late\n")
    kubectl.run("annotate", "imagebuild", "late", "stagefleet.io/resolve=there-now")
    two = wait_for(kubectl, operator, "late", run_ended(2), "run 2 to end")["status"]
    assert two["phase"] == "Succeeded" and two["resolve"] == "there-now", two.get("message")
    assert two["source"]["git"]["commit"] == commit
    assert image_files(registry.host, "e2e/late", two["image"]["digest"])["/hello.txt"] == b"late\n"
