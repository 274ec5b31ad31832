"""Destination: the SEVIS batch HTTPS endpoints (standard library only: http.client + ssl).

The client only moves bytes: ``upload`` POSTs ``multipart/form-data`` with the text
parts ``orgid``, ``userid``, ``batchid`` and the file part ``xml`` over
TLS with the school's client certificate; ``download`` POSTs the three text parts
and gets a zip (or a TransactionLog saying S0030/S0031).

Every failure is classified once, here:

* :class:`~sevisflow.core.errors.TransientError` — network errors, timeouts, HTTP 5xx,
  a response that is not a transaction log: try again with back-off;
* :class:`Backpressure` — HTTP 429/503 with ``Retry-After``: wait that long;
* :class:`CertificateError` (terminal) — no/unreadable client certificate, wrong key
  password, server certificate not trusted, or SEVIS refusing our certificate;
* :class:`~sevisflow.core.errors.TerminalError` — other HTTP 4xx;
* :class:`NotSent` (transient) — the connection could not be opened (nothing was sent);
* :class:`~sevisflow.sinks.sevis.translog.LimitError` (transient) — an answer longer than
  ``[sevis] max_response_bytes`` (read in chunks and abandoned at the cap, never whole).

Every :class:`~sevisflow.core.errors.TerminalError` this client raises means SEVIS's application
did not take the request (TLS refused, HTTP 4xx, not https): the uploader counts it as proof
that the upload was not taken. A :class:`TransientError` other than :class:`NotSent` leaves the
outcome of an upload unknown.

The private key is never logged, never put in an exception message, and a PKCS#12
key only touches the disk re-encrypted with a one-time password in a private temp
folder that is removed at once (``ssl`` loads keys from files only).
"""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import socket
import ssl
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sevisflow.core.config import SevisSettings
from sevisflow.core.errors import TerminalError, TransientError
from sevisflow.sinks.sevis.translog import LimitError, TransactionLog, TranslogError, parse_translog

USER_AGENT = "sevisflow/0.1 (batch client)"
_CHUNK = 64 * 1024
_CERT_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "ACCESS_DENIED",
    "HANDSHAKE_FAILURE",
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_EXPIRED",
    "DECRYPT_ERROR",
    "UNSUPPORTED_CERTIFICATE",
)


class CertificateError(TerminalError):
    """The TLS client certificate is missing, unreadable or refused, or the server is not trusted."""

    pii_free_message = True  # names a file and a [sevis] setting, never a record: logs may show it


class Backpressure(TransientError):
    """SEVIS asked us to slow down (HTTP 429/503 with Retry-After); ``retry_after_s`` says how long."""


class NotSent(TransientError):
    """The connection to SEVIS could not be opened: no byte of the request left this host.

    The one transient failure that *proves* an upload was not taken (the uploader may post
    the same BatchID again at once); every failure after the connection opened leaves the
    outcome unknown."""


@dataclass(frozen=True)
class UploadReply:
    http_status: int
    log: TransactionLog
    body: bytes

    @property
    def code(self) -> str | None:
        return self.log.upload_code


@dataclass(frozen=True)
class DownloadReply:
    http_status: int
    zip_bytes: bytes | None
    log: TransactionLog | None

    @property
    def code(self) -> str | None:
        """S0000 when a zip came back; otherwise the TransactionLog's Download (or Upload) code."""
        if self.zip_bytes is not None:
            return "S0000"
        if self.log is None:
            return None
        return self.log.download_code or self.log.upload_code


def _client_context(s: SevisSettings) -> ssl.SSLContext:
    if not s.client_cert:
        raise CertificateError(
            "no client certificate configured: set [sevis] client_cert to the PEM or PKCS#12 (.p12/.pfx) file "
            "registered for batch in SEVIS RTI (SEVIS only accepts batch uploads with it)"
        )
    cert = Path(s.client_cert)
    if not cert.is_file():
        raise CertificateError(f"client certificate {cert} does not exist or is not a file ([sevis] client_cert)")
    if s.ca_bundle and not Path(s.ca_bundle).is_file():
        raise CertificateError(f"CA bundle {s.ca_bundle} does not exist ([sevis] ca_bundle)")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.ca_bundle or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    password = s.client_key_password.reveal() if s.client_key_password else None
    if cert.suffix.lower() in (".p12", ".pfx"):
        _load_pkcs12(ctx, cert, password)
        return ctx
    if s.client_key and not Path(s.client_key).is_file():
        raise CertificateError(f"client key {s.client_key} does not exist ([sevis] client_key)")
    try:
        ctx.load_cert_chain(str(cert), s.client_key or None, password=password or None)
    except ssl.SSLError as exc:
        raise CertificateError(
            f"cannot load the client certificate {cert} with its key ({exc.reason or 'ssl error'}): "
            "is client_key the matching key, and client_key_password right?"
        ) from None
    except (OSError, ValueError, TypeError):
        raise CertificateError(
            f"cannot read the client certificate {cert} or its key (check the files' permissions and the key password)"
        ) from None
    return ctx


def _load_pkcs12(ctx: ssl.SSLContext, path: Path, password: str | None) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        key, cert, extra = pkcs12.load_key_and_certificates(path.read_bytes(), password.encode() if password else None)
    except (ValueError, TypeError):
        raise CertificateError(
            f"cannot open the PKCS#12 file {path}: wrong client_key_password or not a PKCS#12 file"
        ) from None
    if key is None or cert is None:
        raise CertificateError(f"the PKCS#12 file {path} holds no key and certificate pair")
    one_time = secrets.token_urlsafe(24).encode()
    tmp = Path(tempfile.mkdtemp(prefix="sevisflow-p12-"))
    try:
        os.chmod(tmp, 0o700)
        pem = tmp / "client.pem"
        fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(one_time),
                )
            )
            fh.write(cert.public_bytes(serialization.Encoding.PEM))
            for c in extra or []:
                fh.write(c.public_bytes(serialization.Encoding.PEM))
        ctx.load_cert_chain(str(pem), password=one_time)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def multipart(fields: list[tuple[str, str]], file_field: tuple[str, str, bytes] | None, boundary: str) -> bytes:
    """A ``multipart/form-data`` body like curl's ``-F``: text parts, then the file part (no part Content-Type)."""
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    if file_field is not None:
        name, filename, data = file_field
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n\r\n'
        ).encode()
        out += data + (b"" if data.endswith(b"\r\n") else b"\r\n") + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def _certificate_refused(exc: ssl.SSLError, host: str) -> CertificateError | None:
    """The server's TLS alert says it refused our client certificate: a terminal error naming the fix."""
    if any(a in (exc.reason or "").upper() for a in _CERT_ALERTS):
        return CertificateError(
            f"the server at {host} refused our TLS client certificate ({exc.reason}): is "
            "[sevis] client_cert the certificate registered for batch in SEVIS RTI?"
        )
    return None


def _tls_failure(exc: ssl.SSLError, host: str) -> CertificateError | None:
    """A TLS error that is about certificates (the server's not trusted, or ours refused), else None."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CertificateError(
            f"the server at {host} is not trusted ({exc.verify_message}); set [sevis] ca_bundle "
            "to the CA that signed it"
        )
    return _certificate_refused(exc, host)


class SevisClient:
    """Upload and download over client-certificate TLS. Build once; it loads the certificate at once."""

    def __init__(self, settings: SevisSettings) -> None:
        self.settings = settings
        self.upload_url = settings.upload_endpoint()
        self.download_url = settings.download_endpoint()
        self.timeout = settings.http_timeout_s
        self._ctx = _client_context(settings)

    def upload(self, org_id: str, user_id: str, batch_id: str, file_name: str, xml: bytes) -> UploadReply:
        status, _, body = self._post(
            self.upload_url, [("orgid", org_id), ("userid", user_id), ("batchid", batch_id)], ("xml", file_name, xml)
        )
        try:
            log = parse_translog(body)
        except TranslogError as exc:
            raise TransientError(
                f"SEVIS upload answer for batch {batch_id} is not a transaction log ({exc}); will retry"
            ) from None
        return UploadReply(status, log, body)

    def download(self, org_id: str, user_id: str, batch_id: str) -> DownloadReply:
        status, _, body = self._post(
            self.download_url, [("orgid", org_id), ("userid", user_id), ("batchid", batch_id)], None
        )
        if body[:4] == b"PK\x03\x04":
            return DownloadReply(status, body, None)
        try:
            log = parse_translog(body)
        except TranslogError as exc:
            raise TransientError(
                f"SEVIS download answer for batch {batch_id} is neither a zip nor a transaction log ({exc}); will retry"
            ) from None
        return DownloadReply(status, None, log)

    def _read_capped(self, resp: http.client.HTTPResponse, host: str) -> bytes:
        """The answer's body, read in chunks; :class:`LimitError` past ``max_response_bytes`` (never read whole)."""
        cap = self.settings.max_response_bytes
        declared = resp.getheader("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > cap:
            raise LimitError(
                f"the answer from {host} announces {int(declared)} bytes, more than [sevis] "
                f"max_response_bytes = {cap}; raise it if SEVIS really sends that much"
            )
        buf = bytearray()
        while True:
            chunk = resp.read(min(_CHUNK, cap + 1 - len(buf)))
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > cap:
                raise LimitError(
                    f"the answer from {host} is longer than [sevis] max_response_bytes = {cap} "
                    "bytes; reading stopped there (raise it if SEVIS really sends that much)"
                )

    def _diagnose(self, host: str, port: int) -> None:
        """After a reset: was it our certificate? Raises :class:`CertificateError` if so.

        With TLS 1.3 the server checks the client certificate after the client's side of
        the handshake is done, so a refusal shows up as a reset while sending. A TLS 1.2
        handshake reports it inside the handshake; one such probe tells the two apart.
        """
        ctx = _client_context(self.settings)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        try:
            with (
                socket.create_connection((host, port), timeout=min(self.timeout, 15.0)) as raw,
                ctx.wrap_socket(raw, server_hostname=host) as tls,
            ):
                tls.settimeout(0.5)
                try:
                    tls.recv(1)
                except TimeoutError:
                    pass
        except ssl.SSLError as exc:
            refused = _certificate_refused(exc, host)
            if refused is not None:
                raise refused from None
        except OSError:
            pass

    def _post(
        self, url: str, fields: list[tuple[str, str]], file_field: tuple[str, str, bytes] | None
    ) -> tuple[int, dict[str, str], bytes]:
        """POST a multipart form; the answer's status, headers and body, or the error that classifies the failure."""
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise TerminalError(f"SEVIS endpoint {url} is not https")
        boundary = f"------------------------sevisflow{uuid.uuid4().hex}"
        body = multipart(fields, file_field, boundary)
        headers = {
            "Accept": "*/*",
            "User-Agent": USER_AGENT,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(body)),
        }
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host, port = parts.hostname or "", parts.port or 443
        conn = http.client.HTTPSConnection(host, port, context=self._ctx, timeout=self.timeout)
        try:
            self._connect(conn, host, port)
            resp, data = self._exchange(conn, host, port, path, body, headers)
        finally:
            conn.close()
        return self._answer(resp, data, parts.path)

    @staticmethod
    def _connect(conn: http.client.HTTPSConnection, host: str, port: int) -> None:
        """Open the TLS connection; a failure here proves nothing was sent (:class:`NotSent`) unless it is ours."""
        try:
            conn.connect()
        except ssl.SSLError as exc:
            tls = _tls_failure(exc, host)
            if tls is not None:
                raise tls from None
            raise NotSent(f"TLS handshake with {host} failed ({exc.reason or exc}); nothing was sent") from None
        except (OSError, http.client.HTTPException) as exc:
            raise NotSent(f"cannot reach {host}:{port} ({type(exc).__name__}: {exc}); nothing was sent") from None

    def _exchange(
        self, conn: http.client.HTTPSConnection, host: str, port: int, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send the request and read the capped answer; once the request may have left, failures are transient."""
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp, self._read_capped(resp, host)
        except ssl.SSLError as exc:
            tls = _tls_failure(exc, host)
            if tls is not None:
                raise tls from None
            self._diagnose(host, port)
            raise TransientError(f"TLS error talking to {host}: {exc.reason or exc}") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            self._diagnose(host, port)
            raise TransientError(
                f"connection to {host} was reset ({type(exc).__name__}); "
                "if this repeats, check that the client certificate is accepted"
            ) from None
        except TimeoutError:
            raise TransientError(f"no answer from {host} within {self.timeout}s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"cannot reach {host}:{port} ({type(exc).__name__}: {exc})") from None

    @staticmethod
    def _answer(resp: http.client.HTTPResponse, data: bytes, url_path: str) -> tuple[int, dict[str, str], bytes]:
        """The HTTP status classified: backpressure, transient, certificate refused, terminal, or the answer."""
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        if resp.status in (429, 503) and "retry-after" in resp_headers:
            try:
                delay = float(resp_headers["retry-after"])
            except ValueError:
                delay = 60.0
            raise Backpressure(f"SEVIS asked to retry after {delay:g}s (HTTP {resp.status})", retry_after_s=delay)
        if resp.status >= 500:
            raise TransientError(f"SEVIS answered HTTP {resp.status}; will retry")
        if resp.status in (401, 403):
            raise CertificateError(
                f"SEVIS answered HTTP {resp.status}: the client certificate is not allowed "
                "(registered for batch in SEVIS RTI?)"
            )
        if resp.status >= 400:
            raise TerminalError(
                f"SEVIS answered HTTP {resp.status} to {url_path}: check [sevis] upload_url / download_url"
            )
        return resp.status, resp_headers, data
