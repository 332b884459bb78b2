"""Pure: which of the operator's in-memory entries belong to ImageBuilds or worker pods that no longer exist.

The reconciler keeps a few maps per build (its lock, requeue time, held status write, source job, ...) and
per worker pod (last signature, node, schedulability). Events prune them: a build that ends drops its
entries, a DELETED event drops the object's. A watch cut loses DELETED events, though, and kopf does not
replay them after it lists again; without a second way out, every build deleted during a cut would stay in
memory for the operator's lifetime. So a periodic sweep lists the ImageBuilds and worker pods of the
namespaces it knows of and drops what the lists no longer have (`stale`).

Races: only entries known *before* the lists were read may be dropped (an object created after the list
started is not in it, yet it exists), and only in namespaces whose lists answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

BuildKey = tuple[str, str]  # namespace, ImageBuild name

SWEEP_SECONDS = 300.0


@dataclass(frozen=True)
class Listing:
    """What one sweep read: the namespaces whose lists answered, and what exists in them."""

    namespaces: frozenset[str] = frozenset()
    builds: frozenset[BuildKey] = frozenset()  # (namespace, name) of every ImageBuild listed
    pods: frozenset[str] = frozenset()  # uids of every worker pod listed


@dataclass(frozen=True)
class Stale:
    builds: frozenset[BuildKey] = field(default_factory=frozenset)
    pods: frozenset[str] = field(default_factory=frozenset)


def namespaces_of(builds: Iterable[BuildKey], pods: Mapping[str, BuildKey]) -> frozenset[str]:
    """The namespaces a sweep has to list: those of every known build and pod."""
    return frozenset({ns for ns, _ in builds} | {ns for ns, _ in pods.values()})


def stale(builds: Iterable[BuildKey], pods: Mapping[str, BuildKey], listing: Listing) -> Stale:
    """The known ``builds`` and ``pods`` (uid → its build) that ``listing`` shows gone.

    ``builds`` and ``pods`` must be snapshots taken before the lists were read. An entry in a namespace that
    was not listed (the list failed) is kept: absence from a list that did not answer proves nothing.
    """
    gone_builds = frozenset(
        k for k in builds if k[0] in listing.namespaces and k not in listing.builds
    )
    gone_pods = frozenset(
        uid for uid, (ns, _) in pods.items() if ns in listing.namespaces and uid not in listing.pods
    )
    return Stale(gone_builds, gone_pods)
