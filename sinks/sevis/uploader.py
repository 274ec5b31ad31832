"""The SEVIS uploader/downloader: moves batch folders through the outbox states.

State machine (each arrow is one rename of the batch folder; see :mod:`sinks.outbox`)::

    ready ──(intent)──▶ sending ──S0000──▶ uploaded ──zip──▶ processed
                          │  ▲                 │
      S0002, S0010–S0013  │  └──── S0031 ──────┘      (SEVIS never got it: upload again)
                          ▼
                        failed   (+ a ``requeue`` BatchCommand for all its records)

Why ``sending`` exists: a batch is moved there *before* the POST. If the process
dies, or the network fails, after SEVIS may have accepted the file, the next try
first asks SEVIS about the batch (a download): S0031 (never received) → POST again;
S0030 or a zip → it was accepted → ``uploaded``. So a batch SEVIS accepted is never
uploaded again, also across restarts, and a reused BatchID (S0010) is never caused
by our own retry. Only an explicit S0001 answer ("upload failed") skips the probe.

Retry: network errors, HTTP 5xx, unknown answers and S0001 back off exponentially
(``retry_base_s`` doubling up to ``retry_max_s``; ``Retry-After`` when SEVIS sends
one); S0030 polls every ``poll_interval_s``. Try counts, last codes and the next
due time are in the batch folder's ``state.json``.

Observability (stage ``sink-sevis``): records in (label ``outbox``) when a batch is first taken
for upload, records out per topic (results, requeue commands), every SEVIS answer by operation
and result code (``sevisflow_remote_answers_total{op="upload",code="S0010"}``), errors by kind
(:func:`error_kind`), and a heartbeat beaten before every HTTP exchange, so a call that hangs
shows on ``/health`` (see :mod:`sinks.sevis.stage`). Labels are codes and topic names only.
"""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import orjson

from sevisflow.config import Settings
from sevisflow.errors import TerminalError, TransientError, UnreachableError
from sevisflow.log import get_logger
from sevisflow.observability import Heartbeat, StageMetrics
from sinks.outbox import BatchDir, Outbox, replace_private, write_private
from sinks.sevis.client import Backpressure, CertificateError, DownloadReply, SevisClient
from sinks.sevis.translog import TransactionLog, TranslogError, parse_translog

log = get_logger(__name__)

FATAL_UPLOAD_CODES = {"S0002", "S0010", "S0011", "S0012", "S0013"}
RETRY_UPLOAD_CODES = {"S0001", "S0003"}
TRANSLOG_NAME = "sevis_transaction_log.xml"
STAGE = "sink-sevis"
OUTBOX_LABEL = "outbox"  # the ``topic`` label of records_in: this stage reads batch folders, not a topic


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label of an error of this stage (a fixed word: messages may quote values)."""
    if isinstance(exc, CertificateError):
        return "sevis_certificate"
    if isinstance(exc, Backpressure):
        return "sevis_backpressure"
    if isinstance(exc, TranslogError):
        return "sevis_translog"
    if isinstance(exc, UnreachableError):
        return "kafka"  # the publisher's producer; the SEVIS client raises plain TransientError
    if isinstance(exc, TransientError):
        return "sevis_http"
    if isinstance(exc, TerminalError):
        return "sevis_terminal"
    if isinstance(exc, OSError):
        return "outbox_io"
    return "unexpected"


class Publisher(Protocol):
    """Where results and requeue commands go (Kafka in production, a list in unit tests).

    Both calls return only when the records are durable (acknowledged)."""

    def results(self, org_id: str, records: list[dict[str, Any]]) -> None: ...

    def requeue(self, org_id: str, batch_id: str, record_ids: list[str], reason: str, code: str) -> None: ...


class Transport(Protocol):
    def upload(self, org_id: str, user_id: str, batch_id: str, file_name: str, xml: bytes) -> Any: ...

    def download(self, org_id: str, user_id: str, batch_id: str) -> DownloadReply: ...


@dataclass
class StepReport:
    uploaded: int = 0
    processed: int = 0
    failed: int = 0
    retried: int = 0


class SevisSink:
    """One pass over the outbox per :meth:`step`; safe to run again after a crash at any point."""

    def __init__(self, settings: Settings, outbox: Outbox, publisher: Publisher,
                 client: Transport | None = None, clock: Callable[[], float] = time.time,
                 metrics: StageMetrics | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.publisher = publisher
        self.client = client if client is not None else SevisClient(settings.sevis)
        self.clock = clock
        self.metrics = metrics if metrics is not None else StageMetrics(STAGE)
        # beaten before every HTTP exchange: its age is how long the current call has been hanging
        self.heartbeat = Heartbeat()

    # ------------------------------------------------------------------ helpers

    def _backoff(self, tries: int, at_least: float = 0.0) -> float:
        s = self.settings.sevis
        return max(at_least, min(s.retry_max_s, s.retry_base_s * (2 ** max(0, tries - 1))))

    def _user(self, manifest: dict[str, Any]) -> str:
        return manifest.get("closed_by") or self.settings.sevis.user_id

    def _history(self, state: dict[str, Any], what: str, **fields: Any) -> None:
        state.setdefault("history", []).append({"at": round(self.clock(), 3), "what": what, **fields})

    # ------------------------------------------------------------------ the pass

    def step(self) -> StepReport:
        """Download due results, then upload due batches (like eca-kmt2: results first)."""
        report = StepReport()
        now = self.clock()
        self.heartbeat.beat()
        for bd in list(self.outbox.batches("uploaded")):
            if bd.state_data().get("next_download_at", 0) <= now:
                self.heartbeat.beat()
                self._download(bd, report)
        for state in ("sending", "ready"):
            for bd in list(self.outbox.batches(state)):
                if bd.state_data().get("next_upload_at", 0) <= now:
                    self.heartbeat.beat()
                    self._upload(bd, report)
        return report

    def pending(self) -> int:
        """Batches not yet in a final state (processed or failed)."""
        return sum(1 for st in ("ready", "sending", "uploaded") for _ in self.outbox.batches(st))

    # ------------------------------------------------------------------ upload

    def _upload(self, bd: BatchDir, report: StepReport) -> None:
        manifest = bd.manifest()
        batch_id = manifest["batch_id"]
        state = bd.state_data()
        if bd.state == "ready":
            bd = self.outbox.move(bd, "sending")
            self.metrics.records_in(OUTBOX_LABEL, _record_count(manifest))
        elif state.get("outcome_unknown"):
            if self._probe(bd, manifest, state, report):
                return
        state["upload_tries"] = state.get("upload_tries", 0) + 1
        state["outcome_unknown"] = True  # written before the POST: a crash now means "ask SEVIS first"
        state["last_upload_try"] = self.clock()
        bd.save_state(state)
        xml = bd.xml_path.read_bytes()
        log.info("sevis.upload", batch_id=batch_id, records=manifest.get("record_count"), attempt=state["upload_tries"])
        try:
            reply = self.client.upload(manifest["org_id"], self._user(manifest), batch_id, bd.xml_path.name, xml)
        except TerminalError:
            raise
        except TransientError as exc:
            self.metrics.error(error_kind(exc))
            delay = self._backoff(state["upload_tries"], exc.retry_after_s if isinstance(exc, Backpressure) else 0)
            state.update(last_upload_error=str(exc), next_upload_at=self.clock() + delay)
            self._history(state, "upload_error", error=str(exc))
            bd.save_state(state)
            report.retried += 1
            log.warning("sevis.upload_retry", batch_id=batch_id, error=str(exc), retry_in_s=round(delay, 2))
            return
        code = reply.code or "none"
        self.metrics.remote_answer("upload", code)
        state["last_upload_code"] = code
        self._history(state, "upload", code=code)
        if code == "S0000":
            self.metrics.batch(_record_count(manifest), "upload")
            write_private(bd.path / "upload-response.xml", reply.body)
            state.update(outcome_unknown=False, accepted_at=self.clock(),
                         next_download_at=self.clock() + self.settings.sevis.poll_interval_s)
            bd.save_state(state)
            self.outbox.move(bd, "uploaded")
            report.uploaded += 1
            log.info("sevis.uploaded", batch_id=batch_id)
        elif code in FATAL_UPLOAD_CODES:
            write_private(bd.path / "upload-response.xml", reply.body)
            state["outcome_unknown"] = False
            bd.save_state(state)
            self._fail(bd, manifest, code, f"SEVIS refused the upload with {code}")
            report.failed += 1
        else:
            # S0001 (upload failed), S0003 (user id), or a code we do not know: not accepted, try again later
            state.update(outcome_unknown=code not in RETRY_UPLOAD_CODES,
                         next_upload_at=self.clock() + self._backoff(state["upload_tries"]))
            bd.save_state(state)
            report.retried += 1
            log.warning("sevis.upload_retry", batch_id=batch_id, code=code)

    def _probe(self, bd: BatchDir, manifest: dict[str, Any], state: dict[str, Any], report: StepReport) -> bool:
        """Ask SEVIS whether an earlier, unanswered upload arrived. True when handled (no POST now)."""
        batch_id = manifest["batch_id"]
        try:
            reply = self.client.download(manifest["org_id"], self._user(manifest), batch_id)
        except TerminalError:
            raise
        except TransientError as exc:
            self.metrics.error(error_kind(exc))
            state.update(next_upload_at=self.clock() + self._backoff(state.get("upload_tries", 1)),
                         last_upload_error=f"probe: {exc}")
            bd.save_state(state)
            report.retried += 1
            return True
        code = reply.code
        self.metrics.remote_answer("probe", code or "none")
        self._history(state, "probe", code=code)
        if code == "S0031":
            return False  # never received: POST again
        if code in ("S0000", "S0030"):
            log.info("sevis.upload_confirmed_by_probe", batch_id=batch_id, code=code)
            state.update(outcome_unknown=False, last_upload_code="S0000", accepted_at=self.clock(),
                         next_download_at=self.clock() if reply.zip_bytes else
                         self.clock() + self.settings.sevis.poll_interval_s)
            bd.save_state(state)
            up = self.outbox.move(bd, "uploaded")
            report.uploaded += 1
            if reply.zip_bytes is not None:
                self._process_zip(up, up.manifest(), up.state_data(), reply.zip_bytes, report)
            return True
        state.update(next_upload_at=self.clock() + self._backoff(state.get("upload_tries", 1)),
                     last_upload_error=f"probe answered {code}")
        bd.save_state(state)
        report.retried += 1
        return True

    def _fail(self, bd: BatchDir, manifest: dict[str, Any], code: str, reason: str) -> None:
        """Batch refused as a whole: re-queue its records (durably), then move it to ``failed``."""
        record_ids = [r["record_id"] for r in manifest.get("records", []) if r.get("record_id")]
        self.publisher.requeue(manifest["org_id"], manifest["batch_id"], record_ids, reason, code)
        self.metrics.records_out(self.settings.topics.commands, len(record_ids))
        replace_private(bd.path / "reason.json",
                        orjson.dumps({"code": code, "reason": reason, "requeued": len(record_ids)},
                                     option=orjson.OPT_INDENT_2))
        self.outbox.move(bd, "failed")
        log.error("sevis.batch_failed", batch_id=manifest["batch_id"], code=code, requeued=len(record_ids))

    # ------------------------------------------------------------------ download

    def _download(self, bd: BatchDir, report: StepReport) -> None:
        manifest = bd.manifest()
        batch_id = manifest["batch_id"]
        state = bd.state_data()
        state["download_tries"] = state.get("download_tries", 0) + 1
        state["last_download_try"] = self.clock()
        try:
            reply = self.client.download(manifest["org_id"], self._user(manifest), batch_id)
        except TerminalError:
            raise
        except TransientError as exc:
            self.metrics.error(error_kind(exc))
            delay = self._backoff(state["download_tries"], exc.retry_after_s if isinstance(exc, Backpressure) else 0)
            state.update(last_download_error=str(exc), next_download_at=self.clock() + delay)
            bd.save_state(state)
            report.retried += 1
            log.warning("sevis.download_retry", batch_id=batch_id, error=str(exc))
            return
        code = reply.code
        self.metrics.remote_answer("download", code or "none")
        state["last_download_code"] = code
        if reply.zip_bytes is not None:
            self._process_zip(bd, manifest, state, reply.zip_bytes, report)
            return
        self._history(state, "download", code=code)
        if code == "S0031":
            # SEVIS says it never got this batch: upload it again (DOMAIN §7)
            state.update(outcome_unknown=False, next_upload_at=0)
            bd.save_state(state)
            self.outbox.move(bd, "sending")
            log.warning("sevis.not_received_upload_again", batch_id=batch_id)
            return
        delay = self.settings.sevis.poll_interval_s if code == "S0030" else self._backoff(state["download_tries"])
        state["next_download_at"] = self.clock() + delay
        bd.save_state(state)

    def _process_zip(self, bd: BatchDir, manifest: dict[str, Any], state: dict[str, Any], data: bytes,
                     report: StepReport) -> None:
        """Unpack, parse, publish one result per record, then move the batch to ``processed``.

        Order: 1. keep the zip's files beside the batch (results/); 2. parse the log
        leniently; 3. publish the results and wait for Kafka's acknowledgement;
        4. rename the folder to processed/. A crash before 4 repeats 1–3: the same
        results are published again (consumers key them by batch_id + request_id).
        """
        batch_id = manifest["batch_id"]
        try:
            log_bytes, files = _unzip(data)
            tlog = parse_translog(log_bytes)
            if tlog.process is None:
                raise TranslogError("transaction log has no Process part yet")
        except (TranslogError, zipfile.BadZipFile) as exc:
            self.metrics.error("sevis_translog")
            state.update(last_download_error=f"unusable results: {exc}",
                         next_download_at=self.clock() + self._backoff(state.get("download_tries", 1)))
            self._history(state, "download_bad_log", error=str(exc))
            bd.save_state(state)
            report.retried += 1
            log.warning("sevis.bad_transaction_log", batch_id=batch_id, error=str(exc))
            return
        out = bd.path / "results"
        out.mkdir(mode=0o700, exist_ok=True)
        write_private(out / TRANSLOG_NAME, log_bytes)
        for name, content in files.items():
            write_private(out / name, content)
        results = build_results(manifest, tlog)
        self.publisher.results(manifest["org_id"], results)
        self.metrics.remote_answer("process", tlog.process_code or "none")
        self.metrics.records_out(self.settings.topics.results, len(results))
        state.update(processed_at=self.clock(), process_code=tlog.process_code,
                     success=sum(1 for r in results if r["status"] == "success"),
                     failure=sum(1 for r in results if r["status"] != "success"))
        self._history(state, "processed", code=tlog.process_code)
        bd.save_state(state)
        self.outbox.move(bd, "processed")
        report.processed += 1
        log.info("sevis.processed", batch_id=batch_id, process_code=tlog.process_code,
                 success=state["success"], failure=state["failure"])


def _record_count(manifest: dict[str, Any]) -> int:
    count = manifest.get("record_count")
    return int(count) if isinstance(count, int) else len(manifest.get("records", []))


def _unzip(data: bytes) -> tuple[bytes, dict[str, bytes]]:
    """The transaction log and the other files (PDFs) of a download zip; names made safe."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        log_bytes: bytes | None = None
        files: dict[str, bytes] = {}
        for info in zf.infolist():
            if info.is_dir():
                continue
            base = Path(info.filename).name
            if not base or base.startswith("."):
                continue
            if info.file_size > 64 * 1024 * 1024:
                raise TranslogError(f"zip entry {base} is implausibly large")
            content = zf.read(info)
            if base.lower() == TRANSLOG_NAME or (log_bytes is None and base.lower().endswith(".xml")
                                                 and "transaction" in base.lower()):
                log_bytes = content
            else:
                files[base] = content
    if log_bytes is None:
        raise TranslogError(f"the download zip has no {TRANSLOG_NAME}")
    return log_bytes, files


def build_results(manifest: dict[str, Any], tlog: TransactionLog) -> list[dict[str, Any]]:
    """One SevisResult per record of the batch, in batch order; unknown request ids after them."""
    by_request = {r.request_id: r for r in tlog.records}
    out: list[dict[str, Any]] = []
    known: set[str] = set()
    for rec in manifest.get("records", []):
        rid = rec.get("request_id")
        known.add(rid)
        r = by_request.get(rid)
        base = {"org_id": manifest["org_id"], "batch_id": manifest["batch_id"], "request_id": rid,
                "student_key": rec.get("student_key"), "kind": rec.get("kind"),
                "process_code": tlog.process_code, "dependents_json": None}
        if r is None:
            out.append({**base, "status": "failure", "sevis_id": rec.get("sevis_id"), "error_code": None,
                        "error_message": "SEVIS returned no result for this record in the transaction log",
                        "processed_at": None})
            continue
        out.append({**base, "status": "success" if r.ok else "failure",
                    "sevis_id": r.sevis_id or rec.get("sevis_id"), "error_code": r.error_code,
                    "error_message": r.error_message, "processed_at": r.processed_at,
                    "dependents_json": orjson.dumps(list(r.dependents)).decode() if r.dependents else None})
    for r in tlog.records:
        if r.request_id not in known:
            out.append({"org_id": manifest["org_id"], "batch_id": manifest["batch_id"], "request_id": r.request_id,
                        "student_key": None, "kind": None, "status": "success" if r.ok else "failure",
                        "sevis_id": r.sevis_id, "error_code": r.error_code, "error_message": r.error_message,
                        "process_code": tlog.process_code, "processed_at": r.processed_at,
                        "dependents_json": orjson.dumps(list(r.dependents)).decode() if r.dependents else None})
    return out
