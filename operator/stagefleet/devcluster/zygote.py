"""The kubelet's side of the container zygote (`nsinit.zygote`): start containers by fork, not exec.

Each container of the dev cluster used to cost an ``unshare`` and a fresh Python (~30 ms of CPU), which on
two cores running thousands of short pods competed with the very control plane being measured. The
zygote is one long-lived ``python -I -S nsinit.py --zygote`` child; a start request carries the path of
the container's spec file and two fds (its log, the write end of its status pipe), and the zygote
answers with the pid, later with the wait status. `ZygoteProcess` offers what the kubelet uses of
`asyncio.subprocess.Process` (``pid``, ``returncode``, ``wait()``), so the two launch paths are
interchangeable. If the zygote dies, running containers are watched through pidfds and the kubelet falls
back to ``unshare`` for new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
from pathlib import Path

SEND_TIMEOUT = 5.0  # a zygote that does not take a request within this is treated as dead
LOST_EXIT = 128 + signal.SIGKILL  # reported for a container whose exit status died with the zygote


def signal_container(pid: int, sig: int) -> None:
    """Signal a container's process group and its main process: a container just forked may not have
    called setsid yet, so its group does not exist and only the process itself can be reached."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, sig)


class ZygoteError(RuntimeError):
    """The zygote could not start a container (it is gone or refused the request)."""


class ZygoteProcess:
    """A container started by the zygote: the subset of `asyncio.subprocess.Process` the kubelet uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def _exited(self, returncode: int) -> None:
        if not self._done.done():
            self.returncode = returncode
            self._done.set_result(returncode)

    async def wait(self) -> int:
        """The exit code, negative for a signal (as asyncio reports it)."""
        return await asyncio.shield(self._done)


class Zygote:
    """One zygote process and the reader of its replies."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        sock: socket.socket,
        replies: asyncio.StreamReader,
        transport: asyncio.BaseTransport,
    ) -> None:
        self._proc = proc
        self._sock = sock
        self._replies = replies
        self._transport = transport
        self._ids = itertools.count(1)
        self._starting: dict[int, asyncio.Future[int]] = {}
        self._running: dict[int, ZygoteProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._abandoned: set[int] = set()  # started for a caller that gave up: killed, exit status dropped
        self.alive = True
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, python: str, nsinit: str | Path) -> Zygote:
        """Launch the zygote; its requests socket and replies pipe are the only fds it inherits."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        replies_r, replies_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                python,
                "-I",
                "-S",
                str(nsinit),
                "--zygote",
                str(theirs.fileno()),
                str(replies_w),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), replies_w),
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            os.close(replies_r)
            raise
        finally:
            theirs.close()
            os.close(replies_w)
        ours.settimeout(SEND_TIMEOUT)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(replies_r, "rb", buffering=0)
        )
        return cls(proc, ours, reader, transport)

    async def spawn(self, spec_file: Path, log_fd: int, status_fd: int) -> ZygoteProcess:
        """Start the container described by `spec_file` (nsinit's format); fds are duplicated, not taken."""
        if not self.alive:
            raise ZygoteError("the zygote is gone")
        request_id = next(self._ids)
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._starting[request_id] = started
        try:
            message = json.dumps({"id": request_id, "spec": str(spec_file)}).encode()
            socket.send_fds(self._sock, [message], [log_fd, status_fd])
        except OSError as e:
            self._starting.pop(request_id, None)
            self._lost(f"sending a start request: {e}")
            raise ZygoteError(f"the zygote is gone: {e}") from None
        try:
            pid = await started
        except asyncio.CancelledError:
            # The pod runner was cancelled while its container was being started: nobody will wait for
            # it, and its exit must not be kept for a later container that reuses the pid.
            if started.done() and not started.cancelled() and started.exception() is None:
                self._abandon(started.result())
            raise
        proc = ZygoteProcess(pid)
        self._running[pid] = proc
        if pid in self._early_exits:
            proc._exited(self._early_exits.pop(pid))
        return proc

    async def _read(self) -> None:
        try:
            while line := await self._replies.readline():
                kind, first, rest = line.decode().rstrip("\n").split(" ", 2)
                if kind == "S":
                    future = self._starting.pop(int(first), None)
                    if future is not None and not future.done():
                        future.set_result(int(rest))
                    else:  # its caller was cancelled before the answer came
                        self._abandon(int(rest))
                elif kind == "X":
                    code = os.waitstatus_to_exitcode(int(rest))
                    if int(first) in self._abandoned:
                        self._abandoned.discard(int(first))
                        continue
                    proc = self._running.pop(int(first), None)
                    if proc is None:  # the reply to its start request is still being handled
                        self._early_exits[int(first)] = code
                    else:
                        proc._exited(code)
                elif kind == "E":
                    future = self._starting.pop(int(first), None)
                    if future is not None and not future.done():
                        future.set_exception(ZygoteError(rest))
        except (OSError, ValueError) as e:
            self._lost(f"reading its replies: {e}")
            return
        self._lost("it exited")

    def _abandon(self, pid: int) -> None:
        """Kill a container nobody waits for; drop its exit status (now or when it comes)."""
        if self._early_exits.pop(pid, None) is not None:
            return  # already reaped: the pid may belong to someone else by now
        signal_container(pid, signal.SIGKILL)
        self._abandoned.add(pid)

    def _lost(self, why: str) -> None:
        """The zygote is gone: fail pending starts, learn running containers' ends from pidfds."""
        if not self.alive:
            return
        self.alive = False
        print(f"kubelet: container zygote lost ({why}); starting containers with unshare", file=sys.stderr)
        for future in self._starting.values():
            if not future.done():
                future.set_exception(ZygoteError(f"the zygote is gone ({why})"))
        self._starting.clear()
        for proc in list(self._running.values()):
            asyncio.get_running_loop().create_task(_watch_orphan(proc))
        self._running.clear()
        self.close()

    def close(self) -> None:
        """Stop the zygote (running containers live on, as after a kubelet restart)."""
        self.alive = False
        with contextlib.suppress(OSError):
            self._sock.close()
        self._transport.close()
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def aclose(self) -> None:
        self.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._proc.wait()


async def _watch_orphan(proc: ZygoteProcess) -> None:
    """Wait for a container whose parent (the zygote) died: its exit status is lost with it."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        proc._exited(LOST_EXIT)
        return
    ended = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(pidfd, ended.set)
    try:
        await ended.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    proc._exited(LOST_EXIT)
