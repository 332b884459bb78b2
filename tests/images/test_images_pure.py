"""stagefleet.images without building: apt sources → mmdebstrap mirrors, content keys, sizes."""

from __future__ import annotations

from pathlib import Path

from stagefleet import images

DEB822 = """# the machine's sources
Types: deb deb-src
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://mirror.example/debian
Suites: trixie
Components: main

Enabled: no
Types: deb
URIs: http://off.example/debian
Suites: bookworm
Components: main
"""


def test_apt_sources_to_mirror_lines() -> None:
    sources = images.parse_deb822(DEB822)
    assert len(sources) == 3 and sources[1].suites == ("bookworm-security",)
    assert images.mirror_lines(sources) == [
        "deb http://mirror.example/debian bookworm main contrib",
        "deb http://mirror.example/debian bookworm-updates main contrib",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]
    one_line = images.parse_sources_list(
        "# comment\ndeb [signed-by=/k.gpg arch=amd64] http://m.example/debian bookworm main  # x\n"
        "deb-src http://m.example/debian bookworm main\n"
        "deb http://m.example/debian bookworm-backports main\n")
    assert images.mirror_lines(one_line) == ["deb http://m.example/debian bookworm main",
                                             "deb http://m.example/debian bookworm-backports main"]
    assert images.mirror_lines(one_line + one_line, "trixie") == []


def test_machine_sources_reads_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list").write_text("deb http://other.example/debian bookworm main\n")
    lines = images.machine_sources(tmp_path)
    assert lines[0] == "deb http://mirror.example/debian bookworm main contrib"
    assert lines[-1] == "deb http://other.example/debian bookworm main"


def test_keys_follow_content(tmp_path: Path) -> None:
    key = images.base_key("bookworm", ["deb http://m/ bookworm main"], [], images.MMDEBSTRAP_OPTIONS)
    assert key == images.base_key("bookworm", ["deb http://m/ bookworm main"], [], images.MMDEBSTRAP_OPTIONS)
    assert key != images.base_key("bookworm", ["deb http://n/ bookworm main"], [], images.MMDEBSTRAP_OPTIONS)
    assert key != images.base_key("bookworm", ["deb http://m/ bookworm main"], ["git"],
                                  images.MMDEBSTRAP_OPTIONS)
    ctx = tmp_path / "ctx"
    (ctx / "wheels").mkdir(parents=True)
    whl = ctx / "wheels" / "a-1-py3-none-any.whl"
    whl.write_bytes(b"one")
    (ctx / "__pycache__").mkdir()
    first = images.tree_digest(ctx)
    (ctx / "__pycache__" / "x.pyc").write_bytes(b"ignored")
    assert images.tree_digest(ctx) == first
    whl.chmod(0o755)
    assert images.tree_digest(ctx) != first  # the exec bit is content too
    whl.chmod(0o644)
    assert images.tree_digest(ctx) == first
    whl.write_bytes(b"two")
    assert images.tree_digest(ctx) != first
    assert images.image_key(b"FROM x", first, "b1") != images.image_key(b"FROM y", first, "b1")
    assert images.image_key(b"FROM x", first, "b1") != images.image_key(b"FROM x", first, "b2")
    assert images.digest_of(["ab", "c"]) != images.digest_of(["a", "bc"])
    assert images.tag_for("0.1.0", "0123456789abcdef0123") == "0.1.0-0123456789abcdef"


def test_manifest_size_and_pinned_reference() -> None:
    manifest = {"config": {"size": 100}, "layers": [{"size": 1000}, {"size": 20}]}
    assert images.manifest_size(manifest) == 1120
    archive = images.Archive("builder", "stagefleet/builder", "0.1.0-x", Path("/c/a.oci.tar"), 1120, 3.0,
                             True)
    pushed = images.Pushed(archive, "127.0.0.1:5000/stagefleet/builder:0.1.0-x", "sha256:" + "a" * 64, 0.4)
    assert pushed.pinned == "127.0.0.1:5000/stagefleet/builder@sha256:" + "a" * 64
    assert "cached, built in 3.0 s" in pushed.line()
