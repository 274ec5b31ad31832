"""The SEVIS uploader/downloader: moves batch folders through the outbox states.

State machine (each arrow is one rename of the batch folder; see :mod:`sevisflow.sinks.outbox`)::

    ready ──▶ sending ──S0000 / download S0030 or zip──▶ uploaded ──zip──▶ processed
                │ ▲
                │ └─ POST again (same BatchID) only when the evidence proves SEVIS did not take it
                ▼
              failed   (SEVIS provably did not take it: a ``requeue`` BatchCommand for its records)

**One source of truth.** The folder is the state. A batch in ``sending/`` is always "outcome not
known to be accepted": before every POST the uploader creates ``post-<n>.json`` (O_EXCL, fsynced),
and after SEVIS answers it creates ``post-<n>.answer.json`` with the answer's code. These files are
append-only evidence, never rewritten; :func:`classify` turns them into the one decision for the
batch. ``state.json`` holds only timing and display data (next check, S0031 count, history): losing
it or finding it stale only makes the uploader wait longer, never post again.

**Which answers prove "not taken"** (:data:`RETRY_CODES`, :data:`REFUSED_CODES`):

* no ``post-*`` file at all (a crash between the move to ``sending/`` and the first POST);
* the connection could not be opened (``NOT_SENT``), SEVIS refused our TLS certificate or answered
  HTTP 4xx (``REFUSED_HTTP``), or answered the POST with S0001 (upload failed) or S0003 (user id):
  the same BatchID may be posted again;
* a synchronous refusal S0002, S0011, S0012, S0013 of a POST, or S0010 ("BatchID already used")
  — each only when *every earlier POST of ours is itself proven not taken*: then SEVIS has no upload
  of ours under this BatchID, and the records are re-queued (new BatchID at the next close);
* ``operator-requeue.json``: the operator checked SEVIS and ran ``sevisflow sink requeue``.

Everything else — a timeout, a reset or dropped connection after the request was sent, HTTP 5xx or
429/503, an answer that is not a transaction log, an unknown code, a crash between POST and its
answer file, S0010 after one of our own POSTs — leaves the outcome **unknown**, and an unknown
outcome is resolved by downloading, never by posting or re-queuing: a zip or S0030 means SEVIS has
it (→ ``uploaded/``); S0031 ("no such batch") may only mean SEVIS has not registered it yet, so the
same BatchID is posted again only after S0031 was answered ``repost_after_checks`` times in a row
*and* ``repost_after_s`` after our last POST, at most ``max_posts`` POSTs without a conclusive
answer, and never right after SEVIS answered S0010 or a refusal to the last one. A re-post can
never make SEVIS process the batch twice: SEVIS refuses a used BatchID (S0010), and S0010 after our
own POST is "unknown" again, resolved by download. A refusal after an unknown POST re-queues
nothing: the batch waits, visible in ``sevisflow sink status``, for a download to settle it or for
the operator. A batch in ``uploaded/`` is never posted again, whatever SEVIS answers (S0031 there is
"not registered yet": polled with back-off, shown in the status).

Results: the zip is read with caps (:func:`extract_results`), the transaction log parsed
incrementally, its BatchID/OrgID (and request ids) checked against the manifest
(:class:`~sevisflow.sinks.sevis.translog.MismatchError`), the results published and acknowledged, then the
folder renamed to ``processed/``. A crash before that rename publishes the same results again
(same key and value; consumers key them by batch_id + request_id).

Observability (stage ``sink-sevis``): records in (label ``outbox``) when a batch is first taken
for upload, records out per topic (results, requeue commands), every SEVIS answer by operation
and result code (``sevisflow_remote_answers_total{op="upload",code="S0010"}``), errors by kind
(:func:`error_kind`), and a heartbeat beaten before every HTTP exchange, so a call that hangs
shows on ``/health`` (see :mod:`sevisflow.sinks.sevis.stage`). Labels are codes and topic names only.

Checkpoints (:func:`sevisflow.core.checkpoints.checkpoint`, where the crash tests stop the process)
sit just before and just after each side effect: ``sevis.<before|after>_``
``move_sending``, ``post``, ``move_uploaded``, ``download``, ``publish``, ``move_processed``,
``requeue``, ``move_failed``.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from sevisflow.core.checkpoints import checkpoint
from sevisflow.core.config import Settings
from sevisflow.core.errors import TerminalError, TransientError, UnreachableError
from sevisflow.core.ledger import STATE_RANK, Ledger, LedgerWriter, evidence_files, sealed_by_batch
from sevisflow.core.log import get_logger
from sevisflow.core.observability import Heartbeat, StageMetrics
from sevisflow.sinks.outbox import BatchDir, Outbox, copy_private, create_evidence, replace_private, write_private
from sevisflow.sinks.sevis.client import Backpressure, CertificateError, DownloadReply, NotSent, SevisClient
from sevisflow.sinks.sevis.translog import (
    LimitError,
    MismatchError,
    RecordResult,
    TransactionLog,
    TranslogError,
    assign_new_ids,
    parse_translog,
)

log = get_logger(__name__)

RETRY_CODES = {"S0001", "S0003", "NOT_SENT", "REFUSED_HTTP"}
"""Answers to a POST that prove SEVIS did not take it and that the same BatchID may be posted again."""
REFUSED_CODES = {"S0002", "S0011", "S0012", "S0013"}
"""Synchronous refusals of a POST: not taken, and posting the same file again cannot help."""
DUPLICATE = "S0010"
TRANSLOG_NAME = "sevis_transaction_log.xml"
OPERATOR_REQUEUE = "operator-requeue.json"
STAGE = "sink-sevis"
OUTBOX_LABEL = "outbox"  # the ``topic`` label of records_in: this stage reads batch folders, not a topic
_POST_RE = re.compile(r"^post-(\d+)\.json$")
_RATIO_MIN_BYTES = 1 << 20  # entries smaller than this are never refused for their compression ratio


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label of an error of this stage (a fixed word: messages may quote values)."""
    if isinstance(exc, CertificateError):
        return "sevis_certificate"
    if isinstance(exc, Backpressure):
        return "sevis_backpressure"
    if isinstance(exc, LimitError):
        return "sevis_limit"
    if isinstance(exc, MismatchError):
        return "sevis_mismatch"
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


# ---------------------------------------------------------------------- evidence (pure reading)


@dataclass(frozen=True)
class Post:
    """One POST of a batch: when it was made and SEVIS's answer (None = no answer recorded)."""

    n: int
    at: float
    code: str | None


def posts_of(bd: BatchDir) -> list[Post]:
    """The batch's POSTs, oldest first, from its evidence files."""
    out = []
    for p in bd.path.iterdir():
        m = _POST_RE.match(p.name)
        if not m:
            continue
        n = int(m.group(1))
        try:
            at = float(orjson.loads(p.read_bytes()).get("at", 0))
        except (OSError, ValueError):
            at = p.stat().st_mtime
        answer = bd.path / f"post-{n}.answer.json"
        code = None
        if answer.exists():
            try:
                code = orjson.loads(answer.read_bytes()).get("code")
            except (OSError, ValueError):
                code = None  # unreadable evidence counts as no answer: the careful reading
        out.append(Post(n, at, code))
    return sorted(out, key=lambda p: p.n)


def unknown_posts(posts: list[Post]) -> int:
    """How many POSTs have no answer that proves anything (what ``max_posts`` limits)."""
    return sum(1 for p in posts if p.code not in RETRY_CODES | REFUSED_CODES | {"S0000"})


def classify(posts: list[Post], operator_requeue: bool = False) -> str:
    """What the evidence of a ``sending/`` batch proves. Pure; the one place the rules live.

    ``accepted``  SEVIS answered S0000 to a POST;
    ``refused``   SEVIS provably has no upload of ours and refused this file: re-queue the records;
    ``post``      SEVIS provably has no upload of ours (or nothing was posted): POST (again);
    ``unknown``   some POST may have been taken: resolve by download, never by posting or re-queuing.
    """
    if any(p.code == "S0000" for p in posts):
        return "accepted"
    proven = True  # every POST so far is proven not taken
    for p in posts:
        if p.code in RETRY_CODES or p.code in REFUSED_CODES:
            continue
        if p.code == DUPLICATE and proven:
            continue  # the BatchID was used before any POST of ours that SEVIS may have taken
        proven = False
    if operator_requeue:
        return "refused"
    if not proven:
        return "unknown"
    if posts and (posts[-1].code in REFUSED_CODES or posts[-1].code == DUPLICATE):
        return "refused"
    return "post"


def _iso(t: float | None) -> str | None:
    if not t:
        return None
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds")


def later_evidence(bd: BatchDir) -> str | None:
    """A file in a ``ready/`` folder that only a later state writes (the folder was moved back), or None."""
    later = [
        n for n in ("upload-response.xml", "results", "reason.json", OPERATOR_REQUEUE) if (bd.path / n).exists()
    ] + [p.name for p in bd.path.glob("post-*.json")]
    return sorted(later)[0] if later else None


def describe(bd: BatchDir, now: float | None = None, max_posts: int = 3) -> str:
    """One line for ``sevisflow sink status``: what the batch waits for, since when, next check."""
    now = time.time() if now is None else now
    state = bd.state_data()
    nxt = state.get("next_check_at")
    when = "now" if not nxt or nxt <= now else _iso(nxt)
    if bd.state == "ready":
        later = later_evidence(bd)
        if later:
            return f"NOT posted: moved back by hand ({later} is in its folder); it left ready/ before — check SEVIS"
        return "waiting for its first upload"
    if bd.state == "sending":
        posts = posts_of(bd)
        verdict = classify(posts, (bd.path / OPERATOR_REQUEUE).exists())
        if verdict == "unknown":
            first = next((p for p in posts if p.code not in RETRY_CODES | REFUSED_CODES), posts[-1])
            s31 = state.get("s0031") or {}
            extra = ""
            if posts[-1].code in REFUSED_CODES:
                extra = f"; a later POST was refused ({posts[-1].code}): operator action may be needed"
            elif posts[-1].code == DUPLICATE:
                extra = (
                    "; SEVIS answered S0010 to a later POST (it holds this BatchID): waiting for a download to show it"
                )
            elif unknown_posts(posts) >= max_posts:
                extra = "; no more POSTs allowed: check SEVIS, then `sevisflow sink requeue` if it has nothing"
            return (
                f"outcome unknown since {_iso(first.at)} ({len(posts)} POST{'s' if len(posts) != 1 else ''}), "
                f"{state.get('checks', 0)} checks"
                f"{', S0031 x' + str(s31.get('count')) if s31.get('count') else ''}, next check {when}{extra}"
            )
        if verdict == "refused":
            return "refused by SEVIS: re-queuing its records"
        if verdict == "accepted":
            return "accepted by SEVIS: moving to uploaded"
        return f"to be posted ({len(posts)} POSTs so far, none taken), next try {when}"
    if bd.state == "uploaded":
        err = state.get("last_download_error")
        s31 = state.get("s0031") or {}
        base = f"accepted, awaiting results, {state.get('download_tries', 0)} downloads, next {when}"
        if s31.get("count"):
            base += f"; SEVIS answers S0031 since {_iso(s31.get('since'))} (x{s31['count']}): not registered yet"
        return base + (f"; last error: {err}" if err else "")
    if bd.state == "processed":
        return f"processed {state.get('process_code') or ''}".strip()
    if bd.state == "failed":
        return "failed: records re-queued"
    return ""


# ---------------------------------------------------------------------- the sink


class SevisSink:
    """One pass over the outbox per :meth:`step`; safe to run again after a crash at any point."""

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        publisher: Publisher,
        client: Transport | None = None,
        clock: Callable[[], float] = time.time,
        metrics: StageMetrics | None = None,
        ledger: LedgerWriter | None = None,
    ) -> None:
        self.settings = settings
        # every file this sink writes into a batch folder is sealed on the audit ledger, with the state the
        # batch reached; the head is anchored on the ledger topic when the publisher can (Kafka), see _seal
        self.ledger = ledger if ledger is not None else LedgerWriter(Ledger(outbox.root), STAGE, settings.school.org_id)
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
        hist = state.setdefault("history", [])
        hist.append({"at": round(self.clock(), 3), "what": what, **fields})
        del hist[:-200]  # bounded: a batch polled for weeks keeps its last 200 steps

    def _save(self, bd: BatchDir, state: dict[str, Any]) -> None:
        bd.save_state(state)

    def _move(self, bd: BatchDir, target: str) -> BatchDir:
        checkpoint(f"sevis.before_move_{target}")
        moved = self.outbox.move(bd, target)
        checkpoint(f"sevis.after_move_{target}")
        if target != "sending":
            self._seal(moved)
        return moved

    def _seal(self, bd: BatchDir) -> None:
        """Seal the folder's new evidence and state (append + fsync), then anchor the head (acknowledged).

        A crash in between leaves the file ahead of the anchor or a file unsealed; :meth:`reconcile`
        settles both at the next start."""
        try:
            batch_id = bd.manifest().get("batch_id") or bd.name
        except (OSError, ValueError):
            batch_id = bd.name
        key, value = self.ledger.seal_evidence(bd, batch_id)
        anchor = getattr(self.publisher, "anchor", None)  # a test double without Kafka seals the file only
        if anchor is not None:
            anchor(key, value)

    def reconcile(self) -> int:
        """At start: refuse a ledger that lost its anchors, seal what a crash left unsealed, anchor the head.

        Returns how many batches were sealed now. Only names are compared (no hashing of sealed files)."""
        entries = self.ledger.ledger.entries()
        self.ledger.check(entries)
        known = sealed_by_batch(entries)
        sealed = 0
        for st in ("sending", "uploaded", "processed", "failed"):
            for bd in list(self.outbox.batches(st)):
                try:
                    bid = bd.manifest().get("batch_id") or bd.name
                except (OSError, ValueError):
                    continue
                k = known.get(bid) or {"files": {}, "state": None}
                new_files = set(evidence_files(bd.path, bd.xml_path.name)) - set(k["files"])
                if new_files or k["state"] is None or STATE_RANK[st] > STATE_RANK.get(k["state"], 0):
                    self.ledger.seal_evidence(bd, bid)
                    sealed += 1
        anchor = getattr(self.publisher, "anchor", None)
        if anchor is not None:
            anchor(*self.ledger.head())
        return sealed

    def moved_back(self, bd: BatchDir) -> str | None:
        """Why a ``ready/`` batch must not be posted: its folder or the ledger shows it went further before
        (a folder moved back by hand); None when it is a fresh batch."""
        later = later_evidence(bd)
        if later:
            return f"its folder holds {later}, written after it left ready/"
        try:
            bid = bd.manifest().get("batch_id") or bd.name
        except (OSError, ValueError):
            return None
        st = (sealed_by_batch(self.ledger.ledger.entries()).get(bid) or {}).get("state")
        if st is not None and STATE_RANK.get(st, 0) > 0:
            return f"the audit ledger has it sealed in {st}/"
        return None

    # ------------------------------------------------------------------ the pass

    def step(self) -> StepReport:
        """Download due results, then settle/upload due batches (results first)."""
        report = StepReport()
        now = self.clock()
        self.heartbeat.beat()
        for bd in list(self.outbox.batches("uploaded")):
            if bd.state_data().get("next_check_at", 0) <= now:
                self.heartbeat.beat()
                self._download(bd, report)
        for bd in list(self.outbox.batches("sending")):
            if bd.state_data().get("next_check_at", 0) <= now:
                self.heartbeat.beat()
                self._settle(bd, report)
        for bd in list(self.outbox.batches("ready")):
            self.heartbeat.beat()
            back = self.moved_back(bd)
            if back:
                # never upload a batch again because its folder was moved back by hand: SEVIS has or had it
                self.metrics.error("outbox_moved_back")
                log.error("sevis.batch_moved_back", batch=bd.name, day=bd.day, why=back)
                continue
            manifest = bd.manifest()
            sending = self._move(bd, "sending")
            self.metrics.records_in(OUTBOX_LABEL, _record_count(manifest))
            self._settle(sending, report)
        return report

    def pending(self) -> int:
        """Batches not yet in a final state (processed or failed)."""
        return sum(1 for st in ("ready", "sending", "uploaded") for _ in self.outbox.batches(st))

    # ------------------------------------------------------------------ sending/: settle by the evidence

    def _settle(self, bd: BatchDir, report: StepReport) -> None:
        manifest = bd.manifest()
        state = bd.state_data()
        posts = posts_of(bd)
        if not posts and state.get("upload_tries"):
            # a folder from before the evidence files: it was posted, outcome unknown; write that down
            create_evidence(bd.path / "post-0.json", orjson.dumps({"n": 0, "at": state.get("last_upload_try", 0)}))
            posts = posts_of(bd)
        operator = (bd.path / OPERATOR_REQUEUE).exists()
        verdict = classify(posts, operator)
        if verdict == "accepted":
            state.update(next_check_at=self.clock() + self.settings.sevis.poll_interval_s, accepted_at=self.clock())
            self._save(bd, state)
            self._move(bd, "uploaded")
            report.uploaded += 1
        elif verdict == "refused":
            code = "operator" if operator else (posts[-1].code or "operator")
            self._fail(
                bd,
                manifest,
                code,
                "the operator found that SEVIS has no upload of it"
                if operator
                else f"SEVIS refused the upload with {code}",
            )
            report.failed += 1
        elif verdict == "post":
            self._post(bd, manifest, state, posts, report)
        else:
            self._resolve(bd, manifest, state, posts, report)

    def _post(
        self, bd: BatchDir, manifest: dict[str, Any], state: dict[str, Any], posts: list[Post], report: StepReport
    ) -> None:
        batch_id = manifest["batch_id"]
        n = (posts[-1].n if posts else 0) + 1
        if not create_evidence(bd.path / f"post-{n}.json", orjson.dumps({"n": n, "at": self.clock()})):
            raise TerminalError(
                f"batch {batch_id}: post-{n}.json exists already in {bd.path}: is another "
                "SEVIS sink working on this outbox?"
            )
        self._seal(bd)  # the evidence that this POST is about to be made is sealed before it is made
        state.pop("s0031", None)
        xml = bd.xml_path.read_bytes()
        log.info("sevis.upload", batch_id=batch_id, records=manifest.get("record_count"), attempt=n)
        checkpoint("sevis.before_post")
        try:
            reply = self.client.upload(manifest["org_id"], self._user(manifest), batch_id, bd.xml_path.name, xml)
        except NotSent as exc:
            self._answer(bd, n, "NOT_SENT")
            self._retry_later(bd, state, report, f"upload: {exc}", n, exc)
            return
        except TerminalError:
            # TLS refused / HTTP 4xx: SEVIS's application did not take the request; the stage stops
            self._answer(bd, n, "REFUSED_HTTP")
            raise
        except TransientError as exc:
            # sent, but no usable answer: the outcome is unknown (resolved by download next time)
            self.metrics.error(error_kind(exc))
            self._history(state, "upload_unknown", error=str(exc))
            self._retry_later(bd, state, report, f"upload outcome unknown: {exc}", 1, exc)
            log.warning("sevis.upload_outcome_unknown", batch_id=batch_id, error=str(exc))
            return
        checkpoint("sevis.after_post")
        code = reply.code or "none"
        self.metrics.remote_answer("upload", code)
        state["last_upload_code"] = code
        self._history(state, "upload", code=code)
        if code == "S0000":
            write_private(bd.path / "upload-response.xml", reply.body)
        self._answer(bd, n, code)
        self._save(bd, state)
        if code == "S0000":
            self.metrics.batch(_record_count(manifest), "upload")
            log.info("sevis.uploaded", batch_id=batch_id)
        else:
            log.warning("sevis.upload_answer", batch_id=batch_id, code=code)
        # the answer is evidence now: let the one set of rules decide (accepted / refused / post / unknown)
        posts = posts_of(bd)
        verdict = classify(posts)
        if verdict == "post":
            self._retry_later(bd, state, report, f"upload answered {code}", n)
        elif verdict == "unknown":
            self._retry_later(bd, state, report, f"upload answered {code}: outcome unknown, checked by download", 1)
        else:
            self._settle(bd, report)

    def _answer(self, bd: BatchDir, n: int, code: str) -> None:
        create_evidence(bd.path / f"post-{n}.answer.json", orjson.dumps({"code": code, "at": self.clock()}))
        self._seal(bd)  # SEVIS's answer (and the POST it answers) is sealed as soon as it is on disk

    def _retry_later(
        self,
        bd: BatchDir,
        state: dict[str, Any],
        report: StepReport,
        why: str,
        tries: int,
        exc: BaseException | None = None,
    ) -> None:
        delay = self._backoff(tries, exc.retry_after_s if isinstance(exc, Backpressure) else 0.0)
        state.update(last_upload_error=why, next_check_at=self.clock() + delay)
        self._save(bd, state)
        report.retried += 1

    def _ask_sevis(self, manifest: dict[str, Any]) -> DownloadReply:
        """SEVIS's answer to a download of the batch, between the download's two checkpoints."""
        checkpoint("sevis.before_download")
        reply = self.client.download(manifest["org_id"], self._user(manifest), manifest["batch_id"])
        checkpoint("sevis.after_download")
        return reply

    def _resolve(
        self, bd: BatchDir, manifest: dict[str, Any], state: dict[str, Any], posts: list[Post], report: StepReport
    ) -> None:
        """Outcome unknown: ask SEVIS by downloading. Never posts unless S0031 persisted long enough."""
        batch_id = manifest["batch_id"]
        state["checks"] = state.get("checks", 0) + 1
        try:
            reply = self._ask_sevis(manifest)
        except TerminalError:
            raise
        except TransientError as exc:
            self.metrics.error(error_kind(exc))
            self._retry_later(bd, state, report, f"check by download: {exc}", state["checks"], exc)
            return
        code = reply.code
        self.metrics.remote_answer("probe", code or "none")
        self._history(state, "probe", code=code)
        last = posts[-1]
        if code in ("S0000", "S0030"):
            log.info("sevis.upload_confirmed_by_download", batch_id=batch_id, code=code)
            state.update(
                last_upload_code="S0000", accepted_at=self.clock(), next_check_at=self.clock(), last_upload_error=None
            )
            state.pop("s0031", None)
            self._save(bd, state)
            up = self._move(bd, "uploaded")
            report.uploaded += 1
            if reply.zip_bytes is not None:
                self._process_zip(up, up.manifest(), up.state_data(), reply.zip_bytes, report)
            return
        if code == "S0031":
            s31 = state.get("s0031") or {}
            if s31.get("after_post") != last.n:
                s31 = {"after_post": last.n, "count": 0, "since": self.clock()}
            s31["count"] += 1
            state["s0031"] = s31
            waited = self.clock() - last.at
            s = self.settings.sevis
            if (
                s31["count"] >= s.repost_after_checks
                and waited >= s.repost_after_s
                and unknown_posts(posts) < s.max_posts
                and last.code not in REFUSED_CODES | {DUPLICATE}
            ):
                log.warning(
                    "sevis.repost_after_s0031",
                    batch_id=batch_id,
                    checks=s31["count"],
                    waited_s=round(waited, 1),
                    post=last.n + 1,
                )
                self._post(bd, manifest, state, posts, report)
                return
            delay = self._backoff(state["checks"])
            delay = min(delay, s.repost_after_s - waited) if waited < s.repost_after_s else min(delay, s.retry_base_s)
            state.update(
                next_check_at=self.clock() + delay,
                last_upload_error="SEVIS answers S0031 (no such batch, or not registered yet)",
            )
            self._save(bd, state)
            report.retried += 1
            return
        self._retry_later(bd, state, report, f"check by download answered {code}", state["checks"])

    def _fail(self, bd: BatchDir, manifest: dict[str, Any], code: str, reason: str) -> None:
        """Provably not taken: re-queue its records (durably, idempotent command id), then ``failed/``."""
        record_ids = [r["record_id"] for r in manifest.get("records", []) if r.get("record_id")]
        checkpoint("sevis.before_requeue")
        self.publisher.requeue(manifest["org_id"], manifest["batch_id"], record_ids, reason, code)
        checkpoint("sevis.after_requeue")
        self.metrics.records_out(self.settings.topics.commands, len(record_ids))
        replace_private(
            bd.path / "reason.json",
            orjson.dumps({"code": code, "reason": reason, "requeued": len(record_ids)}, option=orjson.OPT_INDENT_2),
        )
        self._move(bd, "failed")
        log.error("sevis.batch_failed", batch_id=manifest["batch_id"], code=code, requeued=len(record_ids))

    # ------------------------------------------------------------------ uploaded/: download

    def _download(self, bd: BatchDir, report: StepReport) -> None:
        manifest = bd.manifest()
        batch_id = manifest["batch_id"]
        state = bd.state_data()
        state["download_tries"] = state.get("download_tries", 0) + 1
        state["last_download_try"] = self.clock()
        try:
            reply = self._ask_sevis(manifest)
        except TerminalError:
            raise
        except TransientError as exc:
            self.metrics.error(error_kind(exc))
            delay = self._backoff(state["download_tries"], exc.retry_after_s if isinstance(exc, Backpressure) else 0)
            refused = isinstance(exc, TranslogError)  # e.g. an answer over max_response_bytes
            state.update(
                last_download_error=f"unusable results: {exc}" if refused else str(exc),
                next_check_at=self.clock() + delay,
            )
            self._history(state, "download_refused" if refused else "download_error", kind=error_kind(exc))
            self._save(bd, state)
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
            # SEVIS accepted it (we hold the evidence) but does not list it yet: poll, never post again
            s31 = state.get("s0031") or {"count": 0, "since": self.clock()}
            s31["count"] += 1
            state["s0031"] = s31
            log.warning("sevis.accepted_but_not_registered", batch_id=batch_id, checks=s31["count"])
        else:
            state.pop("s0031", None)
        delay = self.settings.sevis.poll_interval_s if code == "S0030" else self._backoff(state["download_tries"])
        state["next_check_at"] = self.clock() + delay
        self._save(bd, state)

    def _process_zip(
        self, bd: BatchDir, manifest: dict[str, Any], state: dict[str, Any], data: bytes, report: StepReport
    ) -> None:
        """Unpack (capped), parse, check, publish one result per record, then move to ``processed``.

        Order: 1. unpack the zip into results/ (streamed, capped); 2. parse the log incrementally
        and check its BatchID/OrgID against the manifest; 3. publish the results and wait for
        Kafka's acknowledgement; 4. rename the folder to processed/. A refusal in 1–2 publishes
        nothing and leaves the batch in uploaded/ (downloaded again after a back-off; the error is
        in ``sink status``). A crash before 4 repeats 1–3: the same results are published again.
        """
        batch_id = manifest["batch_id"]

        def accept(log_path: Path) -> TransactionLog:
            with open(log_path, "rb") as fh:
                parsed = parse_translog(fh)
            if parsed.process is None:
                raise TranslogError("transaction log has no Process part yet")
            check_log_matches(manifest, parsed)
            return parsed

        try:
            _, tlog = extract_results(data, bd.path, self.settings.sevis, accept)
        except (TranslogError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
            err = exc if isinstance(exc, TranslogError) else TranslogError(f"not a usable zip ({exc})")
            self.metrics.error(error_kind(err))
            state.update(
                last_download_error=f"unusable results: {err}",
                next_check_at=self.clock() + self._backoff(state.get("download_tries", 1)),
            )
            self._history(state, "download_refused", kind=error_kind(err))
            self._save(bd, state)
            report.retried += 1
            log.warning("sevis.results_refused", batch_id=batch_id, kind=error_kind(err), error=str(err))
            return
        self._seal(bd)  # the downloaded log and PDFs are sealed as soon as they are in place, before publishing
        results = build_results(manifest, tlog)
        checkpoint("sevis.before_publish")
        self.publisher.results(manifest["org_id"], results)
        checkpoint("sevis.after_publish")
        self.metrics.remote_answer("process", tlog.process_code or "none")
        self.metrics.records_out(self.settings.topics.results, len(results))
        self.metrics.sevis_results(results)  # per record: accepted, or rejected by SEVIS's error code
        state.update(
            processed_at=self.clock(),
            process_code=tlog.process_code,
            last_download_error=None,
            success=sum(1 for r in results if r["status"] == "success"),
            failure=sum(1 for r in results if r["status"] != "success"),
        )
        state.pop("s0031", None)
        self._history(state, "processed", code=tlog.process_code)
        self._save(bd, state)
        self._move(bd, "processed")
        report.processed += 1
        log.info(
            "sevis.processed",
            batch_id=batch_id,
            process_code=tlog.process_code,
            success=state["success"],
            failure=state["failure"],
        )


def _record_count(manifest: dict[str, Any]) -> int:
    count = manifest.get("record_count")
    return int(count) if isinstance(count, int) else len(manifest.get("records", []))


def check_log_matches(manifest: dict[str, Any], tlog: TransactionLog) -> None:
    """Refuse a log that is not this batch's: BatchID and OrgID must equal the manifest's, and when
    the log lists records, at least one must carry a request id of the batch."""
    if tlog.batch_id != manifest.get("batch_id") or tlog.org_id != manifest.get("org_id"):
        raise MismatchError(
            f"the transaction log is for BatchID {tlog.batch_id!r} / OrgID {tlog.org_id!r}, but the batch is "
            f"{manifest.get('batch_id')!r} / {manifest.get('org_id')!r}: nothing was published; check the batch in "
            "SEVIS (the download answered another batch)"
        )
    ours = {r.get("request_id") for r in manifest.get("records", [])}
    if tlog.records and ours and not any(r.request_id in ours for r in tlog.records):
        raise MismatchError(
            f"none of the {len(tlog.records)} results in the transaction log of {tlog.batch_id} is a request of "
            "this batch: SEVIS holds another upload under this BatchID; nothing was published"
        )


def _check_central_directory(data: bytes, max_entries: int) -> None:
    """Refuse a zip whose directory lists too many files *before* ``zipfile`` reads that directory
    (it builds one object per entry: a directory of millions of tiny entries is a memory bomb too)."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - (22 + 65535)))
    if end < 0 or len(data) < end + 22:
        raise TranslogError("the download is not a zip (no end-of-directory record)")
    entries, cd_size = struct.unpack_from("<HL", data, end + 10)
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        raise LimitError("the results zip uses ZIP64 (more than 65,535 files or 4 GiB of directory): refused")
    if entries > max_entries or cd_size > max_entries * 1024:
        raise LimitError(
            f"the results zip lists {entries} files ({cd_size} bytes of directory), more than [sevis] "
            f"max_zip_entries = {max_entries}"
        )


def extract_results(
    data: bytes, batch_dir: Path, limits: Any, accept: Callable[[Path], Any] | None = None
) -> tuple[Path, Any]:
    """Unpack a results zip into ``<batch>/results/`` with caps; returns (log path, ``accept``'s value).

    Caps (``[sevis]``): ``max_zip_entries`` files, ``max_entry_bytes`` per file,
    ``max_unzipped_bytes`` in all, ``max_compression_ratio`` per file (for files over 1 MiB).
    Each member is streamed to its 0600 file in 64 KiB pieces and counted as it inflates, so a
    zip bomb is stopped at the cap whatever its headers claim. File names are reduced to their
    last part (no path traversal); hidden names are skipped. Unpacked into a temporary folder
    and renamed into place only once ``accept(log_path)`` (parse and check) returned, so
    ``results/`` never holds half a zip or a log that was refused.
    """
    _check_central_directory(data, limits.max_zip_entries)
    tmp = batch_dir / f".results-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(mode=0o700)
    try:
        log_name: str | None = None
        total = 0
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > limits.max_zip_entries:
                raise LimitError(
                    f"the results zip has {len(infos)} files, more than [sevis] max_zip_entries = "
                    f"{limits.max_zip_entries}"
                )
            for info in infos:
                base = Path(info.filename.replace("\\", "/")).name
                if not base or base.startswith(".") or "\x00" in base:
                    continue
                if info.file_size > limits.max_entry_bytes:
                    raise LimitError(
                        f"zip entry {base} declares {info.file_size} bytes, more than [sevis] "
                        f"max_entry_bytes = {limits.max_entry_bytes}"
                    )
                if info.file_size > _RATIO_MIN_BYTES and info.file_size > limits.max_compression_ratio * max(
                    1, info.compress_size
                ):
                    raise LimitError(
                        f"zip entry {base} inflates {info.file_size / max(1, info.compress_size):.0f}"
                        f"-fold, more than [sevis] max_compression_ratio = "
                        f"{limits.max_compression_ratio:g}"
                    )
                budget = min(limits.max_entry_bytes, limits.max_unzipped_bytes - total)
                target = tmp / base
                if target.exists():
                    target.unlink()
                try:
                    with zf.open(info) as src:
                        size = copy_private(target, src, budget, f"zip entry {base}")
                except ValueError as exc:
                    raise LimitError(
                        f"{exc}: over [sevis] max_entry_bytes = {limits.max_entry_bytes} or "
                        f"max_unzipped_bytes = {limits.max_unzipped_bytes} in all"
                    ) from None
                total += size
                if size > _RATIO_MIN_BYTES and size > limits.max_compression_ratio * max(1, info.compress_size):
                    raise LimitError(
                        f"zip entry {base} inflated {size / max(1, info.compress_size):.0f}-fold, more "
                        f"than [sevis] max_compression_ratio = {limits.max_compression_ratio:g}"
                    )
                lower = base.lower()
                if lower == TRANSLOG_NAME or (log_name is None and lower.endswith(".xml") and "transaction" in lower):
                    log_name = base if lower == TRANSLOG_NAME or log_name is None else log_name
        if log_name is None:
            raise TranslogError(f"the download zip has no {TRANSLOG_NAME}")
        if log_name != TRANSLOG_NAME:
            (tmp / log_name).rename(tmp / TRANSLOG_NAME)
        value = accept(tmp / TRANSLOG_NAME) if accept is not None else None
        out = batch_dir / "results"
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return out / TRANSLOG_NAME, value
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_results(manifest: dict[str, Any], tlog: TransactionLog) -> list[dict[str, Any]]:
    """One SevisResult per record of the batch, in batch order; unknown request ids after them."""
    by_request = {r.request_id: r for r in tlog.records}
    out: list[dict[str, Any]] = []
    known: set[str] = set()
    for rec in manifest.get("records", []):
        rid = rec.get("request_id")
        known.add(rid)
        r = by_request.get(rid)
        base = {
            "org_id": manifest["org_id"],
            "batch_id": manifest["batch_id"],
            "request_id": rid,
            "student_key": rec.get("student_key"),
            "kind": rec.get("kind"),
            "process_code": tlog.process_code,
            "dependents_json": None,
            "sites_json": None,
        }
        if r is None:
            out.append(
                {
                    **base,
                    "status": "failure",
                    "sevis_id": rec.get("sevis_id"),
                    "error_code": None,
                    "error_message": "SEVIS returned no result for this record in the transaction log",
                    "processed_at": None,
                }
            )
            continue
        out.append(
            {
                **base,
                "status": "success" if r.ok else "failure",
                "sevis_id": r.sevis_id or rec.get("sevis_id"),
                "error_code": r.error_code,
                "error_message": r.error_message,
                "processed_at": r.processed_at,
                **_new_ids_json(rec.get("new_ids"), r),
            }
        )
    for r in tlog.records:
        if r.request_id not in known:
            out.append(
                {
                    "org_id": manifest["org_id"],
                    "batch_id": manifest["batch_id"],
                    "request_id": r.request_id,
                    "student_key": None,
                    "kind": None,
                    "status": "success" if r.ok else "failure",
                    "sevis_id": r.sevis_id,
                    "error_code": r.error_code,
                    "error_message": r.error_message,
                    "process_code": tlog.process_code,
                    "processed_at": r.processed_at,
                    **_new_ids_json(None, r),
                }
            )
    return out


def _new_ids_json(expected: Any, r: RecordResult) -> dict[str, str | None]:
    """``dependents_json`` / ``sites_json`` of a result: the ids SEVIS assigned (dependent SEVIS IDs, an
    exchange visitor's SiteIds), each with the SIS key it belongs to when the manifest names it."""
    deps, sites = assign_new_ids(expected if isinstance(expected, dict) else None, r)
    return {
        "dependents_json": orjson.dumps(deps).decode() if deps else None,
        "sites_json": orjson.dumps(sites).decode() if sites else None,
    }
