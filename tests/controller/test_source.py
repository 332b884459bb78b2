"""source.py against real local git repositories (file://): pinning and Dockerfile-only fetch."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from stagefleet.controller.source import SourceError, redact, resolve
from stagefleet.controller.spec import ImageBuildSpec, SpecError, parse_spec

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git missing")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    (r / "svc").mkdir(parents=True)
    (r / "svc" / "Dockerfile").write_text("FROM busybox AS one\n")
    (r / "big.bin").write_bytes(b"x" * 100_000)
    _git(r, "init", "-q", "-b", "main")
    _git(r, "add", ".")
    _git(r, "commit", "-qm", "one")
    _git(r, "tag", "v1")
    (r / "svc" / "Dockerfile").write_text("FROM busybox AS two\n")
    _git(r, "commit", "-qam", "two")
    return r


def _spec(
    url: str, revision: str = "HEAD", context: str = "svc", dockerfile: str = "Dockerfile"
) -> ImageBuildSpec:
    return parse_spec(
        {
            "source": {"git": {"url": url, "revision": revision}, "contextDir": context},
            "dockerfile": dockerfile,
            "output": {"image": "r.example/a/b"},
        }
    )


@pytest.mark.parametrize(("revision", "text"), [("HEAD", "two"), ("main", "two"), ("v1", "one")])
def test_revision_is_pinned_and_only_the_dockerfile_is_read(repo: Path, revision: str, text: str) -> None:
    r = resolve(_spec(f"file://{repo}", revision))
    expected = _git(repo, "rev-parse", f"{revision}^{{commit}}")
    assert r.git_commit == expected and r.status["git"]["commit"] == expected
    assert r.dockerfile == f"FROM busybox AS {text}\n" and r.filename == "svc/Dockerfile"


def test_a_commit_is_used_as_is(repo: Path) -> None:
    first = _git(repo, "rev-parse", "v1^{commit}")
    r = resolve(_spec(f"file://{repo}", first))
    assert r.git_commit == first and "AS one" in r.dockerfile


def test_errors_are_precise(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="revision 'nope' not found"):
        resolve(_spec(f"file://{repo}", "nope"))
    with pytest.raises(SourceError, match="svc/Missing.Dockerfile not found"):
        resolve(_spec(f"file://{repo}", dockerfile="Missing.Dockerfile"))
    with pytest.raises(SourceError, match="git ls-remote failed"):
        resolve(_spec(f"file://{tmp_path}/absent"))


def test_credentials_never_reach_messages() -> None:
    assert redact("fatal: https://user:s3cret@host/x.git failed") == "fatal: https://***@host/x.git failed"
    # a password in the URL is refused when the spec is parsed, naming the field, never echoing it
    with pytest.raises(SpecError) as e:
        _spec("https://user:s3cret@127.0.0.1:1/x.git")
    assert e.value.path == "spec.source.git.url" and "s3cret" not in str(e.value)


def test_a_symlink_out_of_the_repository_is_never_read(tmp_path: Path) -> None:
    """`Dockerfile -> /etc/passwd` in the repository: refused naming the path, passwd's content unread."""
    r = tmp_path / "evil"
    (r / "svc").mkdir(parents=True)
    (r / "svc" / "Dockerfile").symlink_to("/etc/passwd")
    (r / "svc" / "Inner").symlink_to("../ok/Dockerfile")
    (r / "ok").mkdir()
    (r / "ok" / "Dockerfile").write_text("FROM busybox AS fine\n")
    _git(r, "init", "-q", "-b", "main")
    _git(r, "add", ".")
    _git(r, "commit", "-qm", "evil")
    with pytest.raises(SourceError) as e:
        resolve(_spec(f"file://{r}"))
    assert "svc/Dockerfile" in str(e.value) and "symlink" in str(e.value)
    assert "root:" not in str(e.value)
    # a symlink to another file of the same repository is fine
    assert "AS fine" in resolve(_spec(f"file://{r}", dockerfile="Inner")).dockerfile


def test_the_contexts_ignore_files_are_read_with_the_dockerfile(tmp_path: Path) -> None:
    """The ignore file buildah would use (`ignorefile`) comes with the Dockerfile: its rules leave ignored
    paths out of the git index the stages are keyed by; a link in its place leaves nothing out."""
    from stagefleet import stagekey

    r = tmp_path / "ign"
    (r / "svc" / "node_modules").mkdir(parents=True)
    (r / "svc" / "Dockerfile").write_text("FROM busybox\nCOPY . /app/\n")
    (r / "svc" / ".dockerignore").write_text("node_modules\n*.log\n")
    (r / "svc" / "Dockerfile.dockerignore").write_text("*.log\n")  # the Dockerfile's own wins
    (r / "svc" / "node_modules" / "x.js").write_text("x\n")
    (r / "svc" / "debug.log").write_text("log\n")
    (r / "svc" / "app.txt").write_text("app\n")
    _git(r, "init", "-q", "-b", "main")
    _git(r, "add", ".")
    _git(r, "commit", "-qm", "ignore")
    got = resolve(_spec(f"file://{r}"))
    assert got.ignore is not None and got.tree is not None
    index = stagekey.index_git_tree(got.tree, "svc").without(got.ignore)
    assert set(index.entries) == {"Dockerfile", ".dockerignore", "Dockerfile.dockerignore", "app.txt",
                                  "node_modules/x.js"}
    # Only the root's file: node_modules goes too.
    _git(r, "rm", "-q", "svc/Dockerfile.dockerignore")
    _git(r, "commit", "-qm", "root only")
    got = resolve(_spec(f"file://{r}"))
    assert got.ignore is not None and got.tree is not None
    assert set(stagekey.index_git_tree(got.tree, "svc").without(got.ignore).entries) == {
        "Dockerfile", ".dockerignore", "app.txt"}
    # A link where the ignore file should be: nothing is left out.
    (r / "svc" / ".dockerignore").unlink()
    (r / "svc" / ".dockerignore").symlink_to("app.txt")
    _git(r, "add", "-A")
    _git(r, "commit", "-qm", "link")
    assert resolve(_spec(f"file://{r}")).ignore is None

