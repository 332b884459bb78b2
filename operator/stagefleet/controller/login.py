"""Where the operator's API credentials come from, for kopf and for our own client alike.

One rule for both (``Kube.connect`` and the kopf login handler), so that kopf's watches and our writes
always talk to the same cluster as the same user: a kubeconfig when one is named (``--kubeconfig`` or
``KUBECONFIG``), else the pod's service account (in-cluster), else ``~/.kube/config``. kopf's own
fallback (``kopf.login_via_client``) always tries in-cluster first, which in a pod run with
``--kubeconfig`` for another cluster would watch one cluster and write to the other.

The kubernetes client reads the kubeconfig (client certificates, bearer tokens, token files, exec and
auth-provider plugins, relative paths); `connection_info` then maps its configuration onto kopf's
``ConnectionInfo`` field by field, exactly as ``kopf.login_via_client`` does (tests compare the two), plus
the context's namespace.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import kopf
from kubernetes import client, config

# The service account's namespace, next to its token and CA (kubernetes.config.incluster_config has those).
SERVICE_NAMESPACE_FILENAME = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _kubeconfig_namespace(kubeconfig: str | None) -> str | None:
    try:
        _, current = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError):
        return None
    ns = (current or {}).get("context", {}).get("namespace")
    return str(ns) if ns else None


def _service_account_namespace() -> str | None:
    try:
        with open(SERVICE_NAMESPACE_FILENAME, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def load_configuration(kubeconfig: str | None = None) -> tuple[client.Configuration, str | None]:
    """(client configuration, default namespace): the named kubeconfig, else in-cluster, else the default
    kubeconfig. Raises ``kubernetes.config.ConfigException`` when there is none."""
    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
            return configuration, _kubeconfig_namespace(kubeconfig)
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration, _service_account_namespace()
    except config.ConfigException:
        configuration = client.Configuration()
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration, _kubeconfig_namespace(None)


def connection_info(
    configuration: client.Configuration,
    *,
    default_namespace: str | None = None,
    trust_env: bool = False,
    priority: int = 0,
) -> kopf.ConnectionInfo:
    """kopf's credentials from a client configuration, the mapping of ``kopf.login_via_client``."""
    cfg: Any = configuration
    # The client keeps the "Bearer x" / "Basic x" header under BearerToken since 36.0.1, under authorization
    # before; get_api_key_with_prefix runs the refresh hook (exec plugins, the service account token file).
    header: str | None = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    parts: Sequence[str] = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,  # a temporary file when the kubeconfig carries the data
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        default_namespace=default_namespace,
        proxy_url=cfg.proxy or None,
        trust_env=trust_env,
        priority=priority,
    )


def login(kubeconfig: str | None = None, *, trust_env: bool = False) -> kopf.ConnectionInfo:
    """The operator's kopf credentials: the same source as ``Kube.connect(kubeconfig)``."""
    configuration, namespace = load_configuration(kubeconfig)
    return connection_info(configuration, default_namespace=namespace, trust_env=trust_env)


def kubeconfig_from_env() -> str | None:
    """The kubeconfig the operator was pointed at (``--kubeconfig`` sets ``KUBECONFIG``), if any."""
    return os.environ.get("KUBECONFIG") or None
