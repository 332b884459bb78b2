"""Configuration files and environment for one buildah run in its own storage root.

Every worker invocation gets a root directory that plays the part of a fresh pod: buildah's image
store, its cache mounts and its registry credentials all live below it, its run state in a tmpfs
directory named after it (`BuildPaths.shm_runroot`), so nothing leaks between builds unless a caller
deliberately reuses the root.

Run as root, buildah reads that storage.conf through CONTAINERS_STORAGE_CONF. Rootless buildah (a worker
pod's uid 1000) ignores graphroot/runroot there and would put its images in $HOME (the container's root
filesystem); it honours a per-user `$XDG_CONFIG_HOME/containers/storage.conf`, so a rootless environment
points XDG_CONFIG_HOME (and XDG_DATA_HOME, where the blob-info cache goes) into the root instead. The
storage driver of a rootless root is chosen by what works there (`choose_storage`): kernel overlay in a
user namespace, else fuse-overlayfs where /dev/fuse is usable, else vfs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Longest TMPDIR used as is; buildah's socket names below it need ~50 more bytes of the 108.
SHORT_PATH = 48
#: The tmpfs every Linux host and every pod has; holds the build roots' run state (`shm_runroot`).
SHM = Path("/dev/shm")
#: Variables that would make buildah read the host's configuration instead of ours.
_HOST_CONFIG_VARS = ("CONTAINERS_CONF", "BUILDAH_LAYERS", "BUILDAH_FORMAT", "REGISTRY_AUTH_FILE",
                     "CONTAINERS_STORAGE_CONF", "XDG_CONFIG_HOME", "XDG_DATA_HOME")
FUSE_OVERLAYFS = "/usr/bin/fuse-overlayfs"


class AuthFileError(ValueError):
    """The registry credentials file is not a dockerconfigjson."""


@dataclass(frozen=True)
class BuildPaths:
    """Where the pieces of one build root live."""

    root: Path

    @property
    def graphroot(self) -> Path:
        return self.root / "storage"

    @property
    def runroot(self) -> Path:
        """Where the run state goes when no tmpfs is at hand (see `shm_runroot`)."""
        return self.root / "run"

    @property
    def shm_runroot(self) -> Path:
        """The preferred runroot: on tmpfs, stable for this root. containers-storage fsyncs its run
        state (mount counts, container records) at every change, ~65 times in a warm build; on tmpfs
        that costs nothing, and run state is meant not to outlive a reboot anyway."""
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return SHM / f"sf-run-{digest}"

    @property
    def tmpdir(self) -> Path:
        """TMPDIR; buildah keeps `RUN --mount=type=cache` data in `$TMPDIR/buildah-cache`."""
        return self.root / "tmp"

    @property
    def short_tmpdir(self) -> Path:
        """A short symlink to `tmpdir`, stable for this root: buildah binds unix sockets (the
        `RUN --mount=type=ssh` proxy) below TMPDIR, and socket paths are limited to 108 bytes."""
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return Path("/tmp") / f"sf-tmp-{digest}"

    @property
    def storage_conf(self) -> Path:
        return self.root / "storage.conf"

    @property
    def registries_conf(self) -> Path:
        return self.root / "registries.conf"

    @property
    def auth_file(self) -> Path:
        return self.root / "auth.json"

    @property
    def config_home(self) -> Path:
        """XDG_CONFIG_HOME of a rootless build: `containers/storage.conf` below it links to `storage_conf`."""
        return self.root / "config"

    @property
    def data_home(self) -> Path:
        """XDG_DATA_HOME of a rootless build (buildah's blob-info cache), instead of $HOME/.local/share."""
        return self.root / "data"

    @property
    def probe_dir(self) -> Path:
        """Scratch directory of the rootless overlay probe, next to the graphroot (the same volume)."""
        return self.root / "overlay-probe"


@dataclass(frozen=True)
class StorageChoice:
    """The storage driver of a build root and why: `mode` is what the worker logs."""

    driver: str
    mount_program: str | None
    mode: str


def choose_storage(*, rootless: bool, driver: str | None, mount_program: str | None,
                   kernel_overlay: Callable[[], str | None], fuse: Callable[[], bool]) -> StorageChoice:
    """Pure: the storage driver for a build root.

    `driver`/`mount_program` are what was asked for (STAGEFLEET_STORAGE_DRIVER/_MOUNT_PROGRAM); vfs is
    always honoured, root gets what it asked for (overlay by default). Rootless with overlay or nothing
    asked: an explicit mount program is honoured; else kernel overlay when `kernel_overlay()` (a probe on
    the storage volume, None when it mounted, else why not) works; else fuse-overlayfs when `fuse()`
    (/dev/fuse usable and the program installed); else vfs, which needs nothing.
    """
    if driver == "vfs":
        return StorageChoice("vfs", None, "vfs (requested)")
    if not rootless:
        name = driver or "overlay"
        through = f" through {mount_program}" if mount_program and name == "overlay" else ""
        return StorageChoice(name, mount_program or None, f"{name}{through} (as root)")
    if driver not in (None, "", "overlay"):
        return StorageChoice(driver, None, f"{driver} (requested)")
    if mount_program:
        return StorageChoice("overlay", mount_program, f"overlay through {mount_program} (requested)")
    why_not = kernel_overlay()
    if why_not is None:
        return StorageChoice("overlay", None, "overlay (kernel, rootless)")
    if fuse():
        return StorageChoice("overlay", FUSE_OVERLAYFS,
                             f"overlay through {FUSE_OVERLAYFS} (kernel overlay: {why_not})")
    return StorageChoice("vfs", None, f"vfs (kernel overlay: {why_not}; no usable /dev/fuse)")


def probe_kernel_overlay(scratch: Path) -> str | None:
    """Whether an unprivileged user namespace can mount kernel overlayfs with its upper directory below
    `scratch` (the storage volume: an emptyDir works, a container's own overlay root filesystem does not).
    None when it can, else a short reason. Uses util-linux `unshare`; `scratch` is removed again."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "util-linux unshare/mount not found"
    dirs = {name: scratch / name for name in ("lower", "upper", "work", "merged")}
    try:
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        (dirs["lower"] / "f").write_text("x")
        opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']},userxattr"
        proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "overlay",
                               "overlay", "-o", opts, str(dirs["merged"])],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    finally:
        _remove_own_tree(scratch)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"mount exited {proc.returncode}"


def _remove_own_tree(path: Path) -> None:
    """rmtree for a tree of our own files that may hold mode-000 directories (overlayfs leaves its
    `work/work` so)."""
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o700)
    shutil.rmtree(path, ignore_errors=True)


def fuse_usable(device: Path = Path("/dev/fuse"), program: str = FUSE_OVERLAYFS) -> bool:
    """/dev/fuse opens read-write for this user and fuse-overlayfs is installed."""
    if not Path(program).is_file():
        return False
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def storage_conf(graphroot: Path, runroot: Path, driver: str = "overlay",
                 mount_program: str | None = None) -> str:
    """containers-storage.conf(5) text: our own graph/run roots so builds do not share images.

    `mount_program` (e.g. /usr/bin/fuse-overlayfs) is for rootless pods whose kernel cannot mount
    overlay in a user namespace.
    """
    text = (
        "[storage]\n"
        f"driver = {json.dumps(driver)}\n"
        f"graphroot = {json.dumps(str(graphroot))}\n"
        f"runroot = {json.dumps(str(runroot))}\n"
    )
    if mount_program and driver == "overlay":
        text += f"\n[storage.options.overlay]\nmount_program = {json.dumps(mount_program)}\n"
    return text


def registries_conf(insecure: Iterable[str]) -> str:
    """containers-registries.conf(5) text: no short-name search, plain HTTP for the given hosts."""
    lines = ["unqualified-search-registries = []", ""]
    for host in sorted(set(insecure)):
        lines += ["[[registry]]", f"location = {json.dumps(host)}", "insecure = true", ""]
    return "\n".join(lines)


def load_auth(text: str) -> dict[str, object]:
    """Validate a `kubernetes.io/dockerconfigjson` payload (also accepts a bare legacy `.dockercfg`)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AuthFileError(f"registry auth file is not JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise AuthFileError("registry auth file must hold a JSON object")
    if "auths" not in data:
        data = {"auths": data}  # legacy .dockercfg: the host map without the "auths" wrapper
    if not isinstance(data["auths"], dict):
        raise AuthFileError('registry auth file: "auths" must be an object')
    return data


def auth_secrets(data: Mapping[str, object]) -> list[str]:
    """The secret strings in a loaded auth file (auth, its decoded password, tokens), for scrubbing."""
    found: list[str] = []
    auths = data.get("auths")
    for entry in auths.values() if isinstance(auths, dict) else ():
        if not isinstance(entry, dict):
            continue
        for key in ("auth", "password", "identitytoken", "registrytoken"):
            value = entry.get(key)
            if isinstance(value, str) and value:
                found.append(value)
        auth = entry.get("auth")
        if isinstance(auth, str):
            try:
                user_pass = base64.b64decode(auth, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue
            found += [user_pass, user_pass.partition(":")[2]]
    return [f for f in found if f]


def insecure_from_env(env: Mapping[str, str]) -> list[str]:
    """Hosts listed in STAGEFLEET_INSECURE_REGISTRIES (comma-separated)."""
    raw = env.get("STAGEFLEET_INSECURE_REGISTRIES", "")
    return [h.strip() for h in raw.split(",") if h.strip()]


def _short_tmpdir(paths: BuildPaths) -> Path:
    """TMPDIR itself when its path is short, else the short symlink to it."""
    if len(str(paths.tmpdir)) <= SHORT_PATH:
        return paths.tmpdir
    link = paths.short_tmpdir
    if not (link.is_symlink() and link.resolve() == paths.tmpdir.resolve()):
        link.unlink(missing_ok=True)
        link.symlink_to(paths.tmpdir)
    return link


def fstype(path: Path, mounts_text: str) -> str | None:
    """Filesystem type of the mount `path` lies on, from /proc/mounts text."""
    best, kind = "", None
    target = str(path)
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) > 2:
            point = fields[1]
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def _private_dir(path: Path) -> bool:
    """A real directory (no symlink) of this user that nobody else may enter."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _runroot(paths: BuildPaths) -> Path:
    """`shm_runroot` when /dev/shm is a writable tmpfs and that directory is ours (made now, or left by
    an earlier run of the same root), else `runroot` below the root."""
    shm = paths.shm_runroot
    try:
        if fstype(SHM, Path("/proc/mounts").read_text()) != "tmpfs" or not os.access(SHM, os.W_OK):
            return paths.runroot
        shm.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return paths.runroot
    return shm if _private_dir(shm) else paths.runroot


def prepare(
    root: Path,
    *,
    insecure_registries: Iterable[str] = (),
    auth_file: Path | None = None,
    base_env: Mapping[str, str] | None = None,
    driver: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Create the build root's files and return the environment for buildah/skopeo to run in it.

    The environment's STAGEFLEET_INSECURE_REGISTRIES lists the hosts registries.conf marks insecure, so
    the worker's own registry requests (`worker.registry`) reach them the way buildah does.

    The storage driver is `driver`, else STAGEFLEET_STORAGE_DRIVER, else overlay as root; rootless, what
    works on the root's volume (`choose_storage`; STAGEFLEET_STORAGE_MOUNT_PROGRAM forces a mount
    program). `log` hears the storage mode chosen.
    """
    auth = load_auth(auth_file.read_text()) if auth_file is not None else None  # fail before creating
    insecure = sorted(set(insecure_registries))
    paths = BuildPaths(root)
    for d in (paths.graphroot, paths.tmpdir):
        d.mkdir(parents=True, exist_ok=True)
    runroot = _runroot(paths)
    runroot.mkdir(parents=True, exist_ok=True)
    source = os.environ if base_env is None else base_env
    rootless = os.geteuid() != 0
    choice = choose_storage(rootless=rootless,
                            driver=driver or source.get("STAGEFLEET_STORAGE_DRIVER") or None,
                            mount_program=source.get("STAGEFLEET_STORAGE_MOUNT_PROGRAM") or None,
                            kernel_overlay=lambda: probe_kernel_overlay(paths.probe_dir), fuse=fuse_usable)
    if log is not None:
        log(f"storage: {choice.mode} in {paths.graphroot}")
    paths.storage_conf.write_text(storage_conf(paths.graphroot, runroot, choice.driver, choice.mount_program))
    paths.registries_conf.write_text(registries_conf(insecure))
    env = {k: v for k, v in source.items() if k not in _HOST_CONFIG_VARS}
    env.update(
        BUILDAH_ISOLATION="chroot",
        CONTAINERS_REGISTRIES_CONF=str(paths.registries_conf),
        TMPDIR=str(_short_tmpdir(paths)),
        STAGEFLEET_INSECURE_REGISTRIES=",".join(insecure),  # what registries.conf says, for our own checks
    )
    env.update(storage_env(root, rootless=rootless))
    if auth is not None:
        fd = os.open(paths.auth_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(auth, f)
        env["REGISTRY_AUTH_FILE"] = str(paths.auth_file)
    return env


def storage_env(root: Path, *, rootless: bool | None = None) -> dict[str, str]:
    """The variables that make buildah use `root`'s storage.conf: CONTAINERS_STORAGE_CONF as root;
    rootless, XDG_CONFIG_HOME/XDG_DATA_HOME below the root (see the module docstring), with
    `containers/storage.conf` there linking to the root's storage.conf."""
    paths = BuildPaths(root)
    if not (os.geteuid() != 0 if rootless is None else rootless):
        return {"CONTAINERS_STORAGE_CONF": str(paths.storage_conf)}
    link = paths.config_home / "containers" / "storage.conf"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(paths.storage_conf)
    paths.data_home.mkdir(parents=True, exist_ok=True)
    return {"XDG_CONFIG_HOME": str(paths.config_home), "XDG_DATA_HOME": str(paths.data_home)}


def mounts_under(root: Path, mounts_text: str) -> list[str]:
    """Mount points below `root` in /proc/mounts text, deepest first (the order to unmount them)."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    points = [line.split()[1] for line in mounts_text.splitlines() if len(line.split()) > 2]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def has_containers(graphroot: Path) -> bool:
    """Whether containers-storage may hold working containers in `graphroot` (`<driver>-containers/
    containers.json` is not an empty list). A successful build leaves none: its cleanup then spares
    the `buildah rm --all` process; anything unreadable counts as "may"."""
    try:
        lists = [json.loads(p.read_text()) for p in graphroot.glob("*-containers/containers.json")]
    except (OSError, ValueError):
        return True
    return any(lists) or any(not (d / "containers.json").exists() for d in graphroot.glob("*-containers"))


def cleanup(root: Path, env: Mapping[str, str]) -> None:
    """Remove a build root: buildah containers first (that releases overlay mounts), then the files
    (and its run state on tmpfs).

    A failed build can leave working containers mounted; unmounting them is what lets a pod's
    emptyDir (here: a temp dir) be deleted.
    """
    if not root.exists():
        return
    paths = BuildPaths(root)
    rootless = os.geteuid() != 0
    if paths.storage_conf.exists():
        own = {k: v for k, v in env.items() if k not in _HOST_CONFIG_VARS}
        own.update(storage_env(root, rootless=rootless))  # `rm --all` only ever in this root
        if has_containers(paths.graphroot):
            subprocess.run(["buildah", "rm", "--all"], env=own, capture_output=True, check=False)
        if rootless and paths.graphroot.exists():  # layers hold files of the subordinate ids
            subprocess.run(["buildah", "unshare", "rm", "-rf", str(paths.graphroot)], env=own,
                           capture_output=True, check=False)
    shm = paths.shm_runroot if _private_dir(paths.shm_runroot) else None  # never one planted by others
    mounts = Path("/proc/mounts").read_text()
    for point in mounts_under(root, mounts) + (mounts_under(shm, mounts) if shm else []):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    link = paths.short_tmpdir
    if link.is_symlink():
        link.unlink()
    if shm is not None:
        shutil.rmtree(shm, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
