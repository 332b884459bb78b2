"""A throw-away OCI registry on loopback and the offline busybox base image.

Nothing can be pulled from the internet on the project's machines, so tests, `stagefleet build` in local
mode and the demo all run Debian's `docker-registry` on a free 127.0.0.1 port and push a base image built
from the host's static busybox. `ensure_multiarch_base_image` pushes a two-platform one (an OCI image index
of linux/amd64 and linux/arm64 busybox images; the arm64 busybox comes from Debian's arm64 package), for
builds with `--platform` (docs/multiarch.md).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

BASE_REPO = "base/busybox"
BASE_TAG = "1"
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")


class RegistryError(RuntimeError):
    """The registry did not start, or the base image could not be built."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def registry_config(rootdirectory: Path, addr: str, htpasswd: Path | None = None, delete: bool = True) -> str:
    """docker-registry (distribution 2.8) configuration: filesystem storage, plain HTTP, deletes on (the
    operator removes finished builds' stage tags; `delete=False`: manifest DELETEs answer 405); with
    `htpasswd` (bcrypt entries) every request needs basic auth."""
    text = (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {rootdirectory}\n"
        f"  delete:\n    enabled: {'true' if delete else 'false'}\n"
        f"http:\n  addr: {addr}\n"
    )
    if htpasswd is not None:
        text += f"auth:\n  htpasswd:\n    realm: stagefleet\n    path: {htpasswd}\n"
    return text


def http_status(url: str, method: str = "GET", timeout: float = 2.0,
                headers: Mapping[str, str] | None = None) -> int | None:
    """HTTP status of a request, or None when nothing answers."""
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


class LocalRegistry:
    """`docker-registry serve` on 127.0.0.1:PORT with its data under `workdir`; a context manager."""

    def __init__(self, workdir: Path | None = None, *, port: int | None = None,
                 binary: str = "docker-registry", htpasswd: Path | None = None, delete: bool = True) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="stagefleet-registry-")) if workdir is None else workdir
        self.port = port or free_port()
        self.binary = binary
        self.htpasswd = htpasswd
        self.delete = delete
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def data_dir(self) -> Path:
        """The registry's storage root: every blob it holds is a file below here."""
        return self.workdir / "data"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout: float = 30.0) -> LocalRegistry:
        """Start the registry and wait until GET /v2/ answers 200."""
        if shutil.which(self.binary) is None:
            raise RegistryError(f"{self.binary} not found (apt-get install docker-registry)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(registry_config(self.data_dir, self.host, self.htpasswd, self.delete))
        log = open(self.workdir / "registry.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen([self.binary, "serve", str(config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        ready = {200, 401} if self.htpasswd else {200}  # with auth, /v2/ answers 401 when up
        while http_status(self.url + "/v2/") not in ready:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.workdir / "registry.log").read_text(errors="replace")[-2000:]
                raise RegistryError(f"docker-registry on {self.host} did not become ready:\n{tail}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """Stop the registry by its PID (TERM, then KILL); remove the data if we created the dir."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def find_busybox() -> Path:
    """The host's static busybox binary."""
    for p in BUSYBOX_PATHS:
        if Path(p).is_file():
            return Path(p)
    raise RegistryError("busybox not found (apt-get install busybox-static)")


def make_rootfs(dest: Path, busybox: Path | None = None) -> None:
    """A minimal root filesystem: /bin/busybox, a symlink per applet, /etc/passwd and /etc/group."""
    bb = busybox or find_busybox()
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(bb, dest / "bin" / "busybox")
    applets = subprocess.run([str(bb), "--list"], check=True, capture_output=True, text=True).stdout.split()
    for name in applets:
        link = dest / "bin" / name
        if name != "busybox" and not link.exists():
            link.symlink_to("busybox")
    for d in ("etc", "tmp", "root", "home", "var/tmp"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (dest / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")


def _run(argv: list[str], env: Mapping[str, str]) -> str:
    proc = subprocess.run(argv, env=dict(env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RegistryError(f"{' '.join(argv[:3])} failed: {proc.stderr.strip()[-1500:]}")
    return proc.stdout.strip()


def ensure_base_image(registry_host: str, env: Mapping[str, str], *, repo: str = BASE_REPO,
                      tag: str = BASE_TAG) -> str:
    """Push the busybox base image to `registry_host` unless it is there; return its reference.

    `env` is a buildah environment (see `stagefleet.buildenv.prepare`) that treats the registry as
    insecure; the working container is removed again, the committed image stays in that storage.
    """
    ref = f"{registry_host}/{repo}:{tag}"
    if _served(registry_host, repo, tag):
        return ref
    with tempfile.TemporaryDirectory(prefix="stagefleet-rootfs-", dir=env.get("TMPDIR")) as tmp:
        rootfs = Path(tmp) / "rootfs"
        make_rootfs(rootfs)
        return _commit_and_push(ref, "scratch", env, [
            lambda ctr: ["buildah", "copy", ctr, str(rootfs), "/"],
            lambda ctr: ["buildah", "config", "--env", "PATH=/bin", "--cmd", "/bin/sh", "--workingdir", "/",
                         ctr],
        ])


def _served(registry_host: str, repo: str, tag: str) -> bool:
    return http_status(f"http://{registry_host}/v2/{repo}/manifests/{tag}", method="HEAD") == 200


def _commit_and_push(ref: str, base: str, env: Mapping[str, str],
                     steps: list[Callable[[str], list[str]]]) -> str:
    """A working container from ``base``, each step's buildah command run on it, committed as ``ref``
    and pushed; the container is removed again even when a step fails."""
    ctr = _run(["buildah", "from", base], env)
    try:
        for step in steps:
            _run(step(ctr), env)
        _run(["buildah", "commit", "--rm", ctr, ref], env)
    except BaseException:
        subprocess.run(["buildah", "rm", ctr], env=dict(env), capture_output=True)
        raise
    _run(["buildah", "push", ref, f"docker://{ref}"], env)
    return ref


PAUSE_REPO = "base/pause"


def ensure_pause_image(registry_host: str, env: Mapping[str, str]) -> str:
    """A sandbox ("pause") image for containerd, pushed unless present: the busybox base image sleeping
    forever. Real clusters use a tiny static binary; only its staying alive matters here."""
    ref = f"{registry_host}/{PAUSE_REPO}:{BASE_TAG}"
    if _served(registry_host, PAUSE_REPO, BASE_TAG):
        return ref
    return _commit_and_push(ref, ensure_base_image(registry_host, env), env, [
        lambda ctr: ["buildah", "config", "--entrypoint", '["/bin/sleep", "2147483647"]', "--cmd", "", ctr],
    ])


MULTIARCH_REPO = "base/busybox-multiarch"
#: The platforms of the multi-platform base image, in its index's order.
MULTIARCH_PLATFORMS = ("linux/amd64", "linux/arm64")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
#: ELF e_machine of a Debian architecture's binaries (EM_X86_64, EM_AARCH64).
ELF_MACHINE = {"amd64": 0x3E, "arm64": 0xB7}
BUSYBOX_PACKAGE = "busybox-static"


def busybox_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where Debian's busybox-static packages of other architectures are kept once downloaded:
    $XDG_CACHE_HOME/stagefleet/busybox, else ~/.cache/stagefleet/busybox (beside stagefleet.images' cache)."""
    env = os.environ if env is None else env
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "stagefleet" / "busybox"


def host_arch() -> str:
    """The machine's Debian architecture (`dpkg --print-architecture`)."""
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()


def elf_machine(path: Path) -> int | None:
    """The e_machine field of an ELF file, None when `path` is not one."""
    with open(path, "rb") as f:
        head = f.read(20)
    return int.from_bytes(head[18:20], "little") if head[:4] == b"\x7fELF" and len(head) == 20 else None


def apt_private_options(arch: str, state: Path) -> list[str]:
    """Pure: apt-get options that read the machine's sources for Debian `arch` into a private state
    directory, so `apt-get download PKG:ARCH` works without `dpkg --add-architecture` (the machine's own
    package lists, status and foreign architectures stay untouched)."""
    opts = ["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}",
            "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1"]
    # as root apt would hand the download to its _apt user, who may not write to the cache directory
    return opts + ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else opts


def fetch_busybox(arch: str, cache_dir: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """A static busybox binary of Debian architecture `arch`: the host's for its own architecture, else
    the one in Debian's `busybox-static:ARCH` package, downloaded from the machine's apt sources once into
    `cache_dir` (default `busybox_cache_dir()`) and extracted there; later calls only check the cache.
    Processes sharing the cache wait for each other (a lock file)."""
    if arch == host_arch():
        return find_busybox()
    if arch not in ELF_MACHINE:
        raise RegistryError(f"no busybox for architecture {arch!r} (known: {', '.join(ELF_MACHINE)})")
    where = (cache_dir or busybox_cache_dir(env)) / arch
    where.mkdir(parents=True, exist_ok=True)
    binary = where / "busybox"
    with open(where / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        debs = sorted(where.glob(f"{BUSYBOX_PACKAGE}_*_{arch}.deb"))
        if not debs:
            state = where / "apt"
            for d in (state / "lists" / "partial", state / "cache" / "archives" / "partial"):
                d.mkdir(parents=True, exist_ok=True)
            opts = apt_private_options(arch, state)
            try:
                _apt(["apt-get", *opts, "update", "-qq"], where)
                _apt(["apt-get", *opts, "download", f"{BUSYBOX_PACKAGE}:{arch}"], where)
            finally:
                shutil.rmtree(state, ignore_errors=True)  # ~20 MB of package lists, only needed once
            debs = sorted(where.glob(f"{BUSYBOX_PACKAGE}_*_{arch}.deb"))
            if not debs:
                raise RegistryError(f"apt-get download {BUSYBOX_PACKAGE}:{arch} left no .deb in {where}")
        deb = debs[-1]
        if not binary.is_file() or binary.stat().st_mtime < deb.stat().st_mtime:
            with tempfile.TemporaryDirectory(prefix="busybox-", dir=where) as tmp:
                _apt(["dpkg-deb", "-x", str(deb), tmp], where)
                found = [f for f in (Path(tmp) / p.lstrip("/") for p in BUSYBOX_PATHS) if f.is_file()]
                if not found:
                    raise RegistryError(f"{deb.name} holds no {' or '.join(BUSYBOX_PATHS)}")
                os.replace(found[0], binary)
                os.utime(binary)  # newer than its .deb (dpkg-deb kept the packaged mtime)
        if elf_machine(binary) != ELF_MACHINE[arch]:
            raise RegistryError(f"{binary} is not an {arch} ELF binary (e_machine {elf_machine(binary)})")
    return binary


def _apt(argv: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "APT_CONFIG"}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        what = " ".join(a for a in argv if not a.startswith(("-o", "APT::", "Dir::", "Debug::")))
        raise RegistryError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")


def _platform_image(ref: str, os_name: str, arch: str, busybox: Path, env: Mapping[str, str]) -> None:
    """Push the busybox image of one platform: `busybox` in the rootfs, the config naming os and arch."""
    with tempfile.TemporaryDirectory(prefix="stagefleet-rootfs-", dir=env.get("TMPDIR")) as tmp:
        rootfs = Path(tmp) / "rootfs"
        make_rootfs(rootfs, find_busybox())  # the host's busybox lists the applets: it runs here
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        _commit_and_push(ref, "scratch", env, [
            lambda ctr: ["buildah", "copy", ctr, str(rootfs), "/"],
            lambda ctr: ["buildah", "config", "--arch", arch, "--os", os_name, "--env", "PATH=/bin",
                         "--cmd", "/bin/sh", "--workingdir", "/", ctr],
        ])


def _served_index(registry_host: str, repo: str, tag: str) -> bool:
    return http_status(f"http://{registry_host}/v2/{repo}/manifests/{tag}", method="HEAD",
                       headers={"Accept": ", ".join(INDEX_TYPES)}) == 200


def ensure_multiarch_base_image(registry_host: str, env: Mapping[str, str], *, repo: str = MULTIARCH_REPO,
                                tag: str = BASE_TAG, platforms: tuple[str, ...] = MULTIARCH_PLATFORMS,
                                cache_dir: Path | None = None) -> str:
    """Push a multi-platform busybox base image to `registry_host` unless it is there; return its
    reference (an OCI image index, e.g. "127.0.0.1:PORT/base/busybox-multiarch:1").

    Each platform's image (the rootfs of `make_rootfs` with that architecture's busybox, its config saying
    that architecture) is pushed as TAG-ARCH too; `buildah build --platform linux/ARCH` picks it out of the
    index. Building it runs no foreign binary (the applet list comes from the host's busybox); running
    the image's arm64 binaries needs emulation (stagefleet.binfmt). `env` is a buildah environment (see
    `stagefleet.buildenv.prepare`) that treats the registry as insecure.
    """
    ref = f"{registry_host}/{repo}:{tag}"
    if _served_index(registry_host, repo, tag):
        return ref
    refs: list[tuple[str, str]] = []
    for plat in platforms:
        os_name, _, arch = plat.partition("/")
        arch_ref = f"{registry_host}/{repo}:{tag}-{arch}"
        refs.append((arch, arch_ref))
        if _served(registry_host, repo, f"{tag}-{arch}"):
            continue
        _platform_image(arch_ref, os_name, arch, fetch_busybox(arch, cache_dir), env)
    # buildah 1.28's `manifest add/push` ping https even for a registry registries.conf calls insecure
    insecure = registry_host in env.get("STAGEFLEET_INSECURE_REGISTRIES", "").split(",")
    tls = ["--tls-verify=false"] if insecure else []
    name = f"stagefleet-index-{os.getpid()}-{time.monotonic_ns()}"
    _run(["buildah", "manifest", "create", name], env)
    try:
        for arch, arch_ref in refs:
            _run(["buildah", "manifest", "add", *tls, "--os", "linux", "--arch", arch, name,
                  f"docker://{arch_ref}"], env)
        _run(["buildah", "manifest", "push", *tls, "--all", "--format", "oci", name, f"docker://{ref}"], env)
    finally:
        subprocess.run(["buildah", "manifest", "rm", name], env=dict(env), capture_output=True)
    return ref
