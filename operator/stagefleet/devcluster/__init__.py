"""Local dev cluster: an API-server emulator plus a local kubelet running pods as host processes.

A development and test tool, not a production Kubernetes. `DevCluster` is imported lazily so that
using only the emulator (`stagefleet.devcluster.apiserver`) does not load the kubelet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stagefleet.devcluster.cluster import DevCluster

__all__ = ["DevCluster"]


def __getattr__(name: str) -> Any:
    if name == "DevCluster":
        from stagefleet.devcluster.cluster import DevCluster

        return DevCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
