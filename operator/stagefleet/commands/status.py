"""`stagefleet status NAME`: an ImageBuild's stages as a table, like `kubectl get` but one row per stage.

The formatting is pure (status dict → rows) so it is tested without a cluster; only `run` talks to the
API server, through the kubernetes client and the current kubeconfig.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

GROUP, VERSION, PLURAL = "stagefleet.io", "v1alpha1", "imagebuilds"
TERMINAL_PHASES = ("Succeeded", "Failed", "Cancelled")
HEADER = ("STAGE", "GROUP", "PHASE", "POD", "NODE", "DURATION", "CACHED", "ATTEMPTS", "DIGEST", "MESSAGE")
MESSAGE_WIDTH = 60


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="show an ImageBuild's stages as a table",
                              description="One row per stage of an ImageBuild, from its status.")
    p.add_argument("name", help="ImageBuild name")
    add_kube_args(p)
    p.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   help="table (default) or the raw status as JSON")
    p.add_argument("-w", "--watch", action="store_true",
                   help="follow the build live until it ends (exit 0 when it succeeded, 1 otherwise)")
    p.set_defaults(func=run)


def add_kube_args(p: argparse.ArgumentParser) -> None:
    """`-n/--namespace` and `--kubeconfig`, as kubectl spells them."""
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's, else default)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")


def kube_client(kubeconfig: str | None, namespace: str | None) -> tuple[Any, str]:
    """An ApiClient for the current kubeconfig context, and the namespace to use."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call,unused-ignore]
    if namespace:
        return api, namespace
    try:
        _, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call,unused-ignore]
            config_file=kubeconfig)
        ns = (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:  # an unusual kubeconfig: fall back as kubectl does
        ns = "default"
    assert isinstance(api, client.ApiClient)
    return api, str(ns)


def report_failure(e: Exception, name: str, namespace: str | None) -> int:
    """Say why a call about ImageBuild ``name`` failed (a 404 as kubectl words it); the exit code, 1."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ApiException):
        if e.status == 404:
            message = f'imagebuild "{name}" not found in namespace "{namespace or "default"}"'
        else:
            message = f"{e.status} {e.reason}"
    else:
        message = str(e)
    print(f"error: {message}", file=sys.stderr)
    return 1


def get_imagebuild(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    obj: Any = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return dict(obj)


# ------------------------------------------------------------------------------------------------ pure


def parse_time(value: Any) -> _dt.datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes it, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """kubectl's short durations: 4.2s, 3m12s, 1h4m, 2d3h."""
    if seconds < 0:
        seconds = 0
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def stage_duration(stage: Mapping[str, Any], now: _dt.datetime) -> str:
    """The recorded duration; while a stage runs, the time since it started."""
    d = stage.get("duration")
    if isinstance(d, int | float):
        return human_duration(float(d))
    if isinstance(d, str) and d:
        return d
    start, end = parse_time(stage.get("startTime")), parse_time(stage.get("completionTime"))
    if start is None:
        return "-"
    return human_duration(((end or now) - start).total_seconds())


def short_digest(digest: Any) -> str:
    if not isinstance(digest, str) or not digest:
        return "-"
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest


def _cell(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def one_line(text: Any, width: int = MESSAGE_WIDTH) -> str:
    """A message squeezed onto one table line."""
    if not text:
        return ""
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def stage_rows(status: Mapping[str, Any], now: _dt.datetime, *, wide: bool = False) -> list[list[str]]:
    """One row per `status.stages[]` entry, in the order the operator recorded them (plan order)."""
    rows = []
    for st in status.get("stages") or []:
        if not isinstance(st, Mapping):
            continue
        cached = st.get("cachedSteps")
        rows.append([
            _cell(st.get("name")), _cell(st.get("group")), _cell(st.get("phase")), _cell(st.get("pod")),
            _cell(st.get("node")), stage_duration(st, now), _cell(cached), _cell(st.get("attempts")),
            short_digest(st.get("digest")),
            str(st.get("message") or "") if wide else one_line(st.get("message")),
        ])
    return rows


def headline(obj: Mapping[str, Any]) -> str:
    """`namespace/name: Phase  image REF@DIGEST` (or the build's message when it has no image yet)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    parts = [f"imagebuild {meta.get('namespace', '?')}/{meta.get('name', '?')}: {phase}"]
    stages = [s for s in status.get("stages") or [] if isinstance(s, Mapping)]
    if status.get("stagesSummarized"):  # a very wide build lists only some stages: its counts say all
        parts.append(f"stages {status.get('stagesDone', '?')}/{status.get('stagesTotal', '?')}")
    elif stages:
        done = sum(1 for s in stages if s.get("phase") == "Succeeded")
        parts.append(f"stages {done}/{len(stages)}")
    image = status.get("image") or {}
    if isinstance(image, Mapping) and image.get("digest"):
        parts.append(f"image {image.get('name', '')}@{image['digest']}")
    line = "  ".join(parts)
    if status.get("message"):
        line += f"\n{status['message']}"
    return line


def condition_lines(status: Mapping[str, Any]) -> list[str]:
    """`Ready=True (Succeeded): message`, one per condition."""
    out = []
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type"):
            reason = f" ({c['reason']})" if c.get("reason") else ""
            msg = f": {c['message']}" if c.get("message") else ""
            out.append(f"{c['type']}={c.get('status', 'Unknown')}{reason}{msg}")
    return out


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """kubectl-style columns: left-aligned, three spaces apart, no trailing blanks."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    return ["   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
            for row in [list(header), *rows]]


def ended(obj: Mapping[str, Any]) -> bool:
    """The build is over: a terminal phase for the current spec, and no rebuild or resolve request that
    the operator has not answered yet (one would start another run)."""
    from stagefleet.controller import polling, runs

    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    return (
        status.get("phase") in TERMINAL_PHASES
        and not runs.unanswered(meta, status)
        and not polling.unanswered(meta, status)
    )


def render(obj: Mapping[str, Any], now: _dt.datetime) -> list[str]:
    """The whole `stagefleet status` output for one ImageBuild object."""
    status = obj.get("status") or {}
    lines = [headline(obj)]
    rows = stage_rows(status, now)
    lines += format_table(HEADER, rows) if rows else ["(no stages yet)"]
    counts = status.get("stageCounts")
    if status.get("stagesSummarized") and isinstance(counts, Mapping):
        by_phase = ", ".join(f"{n} {phase}" for phase, n in counts.items())
        total = status.get("stagesTotal", "?")
        lines.append(f"(summarised: {len(rows)} of {total} stages listed; {by_phase})")
    lines += condition_lines(status)
    return lines


# ------------------------------------------------------------------------------------------------ I/O


def run(args: argparse.Namespace) -> int:
    try:
        api, ns = kube_client(args.kubeconfig, args.namespace)
        obj = get_imagebuild(api, ns, args.name)
    except Exception as e:  # not found, refused; kubeconfig missing, server unreachable
        return report_failure(e, args.name, args.namespace)
    if args.watch:
        try:
            return watch(api, ns, args.name, obj, json_output=args.output == "json")
        except KeyboardInterrupt:
            return 130
    if args.output == "json":
        print(json.dumps(obj.get("status") or {}, indent=2))
        return 0
    for line in render(obj, _dt.datetime.now(_dt.UTC)):
        print(line)
    return 0


def changes(api: Any, namespace: str, name: str, obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The ImageBuild each time it changes, from the API server's watch (resumed from the last
    resourceVersion when a watch ends; read anew when that version is too old)."""
    from kubernetes import client
    from kubernetes import watch as kwatch
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api)
    version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    while True:
        try:
            stream = kwatch.Watch().stream(  # type: ignore[no-untyped-call,unused-ignore]
                custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                field_selector=f"metadata.name={name}", resource_version=version, timeout_seconds=30,
            )
            for event in stream:
                item = event.get("object")
                if not isinstance(item, dict) or (item.get("metadata") or {}).get("name") != name:
                    continue
                if event.get("type") == "DELETED":
                    return
                version = str(item["metadata"].get("resourceVersion") or version)
                yield item
        except ApiException as e:
            if e.status != 410:
                raise
            fresh = get_imagebuild(api, namespace, name)
            version = str(fresh["metadata"].get("resourceVersion") or "")
            yield fresh


def watch(api: Any, namespace: str, name: str, obj: dict[str, Any], *, json_output: bool = False) -> int:
    """`status -w`: the table, redrawn in place on a terminal (rich) or printed again on every change
    otherwise, until the build is over; 0 when it succeeded."""
    live = sys.stdout.isatty() and not json_output

    def text(o: Mapping[str, Any]) -> str:
        if json_output:
            return json.dumps(o.get("status") or {}, indent=2)
        return "\n".join(render(o, _dt.datetime.now(_dt.UTC)))

    current = obj
    if live:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        with Live(Text(text(current)), console=Console(), refresh_per_second=4) as screen:
            if not ended(current):
                for current in changes(api, namespace, name, obj):
                    screen.update(Text(text(current)))
                    if ended(current):
                        break
    else:
        shown = text(current)
        print(shown, flush=True)
        if not ended(current):
            for current in changes(api, namespace, name, obj):
                now = text(current)
                if now != shown:
                    print(f"\n{now}", flush=True)
                    shown = now
                if ended(current):
                    break
    return 0 if (current.get("status") or {}).get("phase") == "Succeeded" else 1
