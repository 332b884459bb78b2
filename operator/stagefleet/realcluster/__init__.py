"""The real tier: a real Kubernetes control plane and real kubelets on this machine (see cluster.py)."""

from stagefleet.realcluster.cluster import RealCluster, RealClusterError, find_assets

__all__ = ["RealCluster", "RealClusterError", "find_assets"]
