"""The real tier's certificates: one CA, a serving certificate for the API server and client certificates
for each component, made with the host's `openssl` (EC P-256 keys: quick to make, accepted everywhere).

Kubernetes authenticates clients by certificate subject: CN is the user, O the groups (``system:masters``
for the admin, ``system:nodes`` for kubelets), so each component gets exactly the identity RBAC expects.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "3650"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str, input: bytes | None = None) -> None:
    proc = subprocess.run(["openssl", *args], input=input, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def make_ca(directory: Path, name: str = "ca") -> KeyPair:
    """A self-signed CA (cert + key) in ``directory``."""
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _new_key(pair.key)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(pair.key),
        "-out",
        str(pair.cert),
        "-days",
        DAYS,
        "-subj",
        "/CN=stagefleet-real-tier-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )
    return pair


def subject(cn: str, groups: tuple[str, ...] = ()) -> str:
    """An openssl -subj string: the groups as O entries, then the CN (the user name)."""
    parts = [f"/O={g}" for g in groups]
    return "".join(parts) + f"/CN={cn}"


def issue(
    ca: KeyPair,
    directory: Path,
    name: str,
    *,
    cn: str,
    groups: tuple[str, ...] = (),
    sans: tuple[str, ...] = (),
) -> KeyPair:
    """A certificate signed by ``ca``: a client certificate, and a server one too when ``sans`` are given
    (entries like ``IP:127.0.0.1`` or ``DNS:localhost``)."""
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    _new_key(pair.key)
    _openssl("req", "-new", "-key", str(pair.key), "-out", str(csr), "-subj", subject(cn, groups))
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
    if sans:
        lines += ["extendedKeyUsage=serverAuth,clientAuth", "subjectAltName=" + ",".join(sans)]
    else:
        lines.append("extendedKeyUsage=clientAuth")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-out",
        str(pair.cert),
        "-days",
        DAYS,
        "-extfile",
        str(ext),
    )
    csr.unlink()
    ext.unlink()
    return pair


def make_signing_key(path: Path) -> Path:
    """A bare private key (the service-account token signing key) and its public half beside it
    (``.pub``), which the API server verifies tokens with."""
    _new_key(path)
    _openssl("pkey", "-in", str(path), "-pubout", "-out", str(path.with_suffix(".pub")))
    return path
