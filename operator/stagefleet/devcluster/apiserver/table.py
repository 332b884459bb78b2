"""`meta.k8s.io/v1 Table` rendering: what `kubectl get` prints (built-in columns, CRD printer columns)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from .resources import ResourceType

_NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "priority": 0,
    "description": "Name must be unique within a namespace.",
}
_AGE = {
    "name": "Age",
    "type": "string",
    "format": "",
    "priority": 0,
    "description": "CreationTimestamp is a timestamp representing the server time when this object was "
    "created.",
}


def age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    try:
        then = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return "<unknown>"
    secs = max(0, int((dt.datetime.now(dt.UTC) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    if secs < 3600 * 3:
        return f"{secs // 60}m"
    if secs < 86400 * 2:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def jsonpath(obj: Any, path: str) -> Any:
    """The JSONPath subset printer columns use: .a.b, [N], [*], [?(@.k=="v")]."""
    tokens = re.findall(
        r'\.([A-Za-z0-9_$-]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.]+)\s*==\s*["\']([^"\']*)["\']\)\]',
        path.strip().strip("{}"),
    )
    cur: list[Any] = [obj]
    for key, idx, fkey, fval in tokens:
        nxt: list[Any] = []
        for c in cur:
            if key and isinstance(c, Mapping) and key in c:
                nxt.append(c[key])
            elif idx == "*" and isinstance(c, list):
                nxt.extend(c)
            elif idx and idx != "*" and isinstance(c, list) and int(idx) < len(c):
                nxt.append(c[int(idx)])
            elif fkey and isinstance(c, list):
                for item in c:
                    v: Any = item
                    for part in fkey.split("."):
                        v = v.get(part) if isinstance(v, Mapping) else None
                    if str(v) == fval or (isinstance(v, bool) and str(v).lower() == fval):
                        nxt.append(item)
        cur = nxt
    if not cur:
        return None
    return cur[0] if len(cur) == 1 else cur


def _pod_cells(pod: Mapping[str, Any]) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    reason = status.get("reason") or status.get("phase") or "Pending"
    for s in statuses:
        state = s.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state and state["terminated"].get("reason") and reason not in ("Succeeded",):
            reason = state["terminated"]["reason"]
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    return [
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        restarts,
        age(pod["metadata"].get("creationTimestamp")),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
    ]


def _col(name: str, typ: str = "string", priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": typ, "format": "", "priority": priority, "description": name}


def _ready_replicas(o: Mapping[str, Any]) -> list[Any]:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    return [
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
    ]


_SIMPLE: dict[tuple[str, str], tuple[list[str], Any]] = {
    ("", "configmaps"): (["Data"], lambda o: [len(o.get("data") or {}) + len(o.get("binaryData") or {})]),
    ("", "secrets"): (["Type", "Data"], lambda o: [o.get("type", "Opaque"), len(o.get("data") or {})]),
    ("", "serviceaccounts"): (["Secrets"], lambda o: [len(o.get("secrets") or [])]),
    ("", "services"): (
        ["Type", "Cluster-IP"],
        lambda o: [
            (o.get("spec") or {}).get("type", "ClusterIP"),
            (o.get("spec") or {}).get("clusterIP", "<none>"),
        ],
    ),
    ("apps", "deployments"): (["Ready", "Up-to-date", "Available"], _ready_replicas),
    ("coordination.k8s.io", "leases"): (
        ["Holder"],
        lambda o: [(o.get("spec") or {}).get("holderIdentity", "")],
    ),
    ("apiextensions.k8s.io", "customresourcedefinitions"): (
        ["Created At"],
        lambda o: [o["metadata"].get("creationTimestamp", "")],
    ),
}


def columns_and_cells(rt: ResourceType) -> tuple[list[dict[str, Any]], Any]:
    if rt.key == ("", "pods"):
        cols = [
            _NAME,
            _col("Ready"),
            _col("Status"),
            _col("Restarts", "integer"),
            _AGE,
            _col("IP", priority=1),
            _col("Node", priority=1),
        ]
        return cols, lambda o: [o["metadata"]["name"], *_pod_cells(o)]
    if rt.key == ("", "namespaces"):
        return [_NAME, _col("Status"), _AGE], lambda o: [
            o["metadata"]["name"],
            (o.get("status") or {}).get("phase", "Active"),
            age(o["metadata"].get("creationTimestamp")),
        ]
    if rt.key == ("", "nodes"):

        def node(o: Mapping[str, Any]) -> list[Any]:
            conds = (o.get("status") or {}).get("conditions") or []
            ready = next((c.get("status") for c in conds if c.get("type") == "Ready"), None)
            # kubectl: Ready=True → Ready; False or Unknown → NotReady; no condition → Unknown
            state = "Unknown" if ready is None else ("Ready" if ready == "True" else "NotReady")
            if (o.get("spec") or {}).get("unschedulable"):
                state += ",SchedulingDisabled"
            version = ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
            return [
                o["metadata"]["name"],
                state,
                "<none>",
                age(o["metadata"].get("creationTimestamp")),
                version,
            ]

        return [_NAME, _col("Status"), _col("Roles"), _AGE, _col("Version")], node
    simple = _SIMPLE.get(rt.key)
    if simple is not None:
        names, fn = simple
        cols = [_NAME] + [_col(n) for n in names] + [_AGE]
        return cols, lambda o: [o["metadata"]["name"], *fn(o), age(o["metadata"].get("creationTimestamp"))]
    if rt.key == ("", "events") or rt.key == ("events.k8s.io", "events"):

        def event(o: Mapping[str, Any]) -> list[Any]:
            io = o.get("involvedObject") or o.get("regarding") or {}
            last = o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp")
            return [
                age(last),
                o.get("type", ""),
                o.get("reason", ""),
                f"{str(io.get('kind', '')).lower()}/{io.get('name', '')}",
                o.get("message") or o.get("note", ""),
            ]

        cols = [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")]
        return cols, event
    if rt.is_custom and rt.printer_columns:
        pcs = list(rt.printer_columns)
        cols = [_NAME] + [
            _col(
                c.get("name", ""),
                "string" if c.get("type") == "date" else c.get("type", "string"),
                int(c.get("priority", 0)),
            )
            for c in pcs
        ]
        has_age = any(c.get("jsonPath") == ".metadata.creationTimestamp" for c in pcs)
        if not has_age:
            cols.append(_AGE)

        def custom(o: Mapping[str, Any]) -> list[Any]:
            cells: list[Any] = [o["metadata"]["name"]]
            for c in pcs:
                v = jsonpath(o, c.get("jsonPath", ""))
                if c.get("type") == "date" and isinstance(v, str):
                    v = age(v)
                cells.append(v)
            if not has_age:
                cells.append(age(o["metadata"].get("creationTimestamp")))
            return cells

        return cols, custom
    return [_NAME, _AGE], lambda o: [o["metadata"]["name"], age(o["metadata"].get("creationTimestamp"))]


def to_table(
    rt: ResourceType,
    objs: list[dict[str, Any]],
    rv: str,
    include: str = "Metadata",
    with_columns: bool = True,
) -> dict[str, Any]:
    cols, cells = columns_and_cells(rt)
    rows = []
    for o in objs:
        row: dict[str, Any] = {"cells": cells(o)}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o.get("metadata", {}),
            }
        rows.append(row)
    table: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": cols if with_columns else [],
        "rows": rows,
    }
    return table


def wants_table(accept: str) -> bool:
    return "as=Table" in accept.split(",")[0] if accept else False
