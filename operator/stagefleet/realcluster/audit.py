"""Pure: the real tier's audit policy and the parsing of the audit log it produces.

The API server logs one JSON line per pod creation (and nothing else): the reliability suite's pod ledger
on the real tier ("was any pod ever created twice?"), the counterpart of the emulator's recording handler.
Metadata level is enough — objectRef carries the pod's namespace and name, responseStatus the code — and
keeps the log small (no request or response bodies, so no Secret value can end up in it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# Stage RequestReceived is omitted: only ResponseComplete (or Panic) events, each with the final status.
POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # `pods` alone matches no subresource (pods/binding, pods/eviction, ...): creations of pods only
        {"level": "Metadata", "verbs": ["create"], "resources": [{"group": "", "resources": ["pods"]}]},
        {"level": "None"},
    ],
}


def pod_creations(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(namespace, name) of every pod the API server created (a `create` of `pods` answered 201), in log
    order. Lines that are not such events (other events, failed creations, a torn last line while the
    server is still writing) are skipped."""
    out: list[tuple[str, str]] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or event.get("stage") != "ResponseComplete":
            continue
        ref = event.get("objectRef") or {}
        if (
            event.get("verb") != "create"
            or ref.get("resource") != "pods"
            or ref.get("subresource")
            or ref.get("apiGroup")
            or (event.get("responseStatus") or {}).get("code") != 201
        ):
            continue
        ns, name = ref.get("namespace"), ref.get("name")
        if isinstance(ns, str) and isinstance(name, str) and name:
            out.append((ns, name))
    return out
