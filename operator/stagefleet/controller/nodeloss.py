"""Pure: which worker pods are lost with their node.

A real control plane never fails the pods of a node that stopped reporting: the node lifecycle controller
marks the node ``Ready=Unknown`` (after ``--node-monitor-grace-period``, 40 s by default) and taints it
``node.kubernetes.io/unreachable`` (NoSchedule; NoExecute too while another node is Ready); the pods stay
``Running`` and, once their NoExecute toleration runs out (300 s by default), get a ``deletionTimestamp``
and stay ``Terminating`` until the kubelet comes back — while their containers may still run. So the
operator decides itself when a pod is lost:

* **NodeLost**: the pod is not finished and its node's Ready condition has been other than True (Unknown:
  the kubelet stopped reporting; False: it reports NotReady) for at least ``grace`` seconds, counted from
  the condition's ``lastTransitionTime``;
* **PodStuckTerminating**: the pod is not finished and still exists ``grace`` seconds after its
  ``deletionTimestamp`` (which is the deletion request plus the pod's grace period: the moment a live
  kubelet would have removed it). This needs no access to Nodes, so it is what an operator that may not
  read Nodes relies on (later: a lost node's pods are deleted only after their toleration).

Both are infrastructure failures: the group is retried elsewhere, the lost pod force-deleted
(``status.decide``). A node the operator does not know (deleted, or not yet seen) decides nothing: the pod
garbage collector force-deletes the pods of deleted nodes, and a vanished pod is retried anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from stagefleet.controller.clock import parse_time

NODE_LOST = "NodeLost"
STUCK_TERMINATING = "PodStuckTerminating"
DEFAULT_GRACE_SECONDS = 60.0


class PodLike(Protocol):
    """What this module reads of a pod (`status.PodObservation` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def node(self) -> str | None: ...
    @property
    def terminated(self) -> bool: ...
    @property
    def deletion_timestamp(self) -> str | None: ...


@dataclass(frozen=True)
class NodeReadiness:
    """A node's Ready condition: its status ("True", "False", "Unknown") and since when it holds."""

    status: str
    since: datetime | None = None

    @property
    def ready(self) -> bool:
        return self.status == "True"


@dataclass(frozen=True)
class LostPod:
    """A worker pod given up for lost: why (``reason``: NodeLost or PodStuckTerminating), on which node,
    and the moment it became lost (the end of the grace period: a deterministic time, so that deciding
    again gives the same retry time)."""

    pod: str
    reason: str
    node: str | None
    at: datetime
    message: str




def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_readiness(node: Mapping[str, Any]) -> tuple[str, NodeReadiness]:
    """(name, readiness) of a Node object; a node without a Ready condition counts as Unknown (a new node
    the kubelet has not reported on yet: never lost, since it has no transition time either)."""
    name = str((node.get("metadata") or {}).get("name") or "")
    for c in (node.get("status") or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == "Ready":
            since = parse_time(c.get("lastTransitionTime"))
            return name, NodeReadiness(str(c.get("status") or "Unknown"), since)
    return name, NodeReadiness("Unknown", None)


def _loss_time(
    pod: PodLike, nodes: Mapping[str, NodeReadiness] | None, grace: timedelta
) -> tuple[datetime, str, str] | None:
    """When ``pod`` counts as lost, and (reason, message) — or None if nothing says it will be."""
    if pod.terminated:
        return None
    found: list[tuple[datetime, str, str]] = []
    readiness = nodes.get(pod.node) if nodes is not None and pod.node else None
    if readiness is not None and not readiness.ready and readiness.since is not None:
        what = "stopped reporting (Ready=Unknown)" if readiness.status == "Unknown" else "is NotReady"
        found.append(
            (
                readiness.since + grace,
                NODE_LOST,
                f"pod {pod.name}: node {pod.node} {what} since {_fmt(readiness.since)}, "
                f"over {grace.total_seconds():g} s",
            )
        )
    deleted = parse_time(pod.deletion_timestamp)
    if deleted is not None:
        found.append(
            (
                deleted + grace,
                STUCK_TERMINATING,
                f"pod {pod.name}: stuck Terminating on node {pod.node or '?'} since {_fmt(deleted)}, "
                f"over {grace.total_seconds():g} s",
            )
        )
    return min(found, key=lambda f: f[0]) if found else None


def lost_pods(
    pods: Sequence[PodLike],
    nodes: Mapping[str, NodeReadiness] | None,
    now: datetime,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> dict[str, LostPod]:
    """Pod name → why it is lost, for every unfinished pod whose node has been not Ready for
    ``grace_seconds`` or that has been stuck Terminating that long. ``nodes`` None: Nodes cannot be read,
    only stuck Terminating counts."""
    grace = timedelta(seconds=grace_seconds)
    out: dict[str, LostPod] = {}
    for p in pods:
        loss = _loss_time(p, nodes, grace)
        if loss is not None and loss[0] <= now:
            out[p.name] = LostPod(p.name, loss[1], p.node, loss[0], loss[2])
    return out


def next_loss_in(
    pods: Sequence[PodLike],
    nodes: Mapping[str, NodeReadiness] | None,
    now: datetime,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> float | None:
    """Seconds until the first pod not lost yet would be (a node not Ready, a pod Terminating), so that
    the operator looks again then; None when no pod is on its way."""
    grace = timedelta(seconds=grace_seconds)
    times = [loss[0] for p in pods if (loss := _loss_time(p, nodes, grace)) is not None and loss[0] > now]
    return (min(times) - now).total_seconds() if times else None
