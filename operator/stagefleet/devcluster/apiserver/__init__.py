"""Kubernetes API-server emulator for the dev cluster: in-memory, plain HTTP, no auth.

Faithful enough for kubectl, helm, kopf and the kubernetes client; a development and test tool only.
"""

from .faults import Faults
from .server import APIServer, write_kubeconfig

__all__ = ["APIServer", "Faults", "write_kubeconfig"]
