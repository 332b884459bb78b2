"""A throw-away OCI registry on loopback and the offline busybox base image.

Nothing can be pulled from the internet on the project's machines, so tests, `stagefleet build` in local
mode and the demo all run Debian's `docker-registry` on a free 127.0.0.1 port and push a base image built
from the host's static busybox.
"""

from __future__ import annotations

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


def http_status(url: str, method: str = "GET", timeout: float = 2.0) -> int | None:
    """HTTP status of a request, or None when nothing answers."""
    req = urllib.request.Request(url, method=method)
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
