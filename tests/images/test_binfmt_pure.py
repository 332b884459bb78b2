"""stagefleet.binfmt without touching the kernel: entries, binfmt.d lines and the reasons a test skips with,
read from a directory laid out like /proc/sys/fs/binfmt_misc."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagefleet import binfmt

CONF = (":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
        "\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff"
        "\\xfe\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF\n")
ENTRY = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n"
         "magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")


def test_names() -> None:
    assert binfmt.handler_name("linux/arm64") == binfmt.handler_name("aarch64") == "qemu-aarch64"
    assert binfmt.oci_arch("linux/arm/v7") == "arm"
    with pytest.raises(binfmt.BinfmtError):
        binfmt.handler_name("vax")


def test_entry_and_conf_line() -> None:
    h = binfmt.parse_entry("qemu-aarch64", ENTRY)
    assert h.enabled and h.fix_binary and h.interpreter.endswith("aarch64-binfmt-P") and h.flags == "POF"
    off = binfmt.parse_entry("qemu-aarch64", ENTRY.replace("enabled", "disabled").replace("POF", "PO"))
    assert not off.enabled and not off.fix_binary
    assert binfmt.conf_line("# from qemu-user-static\n" + CONF) == CONF.strip()
    assert binfmt.conf_line(CONF.replace(":OPF", ":OP")) == CONF.strip()  # F added
    assert binfmt.conf_line(CONF.replace(":OPF", ":")).endswith("aarch64-binfmt-P:F")
    with pytest.raises(binfmt.BinfmtError):
        binfmt.conf_line(CONF + CONF)


def test_status_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binfmt, "native_arch", lambda: "amd64")
    assert binfmt.status("amd64", tmp_path) is None  # native: nothing needed
    assert "not mounted" in (binfmt.status("arm64", tmp_path) or "")
    (tmp_path / "register").write_text("")
    assert "no binfmt_misc handler qemu-aarch64" in (binfmt.status("arm64", tmp_path) or "")
    entry = tmp_path / "qemu-aarch64"
    entry.write_text(ENTRY.replace("POF", "PO"))
    assert "lacks the F (fix-binary) flag (flags: PO)" in (binfmt.status("arm64", tmp_path) or "")
    entry.write_text(ENTRY.replace("enabled", "disabled"))
    assert "disabled" in (binfmt.status("arm64", tmp_path) or "")
    entry.write_text(ENTRY)
    assert binfmt.status("arm64", tmp_path) is None and binfmt.emulates("linux/arm64", tmp_path)


def test_ensure_writes_the_rule_with_f(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, a registration without F is removed ("-1") and the package's rule written to register."""
    monkeypatch.setattr(binfmt, "native_arch", lambda: "amd64")
    monkeypatch.setattr(binfmt.os, "geteuid", lambda: 0)
    interp = tmp_path / "qemu-aarch64-static"
    interp.write_text("")
    conf_dir = tmp_path / "binfmt.d"
    conf_dir.mkdir()
    (conf_dir / "qemu-aarch64.conf").write_text(CONF.replace("/usr/libexec/qemu-binfmt/aarch64-binfmt-P",
                                                             str(interp)).replace(":OPF", ":OP"))
    proc = tmp_path / "proc"
    proc.mkdir()
    entry = proc / "qemu-aarch64"
    entry.write_text(ENTRY.replace("POF", "PO"))
    written: list[tuple[str, str]] = []

    def fake_write(path: Path, text: str) -> None:  # what the kernel would do with the writes
        written.append((path.name, text))
        if path.name == "register":
            entry.write_text(ENTRY)

    (proc / "register").write_text("")
    monkeypatch.setattr(binfmt, "_write", fake_write)
    did = binfmt.ensure("arm64", proc, conf_dir)
    assert [w[0] for w in written] == ["qemu-aarch64", "register"] and written[0][1] == "-1"
    assert written[1][1].endswith(f"{interp}:OPF")
    assert "removed the old qemu-aarch64 (flags: PO, enabled)" in did and did.endswith("(flags: POF)")
    assert binfmt.ensure("arm64", proc, conf_dir) == "already registered"
