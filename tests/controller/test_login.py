"""The operator's credentials (`stagefleet.controller.login`): the kopf ConnectionInfo it builds from a
client-certificate kubeconfig, a bearer-token kubeconfig and a pod's service account, the same as kopf's own
``login_via_client``, and the same source as its own client (``Kube.connect``)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes import client
from kubernetes.config import incluster_config, kube_config

from stagefleet.controller import handlers
from stagefleet.controller import login as credentials
from stagefleet.controller.kube import Kube

CA = "-----BEGIN CERTIFICATE-----\nQ0EgZm9yIHRlc3Rz\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nY2xpZW50IGNlcnQ=\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nY2xpZW50IGtleQ==\n-----END EC PRIVATE KEY-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_kubeconfig(path: Path, server: str, user: dict[str, Any], *, namespace: str | None = None,
                     cluster: dict[str, Any] | None = None) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": context}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Not in a pod, no KUBECONFIG, ~/.kube/config absent, and the client's global default configuration
    (kopf.login_via_client loads into it) put back afterwards."""
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "absent-kubeconfig"))
    saved = client.Configuration._default  # type: ignore[attr-defined]
    yield
    client.Configuration._default = saved  # type: ignore[attr-defined]


@pytest.fixture
def in_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A pod's service account: the env the kubelet sets and the token, CA and namespace files."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "ca.crt").write_text(CA)
    (sa / "namespace").write_text("stagefleet-system\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    monkeypatch.setattr(credentials, "SERVICE_NAMESPACE_FILENAME", str(sa / "namespace"))
    return sa


def test_client_certificate_kubeconfig_with_embedded_data(tmp_path: Path) -> None:
    kc = write_kubeconfig(
        tmp_path / "kc",
        "https://127.0.0.1:6443",
        {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)},
        namespace="builds",
        cluster={"certificate-authority-data": b64(CA)},
    )
    info = credentials.login(str(kc))
    assert info.server == "https://127.0.0.1:6443"
    assert info.ca_path is not None and Path(info.ca_path).read_text() == CA
    assert info.certificate_path is not None and Path(info.certificate_path).read_text() == CERT
    assert info.private_key_path is not None and Path(info.private_key_path).read_text() == KEY
    assert info.insecure is False
    assert info.token is None and info.scheme is None
    assert info.default_namespace == "builds"


def test_client_certificate_kubeconfig_with_paths_relative_to_it(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    for name, text in (("ca.crt", CA), ("admin.crt", CERT), ("admin.key", KEY)):
        (pki / name).write_text(text)
    kc = write_kubeconfig(
        tmp_path / "kc",
        "https://127.0.0.1:6443",
        {"client-certificate": "pki/admin.crt", "client-key": "pki/admin.key"},
        cluster={"certificate-authority": "pki/ca.crt"},
    )
    info = credentials.login(str(kc))
    assert (info.ca_path, info.certificate_path, info.private_key_path) == (
        str(pki / "ca.crt"), str(pki / "admin.crt"), str(pki / "admin.key")
    )
    assert info.default_namespace is None


def test_bearer_token_kubeconfig(tmp_path: Path) -> None:
    kc = write_kubeconfig(
        tmp_path / "kc", "https://k8s.example:443", {"token": "s3cret"}, namespace="ns1",
        cluster={"insecure-skip-tls-verify": True},
    )
    info = credentials.login(str(kc))
    assert (info.server, info.scheme, info.token) == ("https://k8s.example:443", "Bearer", "s3cret")
    assert info.insecure is True and info.certificate_path is None and info.private_key_path is None
    assert info.default_namespace == "ns1"


def test_plain_http_kubeconfig_without_credentials(tmp_path: Path) -> None:
    """The dev cluster's kind: plain HTTP and an empty token."""
    kc = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:8001", {"token": ""}, namespace="default")
    info = credentials.login(str(kc))
    assert info.server == "http://127.0.0.1:8001"
    assert info.token is None and info.scheme is None and info.ca_path is None
    assert info.default_namespace == "default"


@pytest.mark.usefixtures("in_cluster")
def test_in_cluster_service_account() -> None:
    info = credentials.login(None)
    assert info.server == "https://10.96.0.1:443"
    assert info.ca_path is not None and Path(info.ca_path).read_text() == CA
    assert (info.scheme, info.token) == ("bearer", "sa-token")
    assert info.default_namespace == "stagefleet-system"
    assert info.certificate_path is None


def test_in_cluster_token_is_reread_on_the_next_login(in_cluster: Path) -> None:
    """kopf logs in again after a 401: a rotated (projected) service account token is picked up."""
    assert credentials.login(None).token == "sa-token"
    (in_cluster / "token").write_text("rotated")
    assert credentials.login(None).token == "rotated"


@pytest.mark.usefixtures("in_cluster")
def test_a_named_kubeconfig_wins_over_in_cluster(tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", "https://other.example:6443", {"token": "t"})
    assert credentials.login(str(kc)).server == "https://other.example:6443"
    # kopf's own fallback takes the service account even so: what the operator's login handler avoids
    fallback = kopf.login_via_client(logger=logging.getLogger("test"), settings=kopf.OperatorSettings())
    assert fallback is not None and fallback.server == "https://10.96.0.1:443"


def test_no_credentials_at_all_raise() -> None:
    from kubernetes.config import ConfigException

    with pytest.raises(ConfigException):
        credentials.login(None)


@pytest.mark.parametrize(
    ("user", "cluster"),
    [
        (
            {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)},
            {"certificate-authority-data": b64(CA)},
        ),
        ({"token": "s3cret"}, {"certificate-authority-data": b64(CA)}),
        ({"token": "s3cret"}, {"insecure-skip-tls-verify": True}),
    ],
    ids=["client-cert", "bearer", "insecure"],
)
def test_same_fields_as_kopf_login_via_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: dict[str, Any], cluster: dict[str, Any]
) -> None:
    kc = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:6443", user, cluster=cluster)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kc))
    theirs = kopf.login_via_client(logger=logging.getLogger("test"), settings=kopf.OperatorSettings())
    ours = credentials.login(str(kc))
    assert theirs is not None
    fields = ("server", "ca_path", "insecure", "username", "password", "scheme", "token",
              "certificate_path", "private_key_path")
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    assert ours.server == "https://127.0.0.1:6443"


def test_kube_connect_uses_the_same_source(tmp_path: Path) -> None:
    kc = write_kubeconfig(
        tmp_path / "kc", "https://127.0.0.1:6443",
        {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)},
        cluster={"certificate-authority-data": b64(CA)},
    )
    cfg = Kube.connect(str(kc)).api.configuration
    info = credentials.login(str(kc))
    assert (cfg.host, cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file) == (
        info.server, info.ca_path, info.certificate_path, info.private_key_path
    )


@pytest.mark.usefixtures("in_cluster")
def test_operator_login_handler_follows_kubeconfig_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stagefleet operator --kubeconfig X` sets KUBECONFIG=X; without it, the pod's service account."""
    settings = kopf.OperatorSettings()
    assert handlers.login(settings=settings).server == "https://10.96.0.1:443"
    kc = write_kubeconfig(tmp_path / "kc", "https://other.example:6443", {"token": "t"})
    monkeypatch.setenv("KUBECONFIG", str(kc))
    info = handlers.login(settings=settings)
    assert (info.server, info.token) == ("https://other.example:6443", "t")
