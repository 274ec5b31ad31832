"""A SEVIS batch simulator: a real HTTPS server that requires a client certificate.

It speaks the SEVIS batch upload/download protocol and applies the rules a
school's system must cope with:

* upload: multipart fields ``orgid``, ``userid``, ``batchid``, file ``xml``; answers a
  ``TransactionLog`` with ``Upload/@resultCode``: S0012 (bad POST / not well-formed /
  header differs from the form), S0002 (unknown OrgID), S0003 (user id not 10 chars),
  S0010 (BatchID already used by this school), S0013 (XSD errors, incl. more than
  250 records per section), S0000 (accepted);
* processing (at once, deterministic): creates get a SEVIS ID ``N`` + 10 digits
  derived from (OrgID, BatchID, requestID); updates for SEVIS IDs it does not know
  fail with S1003, a requestID used twice with S1004; configured per-request errors
  (``record_errors``) fail with the given code; Process S0000 or S0020;
* exchange visitors (``SEVISBatchCreateUpdateEV``, OrgID = a program number; validated against the EV
  XSD; an EV document under a school code or a student one under a program number is S0002): new
  SEVIS IDs for CreateEV, dependent SEVIS IDs and SiteIds in the log, S2xxx record codes
  (:mod:`sevisflow.sinks.sevis_sim.ev`);
* download: S0031 for a batch it never accepted, S0030 until ``results_delay_s``
  after the upload, then a zip with ``sevis_transaction_log.xml`` and a (fake) I-20
  PDF per create with ``printForm`` true;
* faults on demand (:meth:`SevisSimulator.fail`, or ``POST /_sim/control``): HTTP 500,
  S0001, a slow answer, a malformed log, a dropped connection (``drop``: before the upload is
  looked at), and the ones where SEVIS took the upload but the client cannot know:
  ``slow_accept`` (accepted, answer only after ``delay_s``: the client times out),
  ``drop_after`` (accepted, then the connection is reset without an answer); answers on demand:
  ``S0010``/``S0013`` (upload refused as a used BatchID / invalid, nothing registered) and ``S0031``
  (download);
  hostile downloads: ``foreign_log`` (the log names another BatchID), ``bomb`` (a 32 MiB PDF of
  zeros deflated to a few KiB), ``huge`` (a 4 MiB answer);
* delayed registration: an accepted batch is answered S0031 by downloads for
  ``registration_delay_s`` seconds and for its first ``registration_delay_downloads`` downloads;
* :meth:`SevisSimulator.post_count` counts every upload POST that reached it per BatchID (faults
  included): what "sent once" is measured by.

Start it in-process with ``SevisSimulator(...).start()`` (returns the base URL) and
stop it with ``.stop()``; ``sevisflow sevis-sim`` runs it from the command line.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import ssl
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lxml import etree

from sevisflow.sinks.sevis_sim import ev as ev_rules
from sevisflow.sinks.sevis_sim.certs import CertPaths, load_certs, make_certs
from sevisflow.sinks.xml.xsd import load_schema
from sevisflow.sinks.xml.xsd_ev import EV_ROOT, EVSchema, load_ev_schema

ORG_RE = re.compile(r"^([A-Z]{3}214F\d{8}|[PG]-\d-\d{4,5})$")
SEVIS_ID_RE = re.compile(r"^N\d{10}$")
PROGRAM_RE = re.compile(r"^(P-[1-4]-\d{5}|G-[1-7]-\d{5})$")
SECTIONS = {
    EV_ROOT: ("CreateEV/ExchangeVisitor", "UpdateEV/ExchangeVisitor"),
    "SEVISBatchCreateUpdateStudent": ("CreateStudent/Student", "UpdateStudent/Student"),
}
UPLOAD_PATH = "/sevisbatch/action/batchUpload"
DOWNLOAD_PATH = "/sevisbatch/action/batchDownload"
FAULT_MODES = (
    "http500",
    "S0001",
    "slow",
    "malformed",
    "drop",
    "http503",
    "slow_accept",
    "drop_after",
    "S0010",
    "S0013",
    "S0031",
    "foreign_log",
    "bomb",
    "huge",
)


@dataclass
class _Batch:
    org_id: str
    batch_id: str
    user_id: str
    received_at: float
    file_name: str
    records: list[dict[str, Any]] = field(default_factory=list)
    pdfs: dict[str, bytes] = field(default_factory=dict)
    unregistered_downloads: int = 0  # downloads still answered S0031 (delayed registration)

    @property
    def process_code(self) -> str:
        return "S0000" if all(r["ok"] for r in self.records) else "S0020"


@dataclass
class _Fault:
    op: str
    mode: str
    count: int
    delay_s: float = 2.0


def _now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, tz=UTC).isoformat(timespec="milliseconds")


class SevisSimulator:
    """The simulator; thread safe. ``known_sevis_ids`` seeds the students SEVIS already has."""

    def __init__(
        self,
        cert_dir: str | Path,
        xsd_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        known_sevis_ids: Iterable[str] = (),
        accept_any_sevis_id: bool = False,
        results_delay_s: float = 0.0,
        org_ids: Iterable[str] | None = None,
        record_errors: dict[str, tuple[str, str]] | None = None,
        system: str = "PROD-SIM",
        make_missing_certs: bool = True,
        registration_delay_s: float = 0.0,
        registration_delay_downloads: int = 0,
    ) -> None:
        cert_dir = Path(cert_dir)
        if make_missing_certs and not (cert_dir / "server.pem").is_file():
            self.certs: CertPaths = make_certs(cert_dir, hosts=tuple({host, "127.0.0.1", "localhost"}))
        else:
            self.certs = load_certs(cert_dir)
        self.schema = load_schema(xsd_dir)
        self.xsd_dir = Path(xsd_dir)
        self._ev_schema: EVSchema | None = None
        self.ev = ev_rules.EVRegistry()  # exchange visitors' dependents and sites of activity
        self.host, self.port = host, port
        self.known: set[str] = set(known_sevis_ids)
        self.accept_any = accept_any_sevis_id
        self.results_delay_s = results_delay_s
        self.registration_delay_s = registration_delay_s
        self.registration_delay_downloads = registration_delay_downloads
        self.posts: dict[str, int] = {}  # BatchID → upload POSTs that reached the simulator (faults included)
        self.org_ids = set(org_ids) if org_ids else None
        self.record_errors = dict(record_errors or {})
        self.system = system
        self.batches: dict[tuple[str, str], _Batch] = {}
        self.faults: list[_Fault] = []
        self.requests: list[dict[str, Any]] = []  # what arrived: op, org, batch, code (tests inspect it)
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start serving in a background thread; return the base URL (``https://host:port``)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.certs.ca_cert))
        ctx.load_cert_chain(str(self.certs.server_cert), str(self.certs.server_key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        sim = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def finish_request(self, request: Any, client_address: Any) -> None:
                # TLS handshake in the request's own thread, so a bad client cannot stall the others
                try:
                    request.settimeout(30)
                    tls = ctx.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                try:
                    Handler(tls, client_address, self)
                finally:
                    try:
                        tls.close()
                    except OSError:
                        pass

            def handle_error(self, request: Any, client_address: Any) -> None:  # quiet
                pass

        class Handler(_Handler):
            simulator = sim

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="sevis-sim"
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SevisSimulator:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"https://{host}:{self.port}"

    @property
    def upload_url(self) -> str:
        return self.url + UPLOAD_PATH

    @property
    def download_url(self) -> str:
        return self.url + DOWNLOAD_PATH

    # ------------------------------------------------------------------ control

    def fail(self, op: str, mode: str, count: int = 1, delay_s: float = 2.0) -> None:
        """Make the next ``count`` ``op`` ("upload" | "download" | "any") requests fail with ``mode``."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r} (one of {', '.join(FAULT_MODES)})")
        with self.lock:
            self.faults.append(_Fault(op, mode, count, delay_s))

    def _take_fault(self, op: str) -> _Fault | None:
        with self.lock:
            for f in self.faults:
                if f.op in (op, "any") and f.count > 0:
                    f.count -= 1
                    if f.count == 0:
                        self.faults.remove(f)
                    return f
        return None

    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        """The control endpoint's logic: add faults, known ids, change the delay; returns the state."""
        with self.lock:
            for f in (
                body.get("fail", [])
                if isinstance(body.get("fail"), list)
                else ([body["fail"]] if body.get("fail") else [])
            ):
                self.fail(f.get("op", "upload"), f["mode"], int(f.get("count", 1)), float(f.get("delay_s", 2.0)))
            self.known.update(body.get("known_sevis_ids", []))
            if "results_delay_s" in body:
                self.results_delay_s = float(body["results_delay_s"])
            if "registration_delay_s" in body:
                self.registration_delay_s = float(body["registration_delay_s"])
            if "registration_delay_downloads" in body:
                self.registration_delay_downloads = int(body["registration_delay_downloads"])
            if "accept_any_sevis_id" in body:
                self.accept_any = bool(body["accept_any_sevis_id"])
            for rid, (code, msg) in (body.get("record_errors") or {}).items():
                self.record_errors[rid] = (code, msg)
            return self.summary()

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "batches": [
                    {
                        "org_id": b.org_id,
                        "batch_id": b.batch_id,
                        "records": len(b.records),
                        "process_code": b.process_code,
                    }
                    for b in self.batches.values()
                ],
                "requests": list(self.requests),
                "known_sevis_ids": len(self.known),
                "pending_faults": [f.__dict__ for f in self.faults],
                "results_delay_s": self.results_delay_s,
                "registration_delay_s": self.registration_delay_s,
                "registration_delay_downloads": self.registration_delay_downloads,
                "posts": dict(self.posts),
            }

    def post_count(self, batch_id: str) -> int:
        """Upload POSTs of ``batch_id`` that reached the simulator, whatever was answered (faults included)."""
        with self.lock:
            return self.posts.get(batch_id, 0)

    def upload_count(self, batch_id: str | None = None, code: str | None = None) -> int:
        with self.lock:
            return sum(
                1
                for r in self.requests
                if r["op"] == "upload"
                and (batch_id is None or r["batch_id"] == batch_id)
                and (code is None or r["code"] == code)
            )

    # ------------------------------------------------------------------ protocol

    def _log_xml(
        self,
        org: str,
        batch: str,
        upload: tuple[str, str | None] | None = None,
        process: _Batch | None = None,
        download: str | None = None,
        status: bool = True,
    ) -> bytes:
        root = etree.Element("TransactionLog")
        h = etree.SubElement(root, "BatchHeader")
        etree.SubElement(h, "BatchID").text = batch
        etree.SubElement(h, "OrgID").text = org
        d = etree.SubElement(root, "BatchDetail", status="true" if status else "false", system=self.system)
        if upload is not None:
            code, fname = upload
            u = etree.SubElement(d, "Upload", resultCode=code, dateTimeStamp=_now_iso())
            if fname:
                etree.SubElement(u, "FileName").text = fname[:30]
        if process is not None:
            p = etree.SubElement(
                d, "Process", resultCode=process.process_code, dateTimeStamp=_now_iso(process.received_at + 1)
            )
            rc = etree.SubElement(p, "RecordCount")
            ok = sum(1 for r in process.records if r["ok"])
            etree.SubElement(rc, "Success").text = str(ok)
            etree.SubElement(rc, "Failure").text = str(len(process.records) - ok)
            etree.SubElement(rc, "Total").text = str(len(process.records))
            for r in process.records:
                attrs = {"requestID": r["request_id"]}
                if r.get("sevis_id"):
                    attrs["sevisID"] = r["sevis_id"]
                attrs["userID"] = process.user_id
                rec = etree.SubElement(p, "Record", attrs)
                for tag in ("UserDefinedA", "UserDefinedB"):
                    if r.get(tag):
                        etree.SubElement(rec, tag).text = r[tag]
                etree.SubElement(rec, "ProcessDate").text = _now_iso(process.received_at + 1)
                res = etree.SubElement(rec, "Result", status="true" if r["ok"] else "false")
                if not r["ok"]:
                    etree.SubElement(res, "ErrorCode").text = r["code"]
                    etree.SubElement(res, "ErrorMessage").text = r["message"]
                for site in r.get("sites", []):
                    se = etree.SubElement(rec, "SiteOfActivity")
                    etree.SubElement(se, "SiteId").text = site["id"]
                    if site.get("name"):
                        etree.SubElement(se, "SiteName").text = site["name"]
                for dep in r.get("dependents", []):
                    de = etree.SubElement(rec, "Dependent", dependentSevisID=dep["id"])
                    for tag in ("UserDefinedA", "UserDefinedB"):
                        if dep.get(tag):
                            etree.SubElement(de, tag).text = dep[tag]
        if download is not None:
            etree.SubElement(d, "Download", resultCode=download)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)

    def _new_sevis_id(self, seed: str) -> str:
        n = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") % 10**10
        while f"N{n:010d}" in self.known:
            n = (n + 1) % 10**10
        sid = f"N{n:010d}"
        self.known.add(sid)
        return sid

    def handle_upload(self, fields: dict[str, Any]) -> tuple[int, bytes, str]:
        org, user, batch_id = (str(fields.get(k, "")).strip() for k in ("orgid", "userid", "batchid"))
        xml_part = fields.get("xml")
        fname = xml_part[0] if isinstance(xml_part, tuple) else "upload.xml"
        data = xml_part[1] if isinstance(xml_part, tuple) else (xml_part.encode() if isinstance(xml_part, str) else b"")

        def answer(code: str) -> tuple[int, bytes, str]:
            with self.lock:
                self.requests.append(
                    {"op": "upload", "org_id": org, "batch_id": batch_id, "code": code, "at": time.time()}
                )
            return 200, self._log_xml(org, batch_id, upload=(code, fname), status=code == "S0000"), code

        if not org or not user or not batch_id or not data:
            return answer("S0012")
        if not ORG_RE.match(org) or (self.org_ids is not None and org not in self.org_ids):
            return answer("S0002")
        if len(user) != 10:
            return answer("S0003")
        try:
            doc = etree.fromstring(data.strip(), parser=etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError:
            return answer("S0012")
        if doc.findtext("BatchHeader/BatchID") != batch_id or doc.findtext("BatchHeader/OrgID") != org:
            return answer("S0012")
        is_ev = doc.tag == EV_ROOT
        if is_ev != bool(PROGRAM_RE.match(org)):
            return answer("S0002")  # an EV document under a school code, or a student one under a program
        with self.lock:
            if (org, batch_id) in self.batches:
                return answer("S0010")
            if (self.ev_schema() if is_ev else self.schema).validate(doc):
                return answer("S0013")
            if any(len(doc.findall(path)) > 250 for path in SECTIONS.get(str(doc.tag), ("", ""))):
                return answer("S0013")
            b = _Batch(
                org, batch_id, user, time.time(), fname, unregistered_downloads=self.registration_delay_downloads
            )
            (self._process_ev if is_ev else self._process)(b, doc)
            self.batches[(org, batch_id)] = b
            return answer("S0000")

    def ev_schema(self) -> EVSchema:
        """The EV schema, loaded at the first EV batch (a simulator for F/M schools needs none)."""
        if self._ev_schema is None:
            self._ev_schema = load_ev_schema(self.xsd_dir)
        return self._ev_schema

    def _process_ev(self, b: _Batch, doc: etree._Element) -> None:
        """Exchange visitors: creates get SEVIS IDs (and their dependents' and sites' ids), S2xxx codes."""
        seen: set[str] = set()
        for section in ("CreateEV", "UpdateEV"):
            for visitor in doc.findall(f"{section}/ExchangeVisitor"):
                rid, sid = visitor.get("requestID", ""), visitor.get("sevisID") or ""
                r: dict[str, Any] = {
                    "request_id": rid,
                    "UserDefinedA": visitor.findtext("UserDefinedA"),
                    "UserDefinedB": visitor.findtext("UserDefinedB"),
                }
                if sid:
                    r["sevis_id"] = sid
                seed = f"{b.org_id}|{b.batch_id}|{rid}"
                if rid in seen:
                    r.update(ok=False, code="S2099", message="Duplicate requestID in this batch")
                elif rid in self.record_errors:
                    code, msg = self.record_errors[rid]
                    r.update(ok=False, code=code, message=msg)
                elif section == "CreateEV":
                    r.update(ev_rules.create_ev(self.ev, visitor, self._new_sevis_id(seed), self._new_sevis_id, b.pdfs))
                elif sid in self.known or (self.accept_any and SEVIS_ID_RE.match(sid)):
                    r.update(ev_rules.update_ev(self.ev, visitor, sid, self._new_sevis_id, seed, b.pdfs))
                else:
                    r.update(ok=False, code="S2001", message="SEVIS ID not found")
                seen.add(rid)
                b.records.append(r)

    def _process(self, b: _Batch, doc: etree._Element) -> None:
        seen: set[str] = set()
        for st in doc.findall("CreateStudent/Student"):
            rid = st.get("requestID", "")
            r: dict[str, Any] = {
                "request_id": rid,
                "UserDefinedA": st.findtext("UserDefinedA"),
                "UserDefinedB": st.findtext("UserDefinedB"),
            }
            if rid in seen:
                r.update(ok=False, code="S1004", message="Duplicate record in this batch")
            elif rid in self.record_errors:
                code, msg = self.record_errors[rid]
                r.update(ok=False, code=code, message=msg)
            else:
                sid = self._new_sevis_id(f"{b.org_id}|{b.batch_id}|{rid}")
                r.update(ok=True, sevis_id=sid)
                deps = []
                for i, dep in enumerate(st.findall("CreateDependent/Dependent")):
                    deps.append(
                        {
                            "id": self._new_sevis_id(f"{sid}|dep|{i}"),
                            "UserDefinedA": dep.findtext("UserDefinedA"),
                            "UserDefinedB": dep.findtext("UserDefinedB"),
                        }
                    )
                r["dependents"] = deps
                if st.get("printForm") in ("true", "1"):
                    b.pdfs[f"{sid}_I20.pdf"] = (
                        b"%PDF-1.4\n% sevisflow simulator: a placeholder I-20 for " + sid.encode() + b"\n%%EOF\n"
                    )
            seen.add(rid)
            b.records.append(r)
        for st in doc.findall("UpdateStudent/Student"):
            rid, sid = st.get("requestID", ""), st.get("sevisID", "")
            r = {
                "request_id": rid,
                "sevis_id": sid,
                "UserDefinedA": st.findtext("UserDefinedA"),
                "UserDefinedB": st.findtext("UserDefinedB"),
            }
            if rid in seen:
                r.update(ok=False, code="S1004", message="Duplicate record in this batch")
            elif rid in self.record_errors:
                code, msg = self.record_errors[rid]
                r.update(ok=False, code=code, message=msg)
            elif sid in self.known or (self.accept_any and SEVIS_ID_RE.match(sid)):
                r.update(ok=True)
            else:
                r.update(ok=False, code="S1003", message="SEVIS ID not found")
            seen.add(rid)
            b.records.append(r)

    def handle_download(self, fields: dict[str, Any], fault: _Fault | None) -> tuple[int, bytes, str, str]:
        org, batch_id = str(fields.get("orgid", "")).strip(), str(fields.get("batchid", "")).strip()
        with self.lock:
            b = self.batches.get((org, batch_id))
            if b is not None and fault is not None and fault.mode == "S0031":
                b = None
            if b is not None and (
                b.unregistered_downloads > 0 or time.time() < b.received_at + self.registration_delay_s
            ):
                b.unregistered_downloads = max(0, b.unregistered_downloads - 1)
                b = None  # accepted, but not registered yet: SEVIS does not know it
            if b is None:
                code = "S0031"
            elif time.time() < b.received_at + self.results_delay_s:
                code = "S0030"
            else:
                code = "S0000"
            self.requests.append(
                {"op": "download", "org_id": org, "batch_id": batch_id, "code": code, "at": time.time()}
            )
            if code != "S0000" or b is None:
                return 200, self._log_xml(org, batch_id, download=code, status=False), "application/xml", code
            log = self._log_xml(
                org,
                batch_id,
                upload=("S0000", b.file_name),
                process=b,
                download="S0000",
                status=b.process_code == "S0000",
            )
            if fault is not None and fault.mode == "malformed":
                log = log[: len(log) // 2]
            if fault is not None and fault.mode == "foreign_log":
                log = log.replace(f"<BatchID>{batch_id}</BatchID>".encode(), b"<BatchID>FOREIGN0000001</BatchID>")
            if fault is not None and fault.mode == "huge":
                return 200, b"PK\x03\x04" + bytes(4 * 1024 * 1024), "application/zip", code
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(zipfile.ZipInfo("sevis_transaction_log.xml", date_time=(2020, 1, 1, 0, 0, 0)), log)
                for name, pdf in sorted(b.pdfs.items()):
                    zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), pdf)
                if fault is not None and fault.mode == "bomb":
                    bomb = zipfile.ZipInfo("N0000000000_I20.pdf", date_time=(2020, 1, 1, 0, 0, 0))
                    bomb.compress_type = zipfile.ZIP_DEFLATED
                    with zf.open(bomb, "w") as w:
                        zero = bytes(1 << 20)
                        for _ in range(32):
                            w.write(zero)
            return 200, buf.getvalue(), "application/zip", code


def parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """Form fields of a multipart/form-data body: text parts as str, file parts as (filename, bytes)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not m:
        raise ValueError("no multipart boundary")
    delim = b"--" + m.group(1).encode()
    out: dict[str, Any] = {}
    chunks = body.split(delim)
    if len(chunks) < 3:
        raise ValueError("no parts")
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("part without headers")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        disp = next(
            (h for h in head.decode("latin-1").split("\r\n") if h.lower().startswith("content-disposition")), ""
        )
        name = re.search(r'\bname="([^"]*)"', disp)
        if not name:
            raise ValueError("part without a name")
        fn = re.search(r'\bfilename="([^"]*)"', disp)
        out[name.group(1)] = (fn.group(1), content) if fn else content.decode("utf-8", "replace")
    return out


class _Handler(BaseHTTPRequestHandler):
    simulator: SevisSimulator
    protocol_version = "HTTP/1.0"
    server_version = "SEVIS-batch-simulator"

    def log_message(self, format: str, *args: Any) -> None:  # no access log: no personal data anywhere
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/xml") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _fields(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            return parse_multipart(ctype, body)
        if ctype.startswith("application/x-www-form-urlencoded"):
            return {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if ctype.startswith("application/json"):
            return json.loads(body or b"{}")
        return {}

    def _fault(self, op: str) -> tuple[_Fault | None, bool]:
        """Apply a pending fault; True when the response was already sent (or the connection dropped)."""
        f = self.simulator._take_fault(op)
        if f is None:
            return None, False
        if f.mode == "slow":
            time.sleep(f.delay_s)
            return f, False
        if f.mode == "http500":
            self._send(500, b"<html><body>Internal Server Error</body></html>", "text/html")
            return f, True
        if f.mode == "http503":
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return f, True
        if f.mode == "drop":
            self._drop()
            return f, True
        return f, False

    def _drop(self) -> None:
        """Close the connection with a TCP reset and no answer (SO_LINGER 0)."""
        self.close_connection = True
        try:
            import struct

            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/_sim/state":
            self._send(200, json.dumps(self.simulator.summary(), default=str).encode(), "application/json")
        elif parts.path.endswith("/batchDownload"):
            fields = {k: v[0] for k, v in parse_qs(parts.query).items()}
            self._download(fields)
        else:
            self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            fields = self._fields()
        except (ValueError, json.JSONDecodeError):
            fields = None
        if path == "/_sim/control":
            try:
                self._send(
                    200, json.dumps(self.simulator.control(fields or {}), default=str).encode(), "application/json"
                )
            except (ValueError, KeyError, TypeError) as exc:
                self._send(400, str(exc).encode(), "text/plain")
            return
        if path.endswith("/batchUpload"):
            sim = self.simulator
            with sim.lock:
                bid = str((fields or {}).get("batchid", "")).strip()
                sim.posts[bid] = sim.posts.get(bid, 0) + 1
            fault, done = self._fault("upload")
            if done:
                return
            if fault is not None and fault.mode in ("S0001", "malformed"):
                body = sim._log_xml(
                    str((fields or {}).get("orgid", "")),
                    str((fields or {}).get("batchid", "")),
                    upload=("S0001", None),
                    status=False,
                )
                if fault.mode == "malformed":
                    body = body[: len(body) // 2]
                with sim.lock:
                    sim.requests.append(
                        {
                            "op": "upload",
                            "org_id": (fields or {}).get("orgid"),
                            "batch_id": (fields or {}).get("batchid"),
                            "code": "S0001",
                            "at": time.time(),
                        }
                    )
                self._send(200, body)
                return
            if fields is None:
                self._send(200, sim._log_xml("", "", upload=("S0012", None), status=False))
                return
            if fault is not None and fault.mode in ("S0010", "S0013"):
                org, bid = str(fields.get("orgid", "")), str(fields.get("batchid", ""))
                with sim.lock:
                    sim.requests.append(
                        {"op": "upload", "org_id": org, "batch_id": bid, "code": fault.mode, "at": time.time()}
                    )
                self._send(200, sim._log_xml(org, bid, upload=(fault.mode, None), status=False))
                return
            status, body, _ = sim.handle_upload(fields)
            if fault is not None and fault.mode == "slow_accept":
                time.sleep(fault.delay_s)  # processed already: the client times out while SEVIS has it
            if fault is not None and fault.mode == "drop_after":
                self._drop()  # processed already: the client sees a reset and no answer
                return
            self._send(status, body)
        elif path.endswith("/batchDownload"):
            self._download(fields or {})
        else:
            self._send(404, b"not found", "text/plain")

    def _download(self, fields: dict[str, Any]) -> None:
        fault, done = self._fault("download")
        if done:
            return
        sim = self.simulator
        if fault is not None and fault.mode == "S0001":
            self._send(
                200,
                sim._log_xml(
                    str(fields.get("orgid", "")), str(fields.get("batchid", "")), download="S0001", status=False
                ),
            )
            return
        status, body, ctype, _ = sim.handle_download(fields, fault)
        self._send(status, body, ctype)


def read_known_ids(path: str | Path) -> set[str]:
    """SEVIS IDs from a file: one per line (or anywhere in CSV/JSON text); anything not N + 10 digits is ignored."""
    text = Path(path).read_text(encoding="utf-8")
    return set(re.findall(r"\bN\d{10}\b", text))
