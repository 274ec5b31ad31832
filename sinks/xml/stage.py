"""The XML sink stage: closed batches from ``sevis.batches`` → validated files in the outbox.

Per closed batch (:func:`sink_closed_batch`):

* valid → ``<outbox>/<day>/ready/<BatchID>/`` (XML + manifest), where the uploader
  picks it up. A re-delivered batch finds its folder (in any state) and writes
  nothing: same BatchID, same day (from the close time), same bytes.
* invalid → the document and ``problems.json`` go to the quarantine, never to the
  outbox. Each record at fault goes to the DSO as a dead letter (code, the
  validator's message without the value, student key, field). The records that
  are fine (or only over the 250 limit) are re-queued with one ``requeue``
  BatchCommand listing their ``record_ids`` with ``close_now``: the batcher closes
  them again at once into a new document (new BatchID, the same DSO and close time),
  which comes back here, so only the offending records wait; they wait for the DSO
  to fix the SIS data, which produces new events. Every step is on the log, so
  ``sevisflow verify`` re-derives the new batch byte for byte. A header problem
  (BatchID, OrgID, the DSO's userID) refuses the whole batch and re-queues every
  record without ``close_now`` (it needs the DSO).
* which document: the batch's records pick the renderer (:mod:`sevisflow.sinks.xml.document`) —
  F/M records a ``SEVISBatchCreateUpdateStudent``, ``EV.*`` records (one exchange program, OrgID =
  its program number) a ``SEVISBatchCreateUpdateEV`` validated against the EV XSD. A batch holding
  both is refused as a whole (a header problem whose dead letter names the fix).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Message

from sevisflow.core.config import Settings
from sevisflow.core.dlq import dead_letter
from sevisflow.core.kafka_io import Output, RecordHandler, StateStore, TransactionalLoop, fence_predecessor
from sevisflow.core.ledger import Ledger, LedgerWriter, writer_anchors
from sevisflow.core.log import get_logger
from sevisflow.core.serde import SerializationError, registry
from sevisflow.core.topics import stage_group
from sevisflow.sinks.outbox import BatchDir, Outbox, day_for, safe_name, sha256
from sevisflow.sinks.xml.document import check_document
from sevisflow.sinks.xml.render import Checked, ClosedBatch, Problem
from sevisflow.sinks.xml.render_ev import EV_CREATE, new_ids
from sevisflow.sinks.xml.xsd import StudentSchema, load_schema

log = get_logger(__name__)

STAGE = "sink_xml"
BATCH_SCHEMA = "sevisflow.batches.BatchEvent"
COMMAND_SCHEMA = "sevisflow.commands.BatchCommand"


@dataclass
class XmlOutcome:
    """What happened to one closed batch."""

    batch: ClosedBatch
    status: str  # "written" | "exists" | "quarantined"
    path: str
    checked: Checked | None = None
    requeue_record_ids: list[str] = field(default_factory=list)
    dead: list[Problem] = field(default_factory=list)


def _is_create(r: Mapping[str, Any]) -> bool:
    return r.get("kind") in ("Create", EV_CREATE) or r.get("section") == "create"


def _manifest_record(r: Mapping[str, Any]) -> dict[str, Any]:
    """One record of the manifest; an EV record that creates dependents or sites also lists their SIS keys
    (``new_ids``), with which the SEVIS sink matches the ids SEVIS returns to them."""
    out = {
        "request_id": r.get("request_id"),
        "record_id": r.get("record_id"),
        "student_key": r.get("student_key"),
        "kind": r.get("kind"),
        "section": r.get("section"),
        "sevis_id": r.get("sevis_id"),
    }
    refs = new_ids(r)
    return {**out, "new_ids": refs} if refs else out


def manifest_for(
    batch: ClosedBatch, checked: Checked, day: str, schema: StudentSchema, file_name: str, version: str | None = None
) -> dict[str, Any]:
    """The manifest kept beside the XML: what is in the file and its sha256 (no personal data).
    ``version``: the XSD version the document was checked with (default: the student schema's)."""
    return {
        "batch_id": batch.batch_id,
        "org_id": batch.org_id,
        "closed_by": batch.closed_by,
        "closed_at_ms": batch.at_ms,
        "day": day,
        "file": file_name,
        "sha256": sha256(checked.xml),
        "bytes": len(checked.xml),
        "record_count": len(checked.rendered),
        "creates": sum(1 for r in checked.rendered if _is_create(r)),
        "updates": sum(1 for r in checked.rendered if not _is_create(r)),
        "schema_version": schema.version if version is None else version,
        "records": [_manifest_record(r) for r in batch.records],
    }


def sink_closed_batch(batch: ClosedBatch, schema: StudentSchema, outbox: Outbox) -> XmlOutcome:
    """Render, validate and file one closed batch. Idempotent: the same batch always gives the same result.

    The order: 1. render + validate (pure); 2. look for the batch's folder (outbox,
    any state, or quarantine) — found means done before, nothing is written;
    3. write the folder atomically (temp folder, fsync, rename).
    """
    day = day_for(batch.at_ms, outbox.tz)
    checked, version = check_document(batch, schema)
    file_name = f"{safe_name(batch.batch_id)}.xml"
    manifest = manifest_for(batch, checked, day, schema, file_name, version)
    if checked.ok:
        found = outbox.find(batch.batch_id, day)
        if found is not None:
            _check_same(found, manifest)
            return XmlOutcome(batch, "exists", str(found.path), checked)
        bd, created = outbox.write_ready(day, batch.batch_id, checked.xml, manifest)
        log.info(
            "sink_xml.written" if created else "sink_xml.exists",
            batch_id=batch.batch_id,
            day=day,
            records=len(checked.rendered),
            sha256=manifest["sha256"],
        )
        return XmlOutcome(batch, "written" if created else "exists", str(bd.path), checked)
    problems = checked.problems
    bad = checked.bad_request_ids()
    requeue = [r.get("record_id") for r in batch.records if r.get("request_id") not in bad]
    path, created = outbox.write_quarantine(day, batch.batch_id, checked.xml, manifest, [p.as_dict() for p in problems])
    log.warning(
        "sink_xml.quarantined",
        batch_id=batch.batch_id,
        day=day,
        problems=len(problems),
        refused=len(bad),
        requeued=len(requeue),
        first_written=created,
    )
    dead = [p for p in problems if p.at_fault]
    return XmlOutcome(batch, "quarantined", str(path), checked, [r for r in requeue if r], dead)


def _check_same(found: BatchDir, manifest: dict[str, Any]) -> None:
    try:
        old = found.manifest()
    except (OSError, ValueError):
        return
    if old.get("sha256") != manifest["sha256"]:
        log.error(
            "sink_xml.closed_batch_changed",
            batch_id=manifest["batch_id"],
            state=found.state,
            kept_sha256=old.get("sha256"),
            new_sha256=manifest["sha256"],
        )


def outputs_for(outcome: XmlOutcome, settings: Settings, msg: Message | None = None) -> list[Output]:
    """Dead letters for the refused records and one ``requeue`` command for the rest (deterministic)."""
    if outcome.status != "quarantined":
        return []
    b = outcome.batch
    outs: list[Output] = []
    header = any(p.request_id is None for p in outcome.dead)
    others = "wait for the DSO's next close" if header else "are sent again at once"
    for p in outcome.dead:
        where = f"record {p.request_id} ({p.kind})" if p.request_id else "the batch header"
        reason = (
            f"batch {b.batch_id}: {where} does not validate against the SEVIS XSD: "
            f"{p.field or '-'}: {p.message}. "
            + (
                f"This record was taken out (the document is kept in the quarantine); the batch's other "
                f"records {others}. Fix the data in the SIS and the change goes into a later batch."
                if p.request_id
                else "The batch was quarantined; fix the setting or the DSO user id and close again."
            )
        )
        outs.append(
            dead_letter(
                settings.topics.dlq, STAGE, p.code, reason, b.at_ms, msg=msg, student_key=p.student_key, field=p.field
            )
        )
    if outcome.requeue_record_ids:
        refused = sorted(outcome.checked.bad_request_ids()) if outcome.checked else []
        # only records at fault and no header problem: the batcher closes the valid ones again at once (new
        # BatchID); each round refuses at least one record, so this ends. A header problem waits for the DSO.
        outs.append(
            requeue_command(
                settings,
                b.org_id,
                b.batch_id,
                outcome.requeue_record_ids,
                reason="batch failed XSD validation; valid records re-queued"
                + ("" if header or not refused else " and sent again at once"),
                at_ms=b.at_ms,
                command_id=f"requeue-{b.batch_id}-xsd",
                extra={"refused_request_ids": refused, "close_now": bool(refused) and not header},
            )
        )
    return outs


def requeue_command(
    settings: Settings,
    org_id: str,
    batch_id: str,
    record_ids: list[str],
    reason: str,
    at_ms: int,
    command_id: str,
    extra: dict[str, Any] | None = None,
) -> Output:
    """A ``requeue`` BatchCommand: these records of ``batch_id`` go back into the open batch."""
    record = {
        "command_id": command_id,
        "org_id": org_id,
        "kind": "requeue",
        "dso_user_id": None,
        "student_key": None,
        "record_ids": list(record_ids),
        "reviewed_revision": None,
        "batch_id": batch_id,
        "reason": reason,
        "requested_at_ms": at_ms,
        "payload_json": orjson.dumps(extra).decode() if extra else None,
    }
    return Output(settings.topics.commands, org_id.encode(), registry().encode(COMMAND_SCHEMA, record))


def decode_closed(value: bytes) -> ClosedBatch | None:
    """The closed batch in a BatchEvent value, or None for other event types."""
    event = registry().decode(value, BATCH_SCHEMA)
    if event.get("type") != "closed":
        return None
    records = orjson.loads(event.get("records_json") or "[]")
    return ClosedBatch.from_event(event, records)


def seal_output(settings: Settings, writer: LedgerWriter, outbox: Outbox, outcome: XmlOutcome) -> list[Output]:
    """Seal a filed batch on the audit ledger (appended + fsynced now, before the commit) and the new head
    for the ledger topic, produced in this transaction. A re-delivery seals nothing new and re-publishes
    the head, so a crash between the append and the commit is settled by the replay."""
    if outcome.status not in ("written", "exists"):
        return []
    bd = outbox.find(outcome.batch.batch_id)
    if bd is None:
        return []
    key, value = writer.seal_archive(bd, outcome.batch.batch_id)
    return [Output(settings.topics.ledger, key, value)]


def make_handler(
    settings: Settings, schema: StudentSchema, outbox: Outbox, writer: LedgerWriter | None = None
) -> RecordHandler:
    def handle(msg: Message, state: StateStore) -> Iterable[Output]:
        if (value := msg.value()) is None:
            return []
        try:
            batch = decode_closed(value)
        except (SerializationError, ValueError, KeyError) as exc:
            return [
                dead_letter(
                    settings.topics.dlq,
                    STAGE,
                    "bad_batch_event",
                    f"undecodable BatchEvent: {type(exc).__name__}: {exc}",
                    msg.timestamp()[1] if msg.timestamp()[1] > 0 else 0,
                    msg=msg,
                )
            ]
        if batch is None:
            return []
        outcome = sink_closed_batch(batch, schema, outbox)
        return outputs_for(outcome, settings, msg) + (seal_output(settings, writer, outbox, outcome) if writer else [])

    return handle


def make_outbox(settings: Settings) -> Outbox:
    return Outbox(settings.sevis.outbox_dir, settings.sevis.quarantine_dir, settings.school.timezone)


def group_id(settings: Settings) -> str:
    """The consumer group: per deployment, like the processors' (tests get their own from the topic names)."""
    return stage_group(settings, "sink-xml")


def ledger_writer(settings: Settings, outbox: Outbox) -> LedgerWriter:
    """The sink's ledger writer, checked against the heads anchored on the ledger topic (TerminalError when
    the file lost them: it was truncated, replaced or re-linked while the sink was down)."""
    anchors = writer_anchors(settings.kafka, settings.topics.ledger)
    writer = LedgerWriter(Ledger(outbox.root), "sink-xml", settings.school.org_id, anchors)
    writer.head()
    return writer


def build_loop(
    settings: Settings,
    schema: StudentSchema,
    outbox: Outbox,
    instance: str | None = None,
    writer: LedgerWriter | None = None,
) -> TransactionalLoop:
    """The XML sink's loop with a stable identity, like the processors'.

    ``transactional.id`` = ``group.instance.id`` = ``<group>-<instance>`` (``$SEVISFLOW_INSTANCE``,
    else the host name): a restarted sink fences its crashed predecessor, whose open transaction
    the broker aborts at once (read_committed readers of the commands and DLQ topics do not wait
    for ``transaction.timeout.ms``), and takes its partitions back without a session timeout.
    """
    return TransactionalLoop(
        settings.kafka,
        group_id(settings),
        [settings.topics.batches],
        make_handler(settings, schema, outbox, writer),
        transactional_id=transactional_id(settings, instance),
        batch_size=50,
        dlq_topic=settings.topics.dlq,
        stall_after_s=settings.metrics.stall_after_s,
        stage="sink-xml",
    )


def transactional_id(settings: Settings, instance: str | None = None) -> str:
    """``<group>-<instance>``: ``instance``, else ``$SEVISFLOW_INSTANCE``, else the host name."""
    return f"{group_id(settings)}-{instance or os.environ.get('SEVISFLOW_INSTANCE') or socket.gethostname()}"


def run(
    settings: Settings, stop_event: threading.Event, max_idle_polls: int | None = None, instance: str | None = None
) -> None:
    """Run the XML sink until ``stop_event`` is set.

    Commit order per polled batch of records, inside one Kafka transaction:
    1. decode each closed BatchEvent; render and validate it (pure);
    2. write the file (or the quarantine folder) atomically and fsync it;
    3. produce the dead letters and the ``requeue`` command; seal the filed batch on the audit ledger
       (append + fsync) and produce the ledger's new head on the ledger topic;
    4. commit the consumer offsets with the transaction.
    A crash before 4 replays the records: step 2 finds the folder and writes nothing,
    step 3 produces the same records again in the new transaction.
    """
    schema = load_schema(settings.sevis.xsd_dir)
    outbox = make_outbox(settings)
    # fence a crashed predecessor first: the ledger's anchors are read read_committed, and its open
    # transaction (which may hold a ledger head) would hold that read up to transaction.timeout.ms
    fence_predecessor(settings.kafka, transactional_id(settings, instance))
    loop = build_loop(settings, schema, outbox, instance, ledger_writer(settings, outbox))
    loop.stop_when(stop_event, "sink-xml")
    log.info("sink_xml.started", topic=settings.topics.batches, outbox=str(outbox.root))
    loop.run(max_idle_polls=max_idle_polls)
    log.info("sink_xml.stopped", processed=loop.processed)
