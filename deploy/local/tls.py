"""Throwaway TLS material for a local secured Kafka: a CA, a broker and a client certificate.

Made with ``cryptography`` when a secured stack starts, into the stack's own folder
(0700, files 0600), and deleted with it. Kafka 4 reads PEM key stores directly
(``ssl.keystore.type=PEM``), so no JKS/keytool step is needed:

* ``ca.pem``           the CA certificate: the brokers' trust store and the clients' ``ssl.ca.location``;
* ``broker.pem``       the broker's unencrypted PKCS#8 key followed by its certificate chain
                       (SAN ``localhost`` and ``127.0.0.1``; used for serving and for inter-broker links);
* ``client.pem``       the client certificate (mutual TLS; the brokers require one);
* ``client.key``       its key, PKCS#8 encrypted with the password in ``client.key.password``.

Nothing here is fit for production: the keys live a few minutes and never leave the machine.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    """Where :func:`make_tls_files` put the PEM files."""

    dir: str
    ca: str
    broker_keystore: str
    client_cert: str
    client_key: str
    client_key_password_file: str

    def client_key_password(self) -> str:
        return Path(self.client_key_password_file).read_text().strip()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sevisflow local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    days: int,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    usages: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_name if not ca else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def make_tls_files(folder: Path, days: int = 2) -> TlsFiles:
    """Create a CA and the broker's and client's certificates in ``folder`` (made 0700)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("sevisflow local CA", ca_key, ca_key, _name("sevisflow local CA"), days, ca=True)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)

    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = _issue(
        "localhost",
        broker_key,
        ca_key,
        ca_cert.subject,
        days,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    broker_pem = (
        broker_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        + broker_cert.public_bytes(serialization.Encoding.PEM)
        + ca_pem
    )

    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue(
        "sevisflow", client_key, ca_key, ca_cert.subject, days, usages=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    password = secrets.token_hex(16)

    files = TlsFiles(
        dir=str(folder),
        ca=str(folder / "ca.pem"),
        broker_keystore=str(folder / "broker.pem"),
        client_cert=str(folder / "client.pem"),
        client_key=str(folder / "client.key"),
        client_key_password_file=str(folder / "client.key.password"),
    )
    _write(Path(files.ca), ca_pem)
    _write(Path(files.broker_keystore), broker_pem)
    _write(Path(files.client_cert), client_cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    _write(
        Path(files.client_key),
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        ),
    )
    _write(Path(files.client_key_password_file), password.encode())
    return files
