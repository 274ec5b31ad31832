"""Throwaway certificates for dry runs and tests: a CA, a server certificate, client certificates.

Everything is generated at run time (EC P-256, valid for 30 days) into a folder the
caller chooses; keys are written 0600. Nothing here is meant for production:
against real SEVIS the school uses the certificate it registered in SEVIS RTI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPaths:
    """Where :func:`make_certs` put everything."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_p12: Path
    p12_password: str


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sevisflow simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _builder(subject: str, issuer: x509.Name, pub: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
    )


def make_ca(folder: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA into ``folder/<name>.pem`` and ``<name>-key.pem``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = _key()
    cert = (
        _builder(f"sevisflow simulator {name}", _name(f"sevisflow simulator {name}"), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cp, kp = folder / f"{name}.pem", folder / f"{name}-key.pem"
    _write(cp, cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(kp, _pem_key(key), private=True)
    return cp, kp


def _load_ca(ca_cert: Path, ca_key: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def make_leaf(
    folder: Path,
    name: str,
    ca_cert: Path,
    ca_key: Path,
    server: bool,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> tuple[Path, Path]:
    """A certificate signed by the CA: a server certificate (SANs ``hosts``) or a client certificate."""
    ca, ca_k = _load_ca(ca_cert, ca_key)
    key = _key()
    b = _builder(name, ca.subject, key.public_key()).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    if server:
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = b.sign(ca_k, hashes.SHA256())
    cp, kp = folder / f"{name}.pem", folder / f"{name}-key.pem"
    _write(cp, cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(kp, _pem_key(key), private=True)
    return cp, kp


def make_p12(folder: Path, name: str, cert: Path, key: Path, password: str) -> Path:
    """The client certificate and key as a PKCS#12 file protected by ``password``."""
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    k = serialization.load_pem_private_key(key.read_bytes(), password=None)
    if not isinstance(k, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key} is not an EC private key (make_certs writes one)")
    data = pkcs12.serialize_key_and_certificates(
        name.encode(), k, c, None, serialization.BestAvailableEncryption(password.encode())
    )
    p = folder / f"{name}.p12"
    _write(p, data, private=True)
    return p


def make_certs(
    folder: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), p12_password: str = "sevisflow-sim"
) -> CertPaths:
    """CA + server + client (PEM and PKCS#12) certificates into ``folder`` (created 0700)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca_cert, ca_key = make_ca(folder, "ca")
    server_cert, server_key = make_leaf(folder, "server", ca_cert, ca_key, server=True, hosts=hosts)
    client_cert, client_key = make_leaf(folder, "client", ca_cert, ca_key, server=False)
    client_p12 = make_p12(folder, "client", client_cert, client_key, p12_password)
    return CertPaths(
        folder, ca_cert, ca_key, server_cert, server_key, client_cert, client_key, client_p12, p12_password
    )


def load_certs(folder: str | Path, p12_password: str = "sevisflow-sim") -> CertPaths:
    """The :class:`CertPaths` of a folder :func:`make_certs` filled earlier."""
    f = Path(folder)
    paths = CertPaths(
        f,
        f / "ca.pem",
        f / "ca-key.pem",
        f / "server.pem",
        f / "server-key.pem",
        f / "client.pem",
        f / "client-key.pem",
        f / "client.p12",
        p12_password,
    )
    missing = [p for p in (paths.ca_cert, paths.server_cert, paths.server_key) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing; create the certificates with --make-certs {f}")
    return paths
