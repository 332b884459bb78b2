"""A small git repository with two commits, to prove the worker checks out the pinned one."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}


@dataclass(frozen=True)
class Repo:
    bare: Path
    first: str   # commit with keep.txt == "v1"
    second: str  # commit with keep.txt == "v2" (the branch head)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(tmp: Path, base_image: str) -> Repo:
    work = tmp / "work"
    app = work / "app"
    app.mkdir(parents=True)
    (app / "Dockerfile").write_text(f"FROM {base_image} AS app\nCOPY . /ctx/\n")
    (app / ".dockerignore").write_text("ignored.txt\n")
    (app / "ignored.txt").write_text("must not be in the image\n")
    (app / "keep.txt").write_text("v1\n")
    (work / "README").write_text("outside the context dir\n")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "one")
    first = git(work, "rev-parse", "HEAD")
    (app / "keep.txt").write_text("v2\n")
    git(work, "commit", "-q", "-am", "two")
    second = git(work, "rev-parse", "HEAD")
    bare = tmp / "repo.git"
    git(tmp, "clone", "-q", "--bare", str(work), str(bare))
    return Repo(bare, first, second)
