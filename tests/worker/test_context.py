"""Build contexts: git at a pinned revision (file://), sub-directory, .dockerignore, inline Dockerfile."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry

from .gitrepo import make_repo
from .helpers import image_files, run_worker

pytestmark = pytest.mark.builder


def test_git_file_url_pinned_revision_subdir_and_dockerignore(
        registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    h = registry.host
    repo = make_repo(tmp_path / "git", base_image)
    name = f"ctx/{secrets.token_hex(4)}"
    for rev, want in ((repo.first, b"v1\n"), ("main", b"v2\n")):
        r = run_worker(["--git-url", f"file://{repo.bare}", "--git-revision", rev, "--context-dir", "app",
                        "--target", "app", "--push", f"{h}/{name}:1"],
                       registry_host=h, tmp=tmp_path / rev[:8])
        assert r.code == 0, r.stderr + r.stdout
        files = image_files(h, name, r.result["digest"])
        assert files["/ctx/keep.txt"] == want
        assert "/ctx/Dockerfile" in files
        assert "/ctx/ignored.txt" not in files  # buildah honours .dockerignore
        assert "/ctx/README" not in files and "/README" not in files  # only the sub-directory is the context


def test_inline_dockerfile_without_context(registry: LocalRegistry, base_image: str, tmp_path: Path) -> None:
    h = registry.host
    inline = tmp_path / "configmap" / "Dockerfile"
    inline.parent.mkdir()
    inline.write_text(f"FROM {base_image} AS only\nRUN echo inline > /inline.txt\n")
    r = run_worker(["--inline-dockerfile", str(inline), "--target", "only", "--push", f"{h}/inline/x:1"],
                   registry_host=h, tmp=tmp_path / "pod")
    assert r.code == 0, r.stderr + r.stdout
    assert image_files(h, "inline/x", r.result["digest"])["/inline.txt"] == b"inline\n"
    # with a context: the Dockerfile comes from the file, the files from the context
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "data.txt").write_text("from the context\n")
    inline.write_text(f"FROM {base_image} AS only\nCOPY data.txt /data.txt\n")
    r = run_worker(["--context", str(ctx), "--inline-dockerfile", str(inline), "--target", "only",
                    "--push", f"{h}/inline/x:2"], registry_host=h, tmp=tmp_path / "pod2")
    assert r.code == 0, r.stderr + r.stdout
    assert image_files(h, "inline/x", r.result["digest"])["/data.txt"] == b"from the context\n"
