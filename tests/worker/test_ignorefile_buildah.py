"""The ignore-file matcher agrees with the real buildah: for each context, the files `COPY . /ctx/` puts in
the image are exactly the ones local mode's index keeps (`localcontext.ignore_rules`). Were it to leave
out a file buildah copies, a change to that file would reuse a stale stage result."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagefleet.local import context as localcontext
from stagefleet.stagekey import IGNORE_FILES

pytestmark = pytest.mark.skipif(shutil.which("buildah") is None, reason="needs buildah")

FILES = ("a.txt", "b.txt", "c.txt", "sub/d.txt", "sub/e.md", "sub/deep/f.md", "README.md",
         "node_modules/pkg/index.js", "logs/x.log")

CASES = {
    "exception under an ignored directory": {".dockerignore": "sub\n!sub/e.md\n"},
    "any depth": {".dockerignore": "**/*.md\n"},
    "anchored, then one component, then an exception": {".dockerignore": "/sub/*.txt\n*.txt\n!a.txt\n"},
    "trailing slash and a single-character wildcard": {".dockerignore": "sub/\nn?de_modules\n"},
    "containerignore wins over dockerignore": {".containerignore": "a.txt\n", ".dockerignore": "b.txt\n"},
    "the Dockerfile's own file wins": {"Dockerfile.dockerignore": "c.txt\n", ".containerignore": "a.txt\n",
                                      ".dockerignore": "b.txt\n"},
    "the last match decides": {".dockerignore": "*.md\n!README.md\nREADME.md\nlogs/**\n"},
}


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    root = tmp_path_factory.mktemp("buildah-storage")
    argv = ["buildah", "--root", str(root / "root"), "--runroot", str(root / "run"),
            "--storage-driver", "vfs"]
    yield argv
    subprocess.run([*argv, "rm", "--all"], capture_output=True, timeout=120)
    subprocess.run([*argv, "rmi", "--all", "--force"], capture_output=True, timeout=120)


def copied(buildah: list[str], context: Path, tag: str) -> set[str]:
    env = dict(os.environ, BUILDAH_ISOLATION="chroot")
    built = subprocess.run([*buildah, "bud", "-q", "-t", tag, str(context)], capture_output=True, text=True,
                           timeout=300, env=env)
    assert built.returncode == 0, built.stderr
    container = subprocess.run([*buildah, "from", tag], capture_output=True, text=True, check=True,
                               timeout=120, env=env).stdout.strip()
    mount = Path(subprocess.run([*buildah, "mount", container], capture_output=True, text=True, check=True,
                                timeout=120, env=env).stdout.strip())
    try:
        ctx = mount / "ctx"
        return {str(p.relative_to(ctx)) for p in ctx.rglob("*") if p.is_file()}
    finally:
        subprocess.run([*buildah, "umount", container], capture_output=True, timeout=120)


@pytest.mark.parametrize("case", sorted(CASES))
def test_local_mode_keeps_exactly_what_buildah_copies(case: str, tmp_path: Path, storage: list[str]) -> None:
    context = tmp_path / "ctx"
    for name in FILES:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text(f"{name}\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx/\n")
    for name, text in CASES[case].items():
        (context / name).write_text(text)
    rules = localcontext.ignore_rules(context, context / "Dockerfile")
    assert rules is not None
    index = localcontext.index_directory(context, rules)
    kept = {p for p, cid in index.entries.items() if cid.startswith("100")}
    in_image = copied(storage, context, f"localhost/ignore-{sorted(CASES).index(case)}")

    def ours(paths: set[str]) -> set[str]:  # (ignore files are in every key, whatever buildah does)
        return {p for p in paths if not p.endswith(IGNORE_FILES) and p != "Dockerfile"}

    assert ours(kept) == ours(in_image), case
    assert len(ours(in_image)) < len(FILES)  # each case leaves something out
