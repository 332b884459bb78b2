"""BuildKit as a peer for the benches: a private dockerd (Debian's docker.io 20.10, its builder is BuildKit)
on a private containerd, everything under one temp dir, started and stopped by the bench.

    with buildkit_daemon(registry_host) as bk:   # None when docker.io is not installed
        seconds = bk.build(dockerfile, base)            # DOCKER_BUILDKIT=1 docker build, warm daemon
        seconds = bk.build(dockerfile, base, tag=ref)   # the same, the image tagged ref
        seconds = bk.push(ref)                          # docker push ref: what a user does next
        bk.prune()                                      # cold again: build cache and images removed

The recipe is the one verified on these machines (own containerd config with root/state/socket in the temp
dir and oom_score 0; dockerd with its data/exec roots, pid file and socket there, no iptables or bridge, the
local registry insecure). A build only builds (the image lands in the daemon's store, nothing is pushed),
as `buildah build` in bench/makespan.py does; `push` is timed apart, so a bench can print both the build and
build + push (stagefleet's figures include pushing the output).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from procs import stop

DOCKER = "/usr/bin/docker"  # Debian's CLI (another `docker` may come first on PATH)
DOCKERD = "/usr/sbin/dockerd"
CONTAINERD = "/usr/bin/containerd"


def available() -> str | None:
    """Why BuildKit cannot be measured here, or None when it can."""
    missing = [p for p in (DOCKER, DOCKERD, CONTAINERD) if not os.access(p, os.X_OK)]
    if missing:
        return f"not installed ({', '.join(missing)} missing: apt-get install docker.io)"
    if os.geteuid() != 0:
        return "needs root (dockerd)"
    return None


class BuildKit:
    def __init__(self, root: Path, registry: str) -> None:
        self.root = root
        self.registry = registry
        self.sock = root / "docker.sock"
        self._procs: list[subprocess.Popen[bytes]] = []

    def _docker(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(self.root / "cli")}
        return subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self) -> None:
        r = self.root
        ctr = r / "containerd"
        ctr.mkdir(parents=True)
        (ctr / "config.toml").write_text(
            "version = 2\n"
            f'root = "{ctr / "root"}"\nstate = "{ctr / "state"}"\noom_score = 0\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{r / "containerd.sock"}"\n'
            f'[ttrpc]\n  address = "{r / "containerd.sock.ttrpc"}"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n')
        self._spawn([CONTAINERD, "--config", str(ctr / "config.toml")], r / "containerd.log")
        self._wait(lambda: (r / "containerd.sock").exists(), "containerd socket")
        (r / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(r / "key.json")}))
        self._spawn(
            [DOCKERD, "--config-file", str(r / "daemon.json"), "--data-root", str(r / "data"),
             "--exec-root", str(r / "exec"), "--pidfile", str(r / "dockerd.pid"), "-H", f"unix://{self.sock}",
             "--containerd", str(r / "containerd.sock"), "--iptables=false", "--ip-forward=false",
             "--ip-masq=false", "--bridge=none", "--insecure-registry", self.registry], r / "dockerd.log")
        self._wait(lambda: self._docker("version", timeout=10).returncode == 0, "dockerd")

    def _spawn(self, argv: list[str], log: Path) -> None:
        with open(log, "wb") as out:  # the child keeps its own descriptor
            self._procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True))

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                break
            if ready():
                return
            time.sleep(0.1)
        raise SystemExit(f"BuildKit: {what} not ready; see the logs in {self.root}")

    def build(self, dockerfile: str, base: str, tag: str | None = None) -> float:
        """`docker build` (BuildKit) of ``dockerfile``'s final stage with BASE=``base``, tagged ``tag`` (a
        local name when None): seconds."""
        ctx = self.root / "ctx" / uuid.uuid4().hex[:8]
        ctx.mkdir(parents=True)
        (ctx / "Dockerfile").write_text(dockerfile)
        t0 = time.monotonic()
        proc = self._docker("build", "--network=host", "--target", "final", "--build-arg", f"BASE={base}",
                            "-t", tag or f"bench:{ctx.name}", str(ctx))
        elapsed = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"BuildKit build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return elapsed

    def push(self, ref: str) -> float:
        """`docker push` of a built ``ref`` to the (insecure, local) registry: seconds."""
        t0 = time.monotonic()
        proc = self._docker("push", ref)
        elapsed = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"BuildKit push of {ref} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return elapsed

    def prune(self) -> None:
        """Drop the build cache and every image (the base too): the next build is cold."""
        for args in (("builder", "prune", "-af"), ("image", "prune", "-af")):
            proc = self._docker(*args)
            if proc.returncode != 0:
                raise SystemExit(f"BuildKit: docker {' '.join(args)} failed: {proc.stderr[-1000:]}")

    def stop(self) -> None:
        for p in reversed(self._procs):  # dockerd first: it unmounts its layers on the way out
            stop(p)
        self._procs.clear()
        _remove_buildkit_cgroups()


def _remove_buildkit_cgroups() -> None:
    """dockerd's BuildKit leaves empty `docker/buildkit` cgroups behind in each hierarchy."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for leaf in (hierarchy / "docker" / "buildkit", hierarchy / "docker"):
            with contextlib.suppress(OSError):  # absent, or not empty (then not ours to remove)
                leaf.rmdir()


@contextmanager
def buildkit_daemon(registry: str) -> Iterator[BuildKit | None]:
    """A started BuildKit, stopped and removed on exit; None (with the reason printed) when unavailable."""
    why = available()
    if why is not None:
        print(f"BuildKit: {why}; not measured", flush=True)
        yield None
        return
    # unix socket paths are limited to 108 bytes: a short directory of its own, not under `work`
    root = Path(tempfile.mkdtemp(prefix="sf-bk-"))
    bk = BuildKit(root, registry)
    try:
        bk.start()
        yield bk
    finally:
        bk.stop()
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _unmount_under(root: Path) -> None:
    """Unmount whatever dockerd left mounted under ``root`` (deepest first) before it is removed."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
