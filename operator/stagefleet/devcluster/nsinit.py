"""In-namespace init of a dev-cluster container: bind-mount volumes, chdir, exec the command.

The kubelet runs ``unshare -m --propagation private -- python -I -S nsinit.py SPEC.json``, or, on its fast
path, forks each container from one long-lived ``nsinit.py --zygote`` process (see `zygote`) that does the
same steps without a new interpreter. By the time `apply` runs, we are in a private mount namespace, so
every mount made here vanishes with the container's last process and never shows on the host. Stdlib only
and run by path, so startup stays fast. The process execs the container command (same pid), which keeps
signals and the exit status exact.

Mount targets that do not exist yet:
* under a volume mounted earlier in this container: created inside that volume (as Kubernetes does),
  or, if the volume is read-only, the volume is mirrored (next point) instead of written to;
* under an existing host directory other than ``/`` (e.g. ``/dev/termination-log``): the directory is
  mirrored into a private tmpfs (each entry bind-mounted back) and the tmpfs is moved over it, so the new
  entry exists only in this namespace and the host directory is untouched;
* directly under ``/`` (e.g. ``/workspace``): the missing directory is created on the host, because
  mirroring ``/`` itself would need a chroot. It is left behind empty; nothing existing is ever replaced.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import contextlib
import ctypes
import itertools
import json
import os
import sys
from typing import Any

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
CLONE_NEWNS = 0x00020000

_libc = ctypes.CDLL(None, use_errno=True)
_staging = itertools.count()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [s.encode() if s is not None else None for s in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _mirror(directory: str, staging: str) -> None:
    """Replace `directory` (in this namespace only) by a tmpfs with the same entries bind-mounted in."""
    os.makedirs(staging, exist_ok=True)
    _mount("stagefleet-mirror", staging, "tmpfs", 0, "mode=%o" % (os.stat(directory).st_mode & 0o7777))
    for entry in os.scandir(directory):
        dst = os.path.join(staging, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(dst)
            _mount(entry.path, dst, None, MS_BIND | MS_REC)
        else:
            with open(dst, "w"):
                pass
            _mount(entry.path, dst, None, MS_BIND)
    _mount(staging, directory, None, MS_MOVE)


def _create(target: str, is_file: bool, ancestor: str, private: set[str] | None) -> None:
    """mkdir -p (and touch) below `ancestor`; record what we made in `private` when given."""
    parent = os.path.dirname(target) if is_file else target
    missing = []
    d = parent
    while d != ancestor and not os.path.exists(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        os.mkdir(d)
        if private is not None:
            private.add(d)
    if is_file:
        with open(target, "a"):
            pass


def ensure_target(
    target: str, is_file: bool, mounted: list[str], private: set[str], staging_root: str
) -> None:
    """Make `target` exist as a file or directory inside this namespace (see module docstring).

    `mounted` are the mount targets so far (volumes: creating inside them is fine), `private` the
    directories that exist only in this namespace (mirror roots and what we created inside them).
    """
    if os.path.lexists(target):
        return
    ancestor = os.path.dirname(target)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    direct = ancestor in private or _under(ancestor, mounted)
    if not direct and ancestor != "/":
        _mirror(ancestor, os.path.join(staging_root, f"m{next(_staging)}"))
        private.add(ancestor)
    if ancestor == "/" and not direct:
        _create(target, is_file, ancestor, None)  # documented: top-level directories go on the host
        return
    try:
        _create(target, is_file, ancestor, private)
    except OSError:
        if not direct or ancestor in private:
            raise
        # A read-only volume: mirror it rather than write into it.
        _mirror(ancestor, os.path.join(staging_root, f"m{next(_staging)}"))
        private.add(ancestor)
        _create(target, is_file, ancestor, private)


def apply(spec: dict[str, Any]) -> None:
    """Do the mounts and the chdir a spec asks for (everything but the exec)."""
    mounted: list[str] = []
    private: set[str] = set()
    staging_root = spec["staging"]
    # Resolve every source before the first mount: a volume mounted over a host directory (an emptyDir on
    # /tmp, say) would otherwise hide later sources that live below it (the kubelet's own pod directory).
    sources: list[tuple[str, bool, int | None]] = []
    for m in spec["mounts"]:
        source = m["source"]
        is_file = bool(m.get("is_file")) or (os.path.exists(source) and not os.path.isdir(source))
        try:
            fd: int | None = os.open(source, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            fd = None  # let the mount below report it
        sources.append((source, is_file, fd))
    image: list[tuple[str, int]] = []
    for path in spec.get("image_paths") or []:
        with contextlib.suppress(OSError):
            image.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
    for m, (source, is_file, fd) in zip(spec["mounts"], sources, strict=True):
        target = m["target"]
        ensure_target(target, is_file, mounted, private, staging_root)
        try:
            _mount(source if fd is None else f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        except OSError as e:
            raise OSError(e.errno, f"mount {source} -> {target}: {os.strerror(e.errno or 0)}") from None
        finally:
            if fd is not None:
                os.close(fd)
        if m.get("read_only"):
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        mounted.append(target)
        private.difference_update({p for p in private if _under(p, [target])})  # now covered by a volume
    for path, fd in image:
        if any(t != path and _under(path, [t]) for t in mounted):  # a volume hides the "image": rebind
            ensure_target(path, False, mounted, private, staging_root)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    cwd = spec.get("cwd")
    if cwd:
        if not os.path.isdir(cwd):
            ensure_target(cwd, False, mounted, private, staging_root)
        os.chdir(cwd)


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--zygote"]:
        return zygote(int(argv[2]), int(argv[3]))
    with open(argv[1]) as f:
        spec = json.load(f)
    return run(spec)


def run(spec: dict[str, Any]) -> int:
    """Mount, chdir and exec the spec's command; returns (128) only when that failed."""
    status_fd = spec.get("status_fd")
    if status_fd is not None:
        os.set_inheritable(status_fd, False)  # closed by a successful exec: the kubelet sees EOF = started
    try:
        apply(spec)
    except OSError as e:
        _start_error(spec, f"error mounting volumes: {e}")
        return 128
    args: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    # An ignored signal stays ignored across exec: Python ignores SIGPIPE and SIGXFSZ, and a kubelet started
    # in the background by a shell inherits SIGINT and SIGQUIT ignored. Give the command the defaults a
    # container starts with under a real runtime (`yes | head -1` must end). `_signal`: no enum import.
    for sig in _signal.valid_signals():
        if sig not in (_signal.SIGKILL, _signal.SIGSTOP) and _signal.getsignal(sig) == _signal.SIG_IGN:
            _signal.signal(sig, _signal.SIG_DFL)
    try:
        if "/" in args[0]:
            os.execve(args[0], args, env)
        else:
            os.execvpe(args[0], args, env)
    except OSError as e:
        why = "executable file not found in $PATH" if isinstance(e, FileNotFoundError) else e.strerror
        _start_error(spec, f'exec: "{args[0]}": {why}')
    return 128


def zygote(requests_fd: int, replies_fd: int) -> int:
    """Serve container starts by forking this already-initialised process (the kubelet's fast path).

    A fresh ``unshare`` + interpreter per container costs ~30 ms of CPU, which dominates the dev cluster
    when it runs thousands of short pods. Here each request (a datagram on the SOCK_SEQPACKET socket
    `requests_fd`: ``{"id": N, "spec": PATH}`` plus the log fd and the status pipe's write end) forks a
    child that does what ``unshare -m --propagation private`` and `main` do: new session, stdio on the
    log, a private mount namespace, mounts, exec. Replies on the pipe `replies_fd` are lines
    ``S <id> <pid>`` (started) and ``X <pid> <wait status>`` (reaped): the containers are our children, so
    only we can wait for them. Ends when the kubelet closes its socket; running containers live on, as
    they would after a kubelet crash.
    """
    import select
    import signal
    import socket

    for fd in (requests_fd, replies_fd):  # inherited from the kubelet: keep them out of the containers
        os.set_inheritable(fd, False)
    sock = socket.socket(fileno=requests_fd)
    os.set_blocking(replies_fd, True)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def reply(line: str) -> None:
        os.write(replies_fd, line.encode() + b"\n")

    while True:
        ready, _, _ = select.select([requests_fd, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        while True:  # reap everything that ended, whichever fd woke us
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reply(f"X {pid} {status}")
        if requests_fd not in ready:
            continue
        msg, fds, _, _ = socket.recv_fds(sock, 65536, 2)
        if not msg:
            return 0  # the kubelet is gone
        request = json.loads(msg)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            reply(f"E {request.get('id')} expected 2 fds, got {len(fds)}")
            continue
        log_fd, status_fd = fds
        pid = os.fork()
        if pid == 0:  # the container
            code = 128
            spec: dict[str, Any] = {"status_fd": status_fd}
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setsid()
                os.dup2(devnull, 0)
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                os.close(log_fd)
                with open(request["spec"]) as f:
                    spec = {**json.load(f), "status_fd": status_fd}
                if _libc.unshare(CLONE_NEWNS) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
                _mount("none", "/", None, MS_REC | MS_PRIVATE)
                code = run(spec)
            except BaseException as e:  # noqa: BLE001 - a forked child must never return into the loop
                with contextlib.suppress(BaseException):
                    _start_error(spec, f"starting the container: {e}")
            finally:
                os._exit(code)
        os.close(log_fd)
        os.close(status_fd)
        reply(f"S {request.get('id')} {pid}")


def _start_error(spec: dict[str, Any], message: str) -> None:
    """Report why the container could not start: on the status pipe and/or in a file."""
    sys.stderr.write(message + "\n")
    if spec.get("status_fd") is not None:
        os.write(spec["status_fd"], message.encode())
    if spec.get("start_error_file"):
        with open(spec["start_error_file"], "w") as f:
            f.write(message)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
