"""`pods/log` served from the files the kubelet writes: logs_dir/<namespace>/<pod>/<container>.log."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import errors
from .storage import Obj

POLL_SECONDS = 0.2


def pick_container(pod: Obj, container: str | None) -> str:
    spec = pod.get("spec") or {}
    names = [c.get("name") for c in spec.get("containers") or []]
    init = [c.get("name") for c in spec.get("initContainers") or []]
    name = pod["metadata"]["name"]
    if container:
        if container not in names and container not in init:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        return container
    if len(names) == 1:
        return str(names[0])
    raise errors.bad_request(
        f"a container name must be specified for pod {name}, choose one of: "
        f"[{' '.join(str(n) for n in names)}]"
        + (f" or one of the init containers: [{' '.join(str(n) for n in init)}]" if init else "")
    )


def container_done(pod: Obj | None, container: str) -> bool:
    if pod is None:
        return True
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return True
    for s in list(status.get("containerStatuses") or []) + list(status.get("initContainerStatuses") or []):
        if s.get("name") == container and "terminated" in (s.get("state") or {}):
            return True
    return False


def _stamp(line: bytes, when: dt.datetime) -> bytes:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f000Z").encode() + b" " + line


def _tail(data: bytes, n: int) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:]) if n > 0 else b""


async def serve_log(
    request: web.Request, logs_dir: Path, pod: Obj, params: Any, refetch: Callable[[], Obj | None]
) -> web.StreamResponse:
    container = pick_container(pod, params.get("container"))
    ns, name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
    suffix = ".previous.log" if params.get("previous") == "true" else ".log"
    path = logs_dir / ns / name / f"{container}{suffix}"
    if not path.exists():
        if suffix == ".previous.log":
            raise errors.bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
        raise errors.bad_request(
            f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
        )
    timestamps = params.get("timestamps") == "true"
    limit = int(params["limitBytes"]) if params.get("limitBytes") else None
    data = path.read_bytes()
    offset = len(data)
    if params.get("tailLines"):
        data = _tail(data, int(params["tailLines"]))
    if timestamps:
        mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        data = b"".join(_stamp(line, mtime) for line in data.splitlines(keepends=True))
    if params.get("follow") != "true":
        if limit is not None:
            data = data[:limit]
        return web.Response(body=data, content_type="text/plain")
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    sent = 0

    async def send(chunk: bytes) -> bool:
        nonlocal sent
        if limit is not None:
            chunk = chunk[: max(0, limit - sent)]
        if chunk:
            await resp.write(chunk)
            sent += len(chunk)
        return limit is None or sent < limit

    if not await send(data):
        return resp
    pending = b""
    while True:
        done = container_done(refetch(), container)
        with path.open("rb") as f:
            f.seek(offset)
            new = f.read()
        offset += len(new)
        pending += new
        if done:  # flush everything, a last line without newline included
            lines, pending = pending.splitlines(keepends=True), b""
        else:  # hold back a partial line until its newline arrives
            *complete, pending = pending.split(b"\n")
            lines = [ln + b"\n" for ln in complete]
        now = dt.datetime.now(dt.UTC)
        for line in lines:
            if line and not await send(_stamp(line, now) if timestamps else line):
                return resp
        if done:
            return resp
        await asyncio.sleep(POLL_SECONDS)
