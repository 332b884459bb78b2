"""The in-namespace container init (`nsinit.py`) run for real, both ways the kubelet starts it: under
`unshare -m --propagation private`, and forked by the container zygote (`nsinit.py --zygote`, `zygote.py`).

Needs root (bind mounts); every mount lives in the child's private namespace and vanishes with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stagefleet.devcluster import kubelet
from stagefleet.devcluster.zygote import LOST_EXIT, Zygote, signal_container

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


Launch = Callable[[Path], subprocess.CompletedProcess[str]]


def exec_nsinit(spec_file: Path) -> subprocess.CompletedProcess[str]:
    """nsinit exactly as the kubelet's slow path starts it: in a private mount namespace, isolated Python."""
    argv = ["unshare", "-m", "--propagation", "private", "--", sys.executable, "-I", "-S", kubelet.NSINIT]
    return subprocess.run([*argv, str(spec_file)], capture_output=True, text=True, timeout=60, check=False)


async def _zygote_run(spec_file: Path, log: Path) -> tuple[int, bytes]:
    """Start the spec through a fresh zygote as the kubelet does; (exit code, status-pipe bytes)."""
    zygote = await Zygote.start(sys.executable, kubelet.NSINIT)
    status_r, status_w = os.pipe()
    try:
        with open(log, "ab") as f:
            proc = await zygote.spawn(spec_file, f.fileno(), status_w)
        os.close(status_w)
        status = await asyncio.to_thread(_read_all, status_r)
        return await asyncio.wait_for(proc.wait(), 60), status
    finally:
        os.close(status_r)
        await zygote.aclose()


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def zygote_nsinit(spec_file: Path) -> subprocess.CompletedProcess[str]:
    """nsinit as the kubelet's fast path starts it; stdout and stderr share the log, as in a pod."""
    log = spec_file.with_suffix(".log")
    log.unlink(missing_ok=True)
    code, _ = asyncio.run(_zygote_run(spec_file, log))
    out = log.read_text()
    return subprocess.CompletedProcess([str(spec_file)], code, out, out)


@pytest.fixture(params=["unshare", "zygote"])
def launch(request: pytest.FixtureRequest) -> Launch:
    return exec_nsinit if request.param == "unshare" else zygote_nsinit


def run_init(
    launch: Launch, tmp_path: Path, mounts: list[dict[str, Any]], script: str, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    spec = {
        "mounts": mounts,
        "argv": ["sh", "-c", script],
        "env": {"PATH": "/usr/bin:/bin", "X": "y"},
        "cwd": cwd,
        "staging": str(tmp_path / "staging"),
        "start_error_file": str(tmp_path / "start-error"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return launch(tmp_path / "spec.json")


def test_mounts_are_private_readonly_and_leave_the_host_untouched(launch: Launch, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "password").write_text("hunter2")
    term = tmp_path / "term"
    term.write_text("")
    tag = uuid.uuid4().hex[:8]
    secret_dir = f"/etc/sf-test-{tag}/creds"  # /etc exists, the rest does not: mirrored, not created
    script = (
        f"cat {secret_dir}/password; echo; "
        f"touch {secret_dir}/new 2>/dev/null && echo WRITABLE || echo read-only; "
        "echo done > /dev/termination-log; echo $X; pwd"
    )
    res = run_init(
        launch,
        tmp_path,
        [
            {"source": str(vol), "target": secret_dir, "read_only": True},
            {"source": str(term), "target": "/dev/termination-log", "read_only": False, "is_file": True},
        ],
        script,
        cwd=str(tmp_path / "wd"),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n") == ["hunter2", "read-only", "y", str(tmp_path / "wd"), ""]
    assert term.read_text() == "done\n"
    assert not os.path.exists(f"/etc/sf-test-{tag}")
    assert not os.path.exists("/dev/termination-log")
    assert not (vol / "new").exists()


def test_missing_top_level_directory_is_created_on_the_host(launch: Launch, tmp_path: Path) -> None:
    target = f"/sf-test-{uuid.uuid4().hex[:8]}"
    vol = tmp_path / "vol"
    vol.mkdir()
    try:
        res = run_init(
            launch,
            tmp_path,
            [{"source": str(vol), "target": target + "/work", "read_only": False}],
            f"echo hi > {target}/work/out",
        )
        assert res.returncode == 0, res.stderr
        assert (vol / "out").read_text() == "hi\n"
        assert os.listdir(target + "/work") == []  # on the host: an empty mount point only
    finally:
        os.rmdir(target + "/work")
        os.rmdir(target)


def test_nested_mount_creates_its_mount_point_inside_the_outer_volume(launch: Launch, tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    (inner / "f").write_text("inner")
    res = run_init(
        launch,
        tmp_path,
        [
            {"source": str(outer), "target": str(tmp_path / "mnt")},
            {"source": str(inner), "target": str(tmp_path / "mnt" / "sub")},
        ],
        f"cat {tmp_path}/mnt/sub/f",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "inner"
    assert (outer / "sub").is_dir()


def test_exit_status_and_exec_failure(launch: Launch, tmp_path: Path) -> None:
    assert run_init(launch, tmp_path, [], "exit 7").returncode == 7
    piped = run_init(launch, tmp_path, [], "yes | head -1")  # `yes` must die of SIGPIPE, not loop on EPIPE
    assert piped.returncode == 0 and piped.stdout.startswith("y\n")
    assert "Broken pipe" not in piped.stdout + piped.stderr  # what `yes` says when SIGPIPE is ignored
    spec = json.loads((tmp_path / "spec.json").read_text())
    spec["argv"] = ["no-such-command-xyz"]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = launch(tmp_path / "spec.json")
    assert res.returncode == 128
    assert (
        tmp_path / "start-error"
    ).read_text() == 'exec: "no-such-command-xyz": executable file not found in $PATH'


def test_worker_pod_layout_under_existing_system_dirs(launch: Launch, tmp_path: Path) -> None:
    """The operator's worker pod layout: several mounts below /run and /var/lib, none left on the host."""
    tag = uuid.uuid4().hex[:8]
    vols = {}
    for name in ("storage", "dockerfile", "secret0", "secret1"):
        vols[name] = tmp_path / name
        vols[name].mkdir()
        (vols[name] / "f").write_text(name)
    run_dir, lib_dir = f"/run/sf-{tag}", f"/var/lib/sf-{tag}"
    mounts = [
        {"source": str(vols["storage"]), "target": lib_dir},
        {"source": str(vols["dockerfile"]), "target": f"{run_dir}/dockerfile", "read_only": True},
        {"source": str(vols["secret0"]), "target": f"{run_dir}/secrets/0", "read_only": True},
        {"source": str(vols["secret1"]), "target": f"{run_dir}/secrets/1", "read_only": True},
    ]
    files = f"{lib_dir}/f {run_dir}/dockerfile/f {run_dir}/secrets/0/f {run_dir}/secrets/1/f"
    script = f"cat {files}; echo; ls /run | wc -l"
    res = run_init(launch, tmp_path, mounts, script)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert "".join(lines[:-2]) == "storagedockerfilesecret0secret1"
    assert int(lines[-2]) == len(os.listdir("/run")) + 1  # the host's /run entries, plus ours
    assert not os.path.exists(run_dir) and not os.path.exists(lib_dir)


def test_mount_point_inside_a_read_only_volume_does_not_write_into_it(launch: Launch, tmp_path: Path) -> None:
    ro, inner = tmp_path / "ro", tmp_path / "inner"
    ro.mkdir()
    inner.mkdir()
    (ro / "keep").write_text("k")
    (inner / "f").write_text("inner")
    target = tmp_path / "mnt"
    res = run_init(
        launch,
        tmp_path,
        [
            {"source": str(ro), "target": str(target), "read_only": True},
            {"source": str(inner), "target": str(target / "sub")},
        ],
        f"cat {target}/keep {target}/sub/f",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "kinner"
    assert sorted(os.listdir(ro)) == ["keep"]


def _spec(tmp_path: Path, script: str) -> Path:
    spec = {
        "mounts": [],
        "argv": ["sh", "-c", script],
        "env": {"PATH": "/usr/bin:/bin"},
        "cwd": None,
        "staging": str(tmp_path / "staging"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return tmp_path / "spec.json"


def test_zygote_container_sees_only_its_stdio_and_status_pipe_closes_on_exec(tmp_path: Path) -> None:
    """No zygote fd leaks into a container; the status pipe is empty on a good start, a message on a bad."""
    script = (
        "echo $(ls /proc/self/fd); echo $(ps -o sid= -p $$) $$; readlink /proc/self/ns/mnt; "
        "grep SigIgn /proc/self/status"
    )
    spec_file = _spec(tmp_path, script)
    code, status = asyncio.run(_zygote_run(spec_file, tmp_path / "log"))
    fds, session, mnt_ns, ignored, _ = (tmp_path / "log").read_text().split("\n")
    assert int(ignored.split()[1], 16) == 0  # no signal ignored (Python's SIGPIPE/SIGXFSZ reset)
    assert code == 0 and status == b""
    assert sorted(fds.split()) == ["0", "1", "2", "3"]  # stdio, plus the fd `ls` opened for /proc/self/fd
    sid, pid = session.split()
    assert sid == pid  # its own session (the kubelet kills the process group)
    assert mnt_ns != os.readlink("/proc/self/ns/mnt")  # a private mount namespace

    spec = json.loads(spec_file.read_text())
    spec["argv"] = ["no-such-command-xyz"]
    spec_file.write_text(json.dumps(spec))
    code, status = asyncio.run(_zygote_run(spec_file, tmp_path / "log"))
    assert code == 128
    assert status == b'exec: "no-such-command-xyz": executable file not found in $PATH'


def test_zygote_reports_signals_and_concurrent_containers(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        zygote = await Zygote.start(sys.executable, kubelet.NSINIT)
        try:
            procs = []
            for i, script in enumerate(["exit 3", "sleep 30", "true", "kill -TERM $$"]):
                d = tmp_path / str(i)
                d.mkdir()
                with open(d / "log", "ab") as log:
                    r, w = os.pipe()
                    procs.append(await zygote.spawn(_spec(d, script), log.fileno(), w))
                    os.close(w)
                    os.close(r)
            signal_container(procs[1].pid, signal.SIGKILL)  # (its group may not exist yet: setsid races)
            return list(await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 60))
        finally:
            await zygote.aclose()

    assert asyncio.run(scenario()) == [3, -signal.SIGKILL, 0, -signal.SIGTERM]


def test_running_containers_outlive_a_lost_zygote(tmp_path: Path) -> None:
    """The zygote dies: a running container is still waited for (pidfd), later starts fail cleanly."""

    async def scenario() -> tuple[int, bool, str]:
        zygote = await Zygote.start(sys.executable, kubelet.NSINIT)
        with open(tmp_path / "log", "ab") as log:
            r, w = os.pipe()
            proc = await zygote.spawn(_spec(tmp_path, "sleep 0.5"), log.fileno(), w)
            os.close(w)
            os.close(r)
        zygote._proc.kill()
        code = await asyncio.wait_for(proc.wait(), 30)
        alive = zygote.alive
        try:
            await zygote.spawn(tmp_path / "spec.json", 0, 1)
            error = ""
        except RuntimeError as e:
            error = str(e)
        await zygote.aclose()
        return code, alive, error

    code, alive, error = asyncio.run(scenario())
    assert code == LOST_EXIT and not alive
    assert "zygote is gone" in error


def test_a_start_given_up_kills_the_container_and_keeps_no_exit_status(tmp_path: Path) -> None:
    """A pod runner cancelled while its container starts: the container is killed and its exit is not
    kept (a later container reusing the pid must not inherit it)."""

    async def scenario() -> tuple[list[int], dict[int, int], set[int]]:
        zygote = await Zygote.start(sys.executable, kubelet.NSINIT)
        given_up: list[int] = []
        abandon = zygote._abandon

        def record(pid: int) -> None:
            given_up.append(pid)
            abandon(pid)

        zygote._abandon = record  # type: ignore[method-assign]
        try:
            r, w = os.pipe()
            with open(tmp_path / "log", "ab") as log:
                task = asyncio.create_task(zygote.spawn(_spec(tmp_path, "exec sleep 30"), log.fileno(), w))
                await asyncio.sleep(0)  # the request is sent; the answer has not been read yet
                task.cancel()
            os.close(w)
            os.close(r)
            deadline = time.monotonic() + 30
            while not given_up or zygote._abandoned:
                assert time.monotonic() < deadline, "the abandoned container's exit never came"
                await asyncio.sleep(0.05)
            return given_up, dict(zygote._early_exits), set(zygote._abandoned)
        finally:
            await zygote.aclose()

    given_up, early, abandoned = asyncio.run(scenario())
    assert len(given_up) == 1 and early == {} and abandoned == set()
    assert not os.path.exists(f"/proc/{given_up[0]}")  # killed and reaped, not left sleeping
