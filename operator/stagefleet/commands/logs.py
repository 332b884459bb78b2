"""`stagefleet logs NAME [-f] [--stage S]`: every stage pod's log, interleaved, with coloured stage prefixes.

Pods are found by the ImageBuild's UID and its current run (labels `stagefleet.io/imagebuild-uid` and
`stagefleet.io/generation`: a name over 63 characters is hashed in the name label, and pods of an earlier
run or of a deleted ImageBuild of the same name are not this build's); `stagefleet.io/group` says which
plan group a pod runs, and the ImageBuild's `status.stages` which stages that group holds. Lines of a
multi-stage group are attributed to a stage the same way local mode does (`local.StageTracker`).
Everything that decides what is printed is pure; the API calls are at the bottom.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import heapq
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stagefleet.commands.status import (
    TERMINAL_PHASES,
    add_kube_args,
    get_imagebuild,
    kube_client,
    report_failure,
)
from stagefleet.local import StageTracker, looks_like_result

IMAGEBUILD_LABEL = "stagefleet.io/imagebuild"
UID_LABEL = "stagefleet.io/imagebuild-uid"
RUN_LABEL = "stagefleet.io/generation"  # (holds the run: the generation, or later after a rebuild)
GROUP_LABEL = "stagefleet.io/group"
STAGE_LABEL = "stagefleet.io/stage"
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta",
           "bright_green", "bright_yellow", "bright_blue", "red")
POLL_SECONDS = 1.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("logs", help="print an ImageBuild's stage pods' logs, stage-prefixed",
                              description="All stage pods' logs of an ImageBuild, interleaved in time order, "
                                          "each line prefixed with its stage.")
    p.add_argument("name", help="ImageBuild name")
    add_kube_args(p)
    p.add_argument("-f", "--follow", action="store_true",
                   help="stream the logs until the build is over (new stage pods are picked up)")
    p.add_argument("--stage", help="only this stage's pod")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------ pure


@dataclass(frozen=True)
class StagePod:
    """One worker pod and the stages its group builds."""

    pod: str
    group: str
    stages: tuple[str, ...]
    container: str | None
    phase: str
    started: bool          # has (or had) a running container, so it has a log to read


def pod_selector(obj: Mapping[str, Any]) -> str:
    """The label selector of the ImageBuild's worker pods of its current run (by UID; by name only for an
    object without one)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    uid = meta.get("uid")
    if not uid:
        return f"{IMAGEBUILD_LABEL}={meta.get('name')}"
    run = status.get("run", status.get("observedGeneration"))
    if isinstance(run, int) and not isinstance(run, bool):
        return f"{UID_LABEL}={uid},{RUN_LABEL}={run}"
    return f"{UID_LABEL}={uid}"


def group_stages(status: Mapping[str, Any]) -> dict[str, list[str]]:
    """Plan group → its stages, in the order `status.stages` lists them."""
    out: dict[str, list[str]] = {}
    for st in status.get("stages") or []:
        if isinstance(st, Mapping) and st.get("group") and st.get("name"):
            out.setdefault(str(st["group"]), []).append(str(st["name"]))
    return out


def stage_pods(pods: Iterable[Mapping[str, Any]], status: Mapping[str, Any]) -> list[StagePod]:
    """The ImageBuild's pods, oldest first, each with its group's stages."""
    groups = group_stages(status)
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        group = str(labels.get(GROUP_LABEL) or "?")
        fallback = [str(labels[STAGE_LABEL])] if labels.get(STAGE_LABEL) else [group]
        stages = tuple(groups.get(group) or fallback)
        containers = (pod.get("spec") or {}).get("containers") or []
        pstatus = pod.get("status") or {}
        cstatuses = pstatus.get("containerStatuses") or []
        started = any((cs.get("state") or {}).get("running") or (cs.get("state") or {}).get("terminated")
                      for cs in cstatuses if isinstance(cs, Mapping))
        started = started or pstatus.get("phase") in ("Running", "Succeeded", "Failed")
        out.append((str(meta.get("creationTimestamp") or ""), StagePod(
            pod=str(meta.get("name")), group=group, stages=stages,
            container=str(containers[0]["name"]) if containers and containers[0].get("name") else None,
            phase=str(pstatus.get("phase") or "Pending"), started=bool(started))))
    out.sort(key=lambda cp: (cp[0], cp[1].pod))
    return [sp for _, sp in out]


def select(pods: Sequence[StagePod], stage: str | None) -> list[StagePod]:
    """The pods whose group builds `stage` (all of them without a filter)."""
    return [p for p in pods if stage is None or stage in p.stages]


def stage_colors(stages: Iterable[str]) -> dict[str, str]:
    """A stable colour per stage, in plan order, so a stage keeps its colour between runs."""
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(dict.fromkeys(stages))}


def split_timestamp(line: str) -> tuple[_dt.datetime | None, str]:
    """Split the RFC 3339 timestamp that `timestamps=true` puts before each log line."""
    head, sep, rest = line.partition(" ")
    if not sep or len(head) < 20 or head[4:5] != "-" or "T" not in head:
        return None, line
    stamp = head.rstrip("Z")
    offset = "+00:00" if head.endswith("Z") else ""
    if "." in stamp:  # Kubernetes writes nanoseconds; Python parses microseconds
        main, _, frac = stamp.partition(".")
        tz = ""
        for sign in ("+", "-"):
            if sign in frac:
                frac, _, tzpart = frac.partition(sign)
                tz = sign + tzpart
        stamp = f"{main}.{frac[:6].ljust(6, '0')}{tz}"
    try:
        ts = _dt.datetime.fromisoformat(stamp + offset)
    except ValueError:
        return None, line
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=_dt.UTC)
    return ts, rest


def display(text: str) -> str:
    """A worker's result JSON line shown as a one-line outcome; any other line as it is."""
    if not looks_like_result(text):
        return text
    import json

    r = json.loads(text)
    if r.get("ok"):
        cached = f"{r.get('cachedSteps', 0)}/{r.get('steps', 0)} steps cached"
        return f"==> pushed {r.get('image')}@{r.get('digest')} ({cached})"
    err = r.get("error") or {}
    return f"==> FAILED ({err.get('kind', 'error')}): {err.get('message', '')}"


@dataclass(frozen=True)
class LogLine:
    time: _dt.datetime | None
    stage: str
    text: str


def attribute(pod: StagePod, raw_lines: Iterable[str], *, timestamps: bool) -> list[LogLine]:
    """Per line: its timestamp (if asked for) and the stage of the pod's group it belongs to."""
    tracker = StageTracker(pod.stages)
    out = []
    for raw in raw_lines:
        ts, text = split_timestamp(raw) if timestamps else (None, raw)
        stage, shown = tracker.feed(text.rstrip("\r"))
        out.append(LogLine(ts, stage, display(shown)))
    return out


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def interleave(per_pod: Sequence[Sequence[LogLine]]) -> list[LogLine]:
    """Merge the pods' lines by timestamp, keeping each pod's own order (a line without a timestamp
    sorts with the line before it)."""
    keyed: list[list[tuple[_dt.datetime, int, int, LogLine]]] = []
    for p, lines in enumerate(per_pod):
        last = _EPOCH
        seq = []
        for i, ln in enumerate(lines):
            last = ln.time or last
            seq.append((last, p, i, ln))
        keyed.append(seq)
    return [item[3] for item in heapq.merge(*keyed)]


def prefix(stage: str, width: int) -> str:
    return f"{stage:<{width}} |"


def keep(line: LogLine, stage_filter: str | None) -> bool:
    return stage_filter is None or line.stage == stage_filter


# ------------------------------------------------------------------------------------------------ I/O


class Printer:
    """Prints stage-prefixed lines; colours only on a terminal (rich decides)."""

    def __init__(self, stages: Iterable[str]) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)
        self.colors = stage_colors(stages)
        self.width = max((len(s) for s in self.colors), default=5)

    def add(self, stages: Iterable[str]) -> None:
        for s in stages:
            if s not in self.colors:
                self.colors[s] = PALETTE[len(self.colors) % len(PALETTE)]
                self.width = max(self.width, len(s))

    def line(self, ln: LogLine) -> None:
        from rich.text import Text

        self.console.print(Text.assemble((prefix(ln.stage, self.width), self.colors.get(ln.stage, "white")),
                                         " ", ln.text))


def list_pods(core: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    resp = core.list_namespaced_pod(namespace, label_selector=selector)
    api_client = core.api_client
    return [api_client.sanitize_for_serialization(p) for p in resp.items]


def read_log(core: Any, namespace: str, pod: StagePod, *, timestamps: bool) -> list[str]:
    from kubernetes.client.exceptions import ApiException

    kwargs: dict[str, Any] = {"timestamps": timestamps}
    if pod.container:
        kwargs["container"] = pod.container
    try:
        text = core.read_namespaced_pod_log(pod.pod, namespace, **kwargs)
    except ApiException as e:
        if e.status in (400, 404):  # not started yet, or gone
            return []
        raise
    return str(text).splitlines()


def stream_log(core: Any, namespace: str, pod: StagePod, stop: threading.Event) -> Iterator[str]:
    """Follow one pod's log; waits while its container has not started yet."""
    from kubernetes.client.exceptions import ApiException

    kwargs: dict[str, Any] = {"follow": True, "_preload_content": False}
    if pod.container:
        kwargs["container"] = pod.container
    while not stop.is_set():
        try:
            resp = core.read_namespaced_pod_log(pod.pod, namespace, **kwargs)
            break
        except ApiException as e:
            if e.status == 404:
                return
            if e.status != 400:
                raise
            time.sleep(POLL_SECONDS)
    else:
        return
    buf = b""
    try:
        for chunk in resp.stream(4096):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                yield ln.decode(errors="replace")
            if stop.is_set():
                return
        if buf:
            yield buf.decode(errors="replace")
    finally:
        resp.release_conn()


def _follow(core: Any, custom_get: Any, namespace: str, name: str, stage: str | None,
            printer: Printer) -> int:
    """Stream every stage pod as it appears, until the build is over and every stream ended."""
    lines: queue.Queue[LogLine] = queue.Queue()
    stop = threading.Event()
    threads: dict[str, threading.Thread] = {}

    def worker(sp: StagePod) -> None:
        tracker = StageTracker(sp.stages)
        try:
            for raw in stream_log(core, namespace, sp, stop):
                st, text = tracker.feed(raw.rstrip("\r"))
                lines.put(LogLine(None, st, display(text)))
        except Exception as e:  # one pod's stream failing must not end the others
            lines.put(LogLine(None, sp.stages[-1], f"(log stream of pod {sp.pod} ended: {e})"))

    try:
        while True:
            obj = custom_get()
            status = obj.get("status") or {}
            pods = select(stage_pods(list_pods(core, namespace, pod_selector(obj)), status), stage)
            for sp in pods:
                if sp.pod not in threads and sp.started:
                    printer.add(sp.stages)
                    t = threading.Thread(target=worker, args=(sp,), daemon=True, name=f"logs-{sp.pod}")
                    threads[sp.pod] = t
                    t.start()
            deadline = time.monotonic() + POLL_SECONDS
            while time.monotonic() < deadline:
                try:
                    ln = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
                except queue.Empty:
                    continue
                if keep(ln, stage):
                    printer.line(ln)
            if status.get("phase") in TERMINAL_PHASES and not any(t.is_alive() for t in threads.values()):
                while not lines.empty():
                    ln = lines.get_nowait()
                    if keep(ln, stage):
                        printer.line(ln)
                return 0
    finally:
        stop.set()


def run(args: argparse.Namespace) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        api, ns = kube_client(args.kubeconfig, args.namespace)
        obj = get_imagebuild(api, ns, args.name)
    except Exception as e:  # not found, refused; kubeconfig missing, server unreachable
        return report_failure(e, args.name, args.namespace)
    status = obj.get("status") or {}
    all_stages = [s for stages in group_stages(status).values() for s in stages]
    if args.stage and all_stages and args.stage not in all_stages:
        print(f"error: imagebuild {args.name} has no stage {args.stage!r} (stages: {', '.join(all_stages)})",
              file=sys.stderr)
        return 1
    core = client.CoreV1Api(api)
    printer = Printer(all_stages)
    try:
        if args.follow:
            return _follow(core, lambda: get_imagebuild(api, ns, args.name), ns, args.name, args.stage,
                           printer)
        pods = select(stage_pods(list_pods(core, ns, pod_selector(obj)), status), args.stage)
        per_pod = [attribute(sp, read_log(core, ns, sp, timestamps=True), timestamps=True) for sp in pods]
        for sp in pods:
            printer.add(sp.stages)
        for ln in interleave(per_pod):
            if keep(ln, args.stage):
                printer.line(ln)
        return 0
    except KeyboardInterrupt:
        return 130
    except ApiException as e:
        print(f"error: {e.status} {e.reason}", file=sys.stderr)
        return 1
