"""Emulation of foreign architectures through binfmt_misc and Debian's qemu-user-static (docs/multiarch.md).

A build for linux/arm64 on an amd64 node (`buildah build --platform linux/arm64`) runs the arm64 image's
RUN steps under qemu: the kernel hands every AArch64 ELF it is asked to execute to the interpreter
registered for it in /proc/sys/fs/binfmt_misc. The handler must carry the F (fix-binary) flag: the kernel
then opens the interpreter once, at registration, so it runs inside a chroot (buildah's chroot isolation),
a user namespace (rootless buildah) or a container, none of which has /usr/libexec/qemu-binfmt in its file
system. The registration is global to the kernel and needs root; a node (or this machine) does it once.

`status(arch)` says why an architecture cannot run here (None when it can: native, or an enabled handler
with F), so tests skip with that reason; `ensure(arch)` mounts binfmt_misc and registers the handler from
the package's /usr/lib/binfmt.d file (as root only). `python -m stagefleet.binfmt ensure arm64` is what
scripts/setup.sh runs; `python -m stagefleet.binfmt status arm64` only checks.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
#: Where Debian's qemu-user-static puts its systemd-binfmt files (`dpkg -L qemu-user-static`).
CONF_DIR = Path("/usr/lib/binfmt.d")
#: Debian/OCI architecture → qemu's name for it (the handler is "qemu-<name>").
QEMU_ARCH = {"arm64": "aarch64", "arm": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
             "386": "i386", "amd64": "x86_64"}
#: `uname -m` → OCI architecture, for telling native from foreign.
MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
                "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}
FIX_BINARY = "F"


class BinfmtError(RuntimeError):
    """binfmt_misc could not be mounted, or the handler could not be registered (the message says why)."""


@dataclass(frozen=True)
class Handler:
    """One registered binfmt_misc entry (/proc/sys/fs/binfmt_misc/NAME)."""

    name: str
    enabled: bool
    interpreter: str
    flags: str

    @property
    def fix_binary(self) -> bool:
        return FIX_BINARY in self.flags


def oci_arch(arch: str) -> str:
    """Pure: "linux/arm64", "arm64" and "aarch64" all name arm64 ("linux/arm/v7" → "arm")."""
    parts = arch.split("/")
    name = parts[1] if len(parts) > 1 else parts[0]
    return MACHINE_ARCH.get(name, name)


def handler_name(arch: str) -> str:
    """Pure: the binfmt_misc entry qemu-user-static registers for an architecture, e.g. "qemu-aarch64"."""
    name = oci_arch(arch)
    if name not in QEMU_ARCH:
        raise BinfmtError(f"no qemu handler known for architecture {arch!r}")
    return f"qemu-{QEMU_ARCH[name]}"


def native_arch() -> str:
    """This machine's architecture, OCI-style ("amd64")."""
    return oci_arch(platform.machine())


def parse_entry(name: str, text: str) -> Handler:
    """Pure: a /proc/sys/fs/binfmt_misc/NAME file ("enabled\\ninterpreter …\\nflags: OPF\\n…")."""
    lines = [line.strip() for line in text.splitlines()]
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    return Handler(name=name, enabled=bool(lines) and lines[0] == "enabled",
                   interpreter=fields.get("interpreter", "").strip(), flags=fields.get("flags:", "").strip())


def conf_line(text: str) -> str:
    """Pure: the registration line of a binfmt.d file (":name:type:offset:magic:mask:interpreter:flags"),
    with the F flag added when the file lacks it."""
    lines = [line.strip() for line in text.splitlines()]
    rules = [line for line in lines if line and not line.startswith(("#", ";"))]
    if len(rules) != 1 or not rules[0].startswith(":"):
        raise BinfmtError(f"expected one binfmt_misc rule, found {len(rules)}")
    line = rules[0]
    head, _, flags = line.rpartition(":")
    if line.count(":") < 7 or not head:
        raise BinfmtError(f"not a binfmt_misc rule: {line[:80]!r}")
    return line if FIX_BINARY in flags else f"{head}:{flags}{FIX_BINARY}"


def mounted(binfmt_dir: Path = BINFMT_DIR) -> bool:
    """binfmt_misc is mounted at `binfmt_dir` (its `register` file exists)."""
    return (binfmt_dir / "register").exists()


def read_handler(arch: str, binfmt_dir: Path = BINFMT_DIR) -> Handler | None:
    """The registered handler for `arch`, or None when there is none (or binfmt_misc is not mounted)."""
    name = handler_name(arch)
    try:
        return parse_entry(name, (binfmt_dir / name).read_text())
    except OSError:
        return None


def status(arch: str, binfmt_dir: Path = BINFMT_DIR) -> str | None:
    """None when binaries of `arch` run here (natively, or through an enabled handler with the F flag whose
    interpreter the kernel holds open), else why not, in words a skipped test can show."""
    if oci_arch(arch) == native_arch():
        return None
    name = handler_name(arch)
    if not mounted(binfmt_dir):
        return f"binfmt_misc is not mounted at {binfmt_dir} (scripts/setup.sh mounts it as root)"
    handler = read_handler(arch, binfmt_dir)
    if handler is None:
        return (f"no binfmt_misc handler {name} for {oci_arch(arch)} (apt-get install qemu-user-static; "
                "scripts/setup.sh registers it as root)")
    if not handler.enabled:
        return f"binfmt_misc handler {name} is disabled"
    if not handler.fix_binary:
        return (f"binfmt_misc handler {name} lacks the F (fix-binary) flag (flags: "
                f"{handler.flags or 'none'}): its interpreter is not found inside chroots and containers")
    return None


def emulates(arch: str, binfmt_dir: Path = BINFMT_DIR) -> bool:
    """Binaries of `arch` run here, in chroots and containers too (see `status`)."""
    return status(arch, binfmt_dir) is None


def ensure(arch: str, binfmt_dir: Path = BINFMT_DIR, conf_dir: Path = CONF_DIR) -> str:
    """Make binaries of `arch` run here; return what was done ("native", "already registered",
    "registered", …). As root: mount binfmt_misc when it is not, then register the handler from
    qemu-user-static's binfmt.d file with the F flag, replacing a registration without it. Raises
    BinfmtError with the reason when that is impossible (not root, package missing, write refused)."""
    if oci_arch(arch) == native_arch():
        return "native"
    name = handler_name(arch)
    if status(arch, binfmt_dir) is None:
        return "already registered"
    if os.geteuid() != 0:
        raise BinfmtError(f"{status(arch, binfmt_dir)}; registering it needs root")
    conf = conf_dir / f"{name}.conf"
    if not conf.is_file():
        raise BinfmtError(f"{conf} not found (apt-get install qemu-user-static)")
    line = conf_line(conf.read_text())
    interpreter = line.rsplit(":", 2)[1]
    if not Path(interpreter).exists():
        raise BinfmtError(f"interpreter {interpreter} of {conf} not found")
    did = []
    if not mounted(binfmt_dir):
        proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_dir)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not mounted(binfmt_dir):
            raise BinfmtError(f"mount -t binfmt_misc binfmt_misc {binfmt_dir} failed: "
                              f"{(proc.stderr or proc.stdout).strip() or f'exit {proc.returncode}'}")
        did.append("mounted binfmt_misc")
    old = read_handler(arch, binfmt_dir)
    if old is not None:  # disabled, or without F: the flags of an entry cannot change, so replace it
        _write(binfmt_dir / name, "-1")
        did.append(f"removed the old {name} (flags: {old.flags or 'none'}, "
                   f"{'enabled' if old.enabled else 'disabled'})")
    _write(binfmt_dir / "register", line)
    why_not = status(arch, binfmt_dir)
    if why_not is not None:
        raise BinfmtError(f"registered {name} from {conf}, yet: {why_not}")
    handler = read_handler(arch, binfmt_dir)
    did.append(f"registered {name} (flags: {handler.flags if handler else '?'})")
    return "; ".join(did)


def _write(path: Path, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise BinfmtError(f"writing {path}: {e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m stagefleet.binfmt {ensure|status} ARCH…`: exit 0 when every ARCH runs here."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("ensure", "status"):
        print("usage: python -m stagefleet.binfmt {ensure|status} ARCH...", file=sys.stderr)
        return 2
    failed = 0
    for arch in args[1:]:
        try:
            if args[0] == "ensure":
                print(f"{arch}: {ensure(arch)}")
            else:
                why_not = status(arch)
                print(f"{arch}: {why_not or 'runs here'}")
                failed += why_not is not None
        except BinfmtError as e:
            print(f"{arch}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
