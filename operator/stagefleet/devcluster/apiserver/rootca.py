"""The `kube-root-ca.crt` ConfigMap kube-controller-manager's root-ca-cert-publisher keeps in every namespace.

The emulator serves plain HTTP and has no CA, so the bundle is a fixed self-signed certificate (CN
kubernetes, EC P-256, valid until 2126) that verifies nothing; it is there so that what pods and clients
expect exists: the ConfigMap, and the `ca.crt` of the service-account volume that pod admission adds.
"""

from __future__ import annotations

from typing import Any

NAME = "kube-root-ca.crt"
KEY = "ca.crt"
DESCRIPTION = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such "
    "as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across "
    "distributions of Kubernetes clusters."
)
CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBkTCCATegAwIBAgIUeNjb4OFePPWMk6SHyTbgqw1NMM0wCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKa3ViZXJuZXRlczAgFw0yNjEyMDQxNjA3MjFaGA8yMTI2MTEx
MDE2MDcyMVowFTETMBEGA1UEAwwKa3ViZXJuZXRlczBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABBBJ6JUWm49yJSclExNFzvl9Rkkaa8XVQ8QDiMxFTBUHAJac6rv0
0BQeoe6BJfKXpNuRCPyJZwUxY43symgR2AyjYzBhMB0GA1UdDgQWBBQeB8Mg23bT
W/fux0qwk4mRP9codDAfBgNVHSMEGDAWgBQeB8Mg23bTW/fux0qwk4mRP9codDAP
BgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwICpDAKBggqhkjOPQQDAgNIADBF
AiAqAdEyRDr5lC/BPjvbDOuXmEZ7cTwyIXiy+Qe9T6OyVwIhAIYte/YHRb03tX8n
sK8S3bJOkRNAb9TeFI9k6zCHN6yj
-----END CERTIFICATE-----
"""


def configmap() -> dict[str, Any]:
    """The ConfigMap as the publisher creates it (namespace filled in by the caller's create)."""
    return {
        "metadata": {"name": NAME, "annotations": {"kubernetes.io/description": DESCRIPTION}},
        "data": {KEY: CA_PEM},
    }


def needs_reset(cm: dict[str, Any]) -> bool:
    """Whether someone changed the data or dropped the description (the publisher writes them back)."""
    annotations = (cm.get("metadata") or {}).get("annotations") or {}
    return cm.get("data") != {KEY: CA_PEM} or not annotations.get("kubernetes.io/description")


def reset(cm: dict[str, Any]) -> dict[str, Any]:
    """`cm` with the publisher's data and description again (other metadata kept)."""
    meta = dict(cm.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), "kubernetes.io/description": DESCRIPTION}
    return {**cm, "metadata": meta, "data": {KEY: CA_PEM}}
