"""The connector task: config → checks → publication → slot → snapshot → stream, and the retry wrapper.

Delivery rule (the one that must never break): an LSN is confirmed to PostgreSQL only after
Kafka acknowledged every event produced before it. The task keeps two positions:

* ``safe_lsn`` — the highest position such that every event before it has been *produced*:
  a Commit's end LSN, our own heartbeat message's LSN, or a keepalive's WAL end, the last two
  only between transactions;
* ``confirmed_lsn`` — what PostgreSQL has been told (the slot's confirmed_flush_lsn).

:meth:`ConnectorTask._checkpoint` moves one to the other, in this order:

1. note ``target = safe_lsn`` (everything before it is already in the producer);
2. ``producer.flush()`` until nothing is in flight (status updates keep the walsender alive meanwhile);
3. if any delivery failed, raise :class:`TransientError` — the task restarts from the slot and
   re-sends; nothing after the old confirmed position was confirmed;
4. send the standby status update with ``flushed = target``; ``confirmed_lsn = target``.

It runs every ``offset.flush.interval.ms`` and at shutdown. After a crash the stream resumes
at ``confirmed_lsn``: at most one flush interval of events is sent again, with the same
``source.sequence``.
"""

from __future__ import annotations

import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer

from sevisflow import __version__
from sevisflow.connectors.postgres import admin, decoder
from sevisflow.connectors.postgres.columns import ColumnPolicy
from sevisflow.connectors.postgres.convert import SESSION_OPTIONS
from sevisflow.connectors.postgres.envelope import EventBuilder, ReadEnvelope, Record, TableMeta, TxContext
from sevisflow.connectors.postgres.errors import SlotInUseError, classify
from sevisflow.connectors.postgres.metrics import ConnectorMetrics
from sevisflow.connectors.postgres.offsets import ConnectorState, SnapshotProgress, StateStore
from sevisflow.connectors.postgres.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    Value,
    decode,
    format_lsn,
)
from sevisflow.connectors.postgres.pgoutput import (
    Message as PgMessage,
)
from sevisflow.connectors.postgres.replication import ReplicationConnection
from sevisflow.connectors.postgres.snapshot import (
    CopyChunk,
    Run,
    SnapshotMarks,
    begin_snapshot_transaction,
    read_chunks,
    snapshotter_for,
)
from sevisflow.core.checkpoints import checkpoint
from sevisflow.core.config import Settings
from sevisflow.core.errors import SevisflowError, TerminalError, TransientError
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer
from sevisflow.core.log import get_logger
from sevisflow.core.observability import register_probe, unregister_probe

log = get_logger(__name__)

HEARTBEAT_PREFIX = "sevisflow.heartbeat"
STATUS_INTERVAL_S = 1.0
LAG_INTERVAL_S = 2.0
READ_BATCH = 4000
_U32 = struct.Struct(">I").unpack_from
_NO_ENTRY = object()  # "relation not looked up yet" in the stream loop's rels
FLUSH_TIMEOUT_S = 120.0
# Snapshot chunks produced whose acknowledgements may still be coming, one producer each. 1: the COPY of
# chunk N+1 runs while chunk N is acknowledged, then N is settled and N+1 produced (one producer, produce
# order kept within each partition). 2: chunk N+1 is also produced before N is settled, through a second
# producer — slower in every one of seven interleaved runs on the 2-core bench box, by 6-27 %: its broker
# acknowledges no faster when fed by two producers (bench/README.md, "Connector", 2026-12-04).
SNAPSHOT_IN_FLIGHT = 1


@dataclass(slots=True)
class _Stream:
    """The stream loop's state between read batches: the open transaction and the tables seen."""

    metas: dict[int, TableMeta | None] = field(default_factory=dict)  # relid → its meta (None: not captured)
    rels: dict[int, tuple[Any, ...] | None] = field(
        default_factory=dict
    )  # relid → builder.batch_entry, this transaction
    tx: TxContext | None = None
    announced: bool = False  # the open transaction's BEGIN record is produced
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys("cudtm", 0))
    last_commit_ms: int | None = None
    no_tx: TxContext = field(
        default_factory=lambda: TxContext(xid=None, commit_lsn=None, ts_us=0)
    )  # events outside a transaction


@dataclass
class _Sent:
    """A produced snapshot chunk whose acknowledgements may still be coming: its producer and the resume
    point that becomes true once Kafka acknowledged it (and every chunk before it)."""

    producer: Producer
    done: list[str]  # tables finished on Kafka with this chunk (not one whose row is held back)
    table: str | None  # where a resumed snapshot goes on: this table, after ``key``
    key: list[Any] | None
    rows: int  # rows produced up to and including this chunk


@dataclass
class _SnapshotRun:
    """A snapshot's progress while it runs: what Kafka has been handed so far."""

    tx: TxContext
    lsn: int
    table: str | None  # the table of the last row produced
    key: list[Any] | None  # its key (text), where a resumed snapshot goes on
    finished: list[str]  # tables read to the end
    rows: int


class ConnectorTask:
    """One run of the connector, from connecting to stopping (or failing)."""

    def __init__(self, settings: Settings, stop: threading.Event, metrics: ConnectorMetrics) -> None:
        self.settings = settings
        self.c = settings.connector
        self.stop = stop
        self.metrics = metrics
        self.conninfo = settings.postgres.conninfo()
        self.store = StateStore(self.c.offsets_dir, self.c.name, self.c.slot_name)
        self.patterns = admin.compile_include_list(self.c.table_include_list)
        self.query: psycopg.Connection[Any] | None = None
        self.repl: ReplicationConnection | None = None
        self.producer: Producer | None = None
        self.delivery_errors: list[KafkaError] = []
        self.safe_lsn = 0
        self.confirmed_lsn = 0
        self.known_topics: set[str] = set()
        self.builder = EventBuilder(
            name=self.c.topic_prefix,
            db=settings.postgres.dbname,
            version=__version__,
            schemas_enable=self.c.schemas_enable,
            tombstones_on_delete=self.c.tombstones_on_delete,
            transaction_metadata=self.c.provide_transaction_metadata,
        )
        self.tx_topic = f"{self.c.topic_prefix}.transaction"
        self.msg_topic = f"{self.c.topic_prefix}.message"
        self._heartbeat_ok = True
        self._next_status = 0.0
        self._next_lag = 0.0
        self._next_heartbeat = 0.0

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Connect, prepare, snapshot if the mode says so, then stream until ``stop`` is set."""
        c = self.c
        try:
            self.query = psycopg.connect(
                self.conninfo,
                autocommit=True,
                options=SESSION_OPTIONS,
                application_name="sevisflow-connector-query",
                connect_timeout=10,
            )
            info = admin.server_info(self.query)
        except psycopg.Error as exc:
            raise classify(exc, "connecting to the SIS database") from exc
        admin.check_server(info)
        try:
            tables = admin.resolve_tables(self.query, self.patterns)
            admin.check_select(self.query, tables)
            pub = admin.ensure_publication(self.query, c.publication_name, c.publication_autocreate_mode, tables)
            slot = admin.slot_info(self.query, c.slot_name)
        except psycopg.Error as exc:
            raise classify(exc, "preparing the publication") from exc
        if not tables:
            log.warning("connector.no_tables", include_list=len(c.table_include_list))
        self.catalog = admin.Catalog(
            self.query,
            c.topic_prefix,
            c.decimal_handling_mode,
            ColumnPolicy.from_settings(c.column_exclude_list, c.column_mask_hash),
        )
        log.info(
            "connector.starting",
            slot=c.slot_name,
            publication=c.publication_name,
            publication_action=pub,
            tables=tables,
            snapshot_mode=c.snapshot_mode,
            slot_exists=slot is not None,
        )
        decoder.log_choice()  # connector.decoder: c or python, once per process
        if slot is not None:
            admin.check_slot(slot, info.dbname)
            if slot.active:
                raise SlotInUseError(
                    f"replication slot {c.slot_name!r} is in use by another process "
                    f"(pid {slot.active_pid}); stop that connector or choose another slot.name"
                )

        self._producer_overrides: dict[str, Any] = {
            "on_delivery": self._on_delivery,
            "delivery.report.only.error": True,
            "partitioner": "murmur2_random",  # Java's partitioner: same partition as Debezium for a key
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 65536,
            "queue.buffering.max.messages": 200_000,
        }
        self.producer = make_producer(self.settings.kafka, **self._producer_overrides)
        self._ensure_topics(
            [self.catalog.topic_for(*t.split(".", 1)) for t in tables]
            + ([self.tx_topic] if c.provide_transaction_metadata else [])
        )

        state = self.store.load()
        if state.slot_name != c.slot_name:  # pragma: no cover - the file name contains the slot
            state = ConnectorState(slot_name=c.slot_name)
        policy = snapshotter_for(c.snapshot_mode)
        decision = policy.decide(state.offset_exists, state.snapshot is not None, slot is not None)
        new_tables = (
            [t for t in tables if t not in state.snapshotted_tables]
            if state.snapshot_completed and policy.snapshot_new_tables()
            else []
        )

        self.repl = ReplicationConnection(self.conninfo)
        if slot is None:
            lsn, snap_name = self.repl.create_slot(c.slot_name, export_snapshot=decision.snapshot)
            log.info("connector.slot_created", slot=c.slot_name, consistent_lsn=format_lsn(lsn))
            self.safe_lsn = self.confirmed_lsn = lsn
            if decision.snapshot:
                state = ConnectorState(slot_name=c.slot_name, snapshot=self._new_progress(lsn, tables))
                self.store.save(state)
                assert snap_name is not None
                self._snapshot(snap_name, state)
            else:
                state = ConnectorState(slot_name=c.slot_name, snapshot_completed=True, snapshotted_tables=tables)
                self.store.save(state)
        else:
            self.safe_lsn = self.confirmed_lsn = slot.confirmed_flush_lsn or 0
            if decision.snapshot or new_tables:
                if state.snapshot is None:
                    state.snapshot = self._new_progress(0, tables if decision.snapshot else new_tables)
                self._snapshot_with_temporary_slot(state)
        if self.stop.is_set():
            return
        if state.snapshot is None:
            self.metrics.snapshot_not_needed()
        if not decision.stream:
            log.info("connector.snapshot_only_done", slot=c.slot_name)
            self.metrics.state = "done"
            self._write_status(force=True)
            return
        if state.snapshot is not None:  # interrupted by stop
            return
        self._stream()

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(10)
        if self.repl is not None:
            self.repl.close()
        if self.query is not None:
            try:
                self.query.close()
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------ Kafka

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.delivery_errors.append(err)

    def _ensure_topics(self, names: list[str]) -> None:
        from sevisflow.core.topics import AUDIT_RETENTION_MS

        k = self.settings.kafka
        wanted = [n for n in names if n not in self.known_topics]
        if not wanted:
            return
        # the transaction topic has one partition: its BEGIN/END records stay in commit order
        ensure_topics(
            k,
            [
                TopicSpec(
                    n,
                    1 if n == self.tx_topic else k.partitions,
                    k.replication_factor,
                    {
                        "cleanup.policy": "delete",
                        "retention.ms": AUDIT_RETENTION_MS,
                        "min.insync.replicas": str(k.min_insync_replicas),
                    },
                )
                for n in wanted
            ],
        )
        self.known_topics.update(wanted)

    def _produce(self, records: list[Record]) -> None:
        produce = self.producer.produce  # type: ignore[union-attr]
        for topic, key, value, headers in records:
            while True:
                try:
                    if headers:
                        produce(topic, value, key, headers=headers)
                    else:
                        produce(topic, value, key)
                    break
                except BufferError:
                    self._wait_for_queue()

    def _produce_values(self, topic: str, pairs: Iterable[tuple[bytes | None, bytes]], producer: Producer) -> None:
        """Produce (key, value) pairs to one topic (no headers) as they come: the snapshot's path."""
        produce = producer.produce
        for key, value in pairs:
            try:
                produce(topic, value, key)
            except BufferError:
                while True:
                    self._wait_for_queue(producer)
                    try:
                        produce(topic, value, key)
                        break
                    except BufferError:
                        pass

    def _wait_for_queue(self, producer: Producer | None = None) -> None:
        (producer if producer is not None else self.producer).poll(0.05)  # type: ignore[union-attr]
        self._keep_walsender_alive()

    def _keep_walsender_alive(self) -> None:
        repl = self.repl
        if repl is not None and repl.streaming and time.monotonic() >= self._next_status:
            repl.send_status(self.confirmed_lsn)
            self._next_status = time.monotonic() + STATUS_INTERVAL_S

    def _flush(self, producer: Producer | None = None) -> None:
        """Wait until Kafka acknowledged everything produced so far (through ``producer``, by default the
        task's); raise if anything failed."""
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        p = producer if producer is not None else self.producer
        while p.flush(1.0):  # type: ignore[union-attr]
            self._keep_walsender_alive()
            if time.monotonic() > deadline:
                raise TransientError(f"Kafka did not acknowledge the connector's events within {FLUSH_TIMEOUT_S:.0f}s")
        if self.delivery_errors:
            first = self.delivery_errors[0]
            n = len(self.delivery_errors)
            raise TransientError(f"Kafka refused {n} change events ({first.str()}); restarting from the slot")

    def _checkpoint(self) -> None:
        """The commit order of the stream (see the module docstring): flush, check, then confirm."""
        target = self.safe_lsn
        self._flush()
        if target > self.confirmed_lsn and self.repl is not None and self.repl.streaming:
            checkpoint("connector.before_lsn_ack")
            self.repl.send_status(target)
            checkpoint("connector.after_lsn_ack")
            self.confirmed_lsn = target
            self.metrics.confirmed(target)
            self._next_status = time.monotonic() + STATUS_INTERVAL_S

    # ------------------------------------------------------------------ snapshot

    def _new_progress(self, lsn: int, tables: list[str]) -> SnapshotProgress:
        total = sum(self.catalog.estimate_rows(t) for t in tables)
        return SnapshotProgress(lsn=lsn, tables=list(tables), total_estimate=total, started_ms=int(time.time() * 1000))

    def _snapshot_with_temporary_slot(self, state: ConnectorState) -> None:
        """Resume / extend a snapshot at a new exported snapshot (a temporary slot's consistent point)."""
        assert state.snapshot is not None
        tmp = ReplicationConnection(self.conninfo, application_name="sevisflow-connector-snapshot")
        try:
            name = f"{self.c.slot_name[:40]}_snap_{int(time.time())}"
            lsn, snap_name = tmp.create_slot(name, temporary=True, export_snapshot=True)
            if state.snapshot.rows or state.snapshot.done:
                state.snapshot.resumed += 1
            state.snapshot.lsn = lsn
            self.store.save(state)
            log.info(
                "connector.snapshot_resume",
                consistent_lsn=format_lsn(lsn),
                tables=state.snapshot.tables,
                done=len(state.snapshot.done),
                rows=state.snapshot.rows,
            )
            assert snap_name is not None
            self._snapshot(snap_name, state)
        finally:
            tmp.close()

    def _snapshot(self, snapshot_name: str, state: ConnectorState) -> None:
        """Read every table of ``state.snapshot`` at ``snapshot_name``; progress is saved only after acks.

        Pipelined: chunk N+1 is read (COPY) while Kafka acknowledges chunk N — and produced too when
        :data:`SNAPSHOT_IN_FLIGHT` > 1. Each chunk in flight has a producer of its own (the task's, and
        extra ones made for the snapshot), so a chunk's acknowledgement is that producer's flush; chunks
        are settled oldest first — flushed, delivery errors checked, then their resume point saved — so
        the saved position never runs ahead of what Kafka acknowledged. The snapshot's ``last`` row goes
        out only once every other row is acknowledged (normalize takes it as "everything before me is on
        the broker")."""
        prog = state.snapshot
        assert prog is not None
        self.metrics.state = "snapshot"
        conn = psycopg.connect(
            self.conninfo, options=SESSION_OPTIONS, autocommit=True, application_name="sevisflow-connector-snapshot"
        )
        assert self.producer is not None
        ring: list[Producer] = [self.producer]  # chunk n goes to ring[n % SNAPSHOT_IN_FLIGHT]
        inflight: deque[_Sent] = deque()
        try:
            xmin = begin_snapshot_transaction(conn, snapshot_name, [t for t in prog.tables if t not in prog.done])
            tx = TxContext(xid=xmin, commit_lsn=None, ts_us=time.time_ns() // 1000, snapshot="true")
            marks = SnapshotMarks(
                first=prog.rows == 0 and not prog.done and prog.resumed == 0, resumed_table=prog.current
            )
            run = _SnapshotRun(tx, prog.lsn, prog.current, prog.last_key, list(prog.done), prog.rows)
            log.info(
                "connector.snapshot_started",
                tables=prog.tables,
                consistent_lsn=format_lsn(prog.lsn),
                rows_estimate=prog.total_estimate,
                resumed=prog.resumed,
            )
            n = 0
            for table in prog.tables:
                if table in run.finished:
                    continue
                meta, chunks = self._table_chunks(conn, table, prog)
                for chunk in chunks:  # reading chunk n (COPY) while the chunks before it are being acknowledged
                    if not chunk:
                        continue
                    producer = self._ring_producer(ring, n)
                    n += 1
                    while any(s.producer is producer for s in inflight):  # its earlier chunk: settle it first
                        self._snapshot_checkpoint(state, inflight.popleft())
                    self._produce_runs(marks.runs(meta, chunk), run, producer)
                    inflight.append(self._sent(run, marks.held_table, producer))
                    checkpoint("connector.snapshot_chunk_produced")  # produced, acknowledgements outstanding
                    if self.stop.is_set():
                        while inflight:
                            self._snapshot_checkpoint(state, inflight.popleft())
                        log.info("connector.snapshot_interrupted", rows=run.rows)
                        return
                run.finished.append(table)
            while inflight:  # the last row waits for every other one
                self._snapshot_checkpoint(state, inflight.popleft())
            self._produce_runs(marks.finish(), run, self.producer)
            self._snapshot_checkpoint(state, self._sent(run, None, self.producer))
            conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            raise classify(exc, "reading the snapshot") from exc
        finally:
            conn.close()
            for extra in ring[1:]:  # empty unless the snapshot failed; what it still holds is re-sent on resume
                extra.flush(10)
        self._snapshot_done(state, run.rows)

    def _ring_producer(self, ring: list[Producer], n: int) -> Producer:
        """The producer of the snapshot's ``n``-th chunk: one per chunk in flight, made when first needed."""
        i = n % SNAPSHOT_IN_FLIGHT
        if i == len(ring):
            ring.append(make_producer(self.settings.kafka, **self._producer_overrides))
        return ring[i]

    def _table_chunks(
        self, conn: psycopg.Connection[Any], table: str, prog: SnapshotProgress
    ) -> tuple[TableMeta, Iterator[Sequence[Sequence[Value]]]]:
        """The table's meta (its topic made) and its rows in key order, chunk by chunk, after the resumed key."""
        schema, name = table.split(".", 1)
        cols = self.catalog.table_columns(table)
        meta = self.catalog.table_meta(schema, name, [(n, oid, mod) for n, oid, mod, _ in cols])
        self._ensure_topics([meta.topic])
        key_types = self.catalog.column_types(table, meta.key_columns)
        after = prog.last_key if table == prog.current else None
        return meta, read_chunks(conn, meta, key_types, after, max(1, self.c.snapshot_fetch_size))

    def _produce_runs(self, runs: Iterable[Run], run: _SnapshotRun, producer: Producer) -> None:
        """Produce each run of rows with its mark through ``producer``, and note the last row produced."""
        for meta, rows, mark in runs:
            # the held-back row of a chunk comes as a plain row: no envelope for the C loop to build for it
            envelope = self.builder.read_envelope(meta, run.tx, run.lsn, mark) if isinstance(rows, CopyChunk) else None
            if isinstance(rows, CopyChunk) and envelope is not None:
                self._produce_copy_run(meta, rows, run, mark, envelope, producer)
            else:
                read_values = self.builder.iter_read_values(meta, rows, run.tx, run.lsn, mark)
                self._produce_values(meta.topic, read_values, producer)
            run.table, run.key = meta.full_name, list(meta.key_text(rows[-1]))
            run.rows += len(rows)

    def _produce_copy_run(
        self, meta: TableMeta, rows: CopyChunk, run: _SnapshotRun, mark: str, envelope: ReadEnvelope, producer: Producer
    ) -> None:
        """A run kept as COPY text, produced by the C decoder's loop; a row it leaves (an escape it does not
        read, a value its converter refuses) goes through the Python path, which produces it or raises."""
        produce, i, n = producer.produce, 0, len(rows)
        while i < n:
            i, pending = rows.produce_events(i, envelope, produce, meta.topic)
            if pending is not None:  # no room in the producer's queue: wait, then hand it over
                self._wait_for_queue(producer)
                self._produce_values(meta.topic, [pending], producer)
            elif i < n:
                one = self.builder.iter_read_values(meta, rows[i : i + 1], run.tx, run.lsn, mark, envelope.now_us)
                self._produce_values(meta.topic, one, producer)
                i += 1

    @staticmethod
    def _sent(run: _SnapshotRun, held_table: str | None, producer: Producer) -> _Sent:
        """The resume point once what was just produced is acknowledged: the tables done (not one whose row
        is held back) and the last produced key of the current one."""
        done = [t for t in run.finished if t != held_table]
        if run.table and run.table not in done:
            return _Sent(producer, done, run.table, run.key, run.rows)
        return _Sent(producer, done, None, None, run.rows)

    def _snapshot_checkpoint(self, state: ConnectorState, sent: _Sent) -> None:
        """Wait for Kafka's acks of the chunk ``sent`` (every earlier one is settled already), then save its
        resume point; a delivery error raises first, so its progress is never saved."""
        prog = state.snapshot
        assert prog is not None
        self.metrics.heartbeat.beat()
        self._flush(sent.producer)
        prog.done = sent.done
        prog.current, prog.last_key = sent.table, sent.key
        added = sent.rows - prog.rows
        prog.rows = sent.rows
        checkpoint("connector.before_snapshot_progress")
        self.store.save(state)
        checkpoint("connector.after_snapshot_progress")
        self.metrics.snapshot_progress(
            added,
            {
                "table": prog.current,
                "rows": sent.rows,
                "tables_done": len(sent.done),
                "tables": len(prog.tables),
                "total_estimate": prog.total_estimate,
                "completed": False,
            },
        )
        self._write_status()

    def _snapshot_done(self, state: ConnectorState, rows: int) -> None:
        """Mark the snapshot complete in the offsets (the stream may start)."""
        prog = state.snapshot
        assert prog is not None
        state.snapshot_completed = True
        state.snapshotted_tables = sorted(set(state.snapshotted_tables) | set(prog.tables))
        state.snapshot = None
        checkpoint("connector.before_snapshot_done")
        self.store.save(state)
        checkpoint("connector.after_snapshot_done")
        self.metrics.snapshot_progress(
            0,
            {
                "table": None,
                "rows": rows,
                "tables_done": len(prog.tables),
                "tables": len(prog.tables),
                "total_estimate": prog.total_estimate,
                "completed": True,
            },
        )
        log.info("connector.snapshot_completed", rows=rows, tables=len(prog.tables))

    # ------------------------------------------------------------------ stream

    def _stream(self) -> None:
        """Stream from the slot until ``stop``: read a batch, write its changes, then the per-batch bookkeeping."""
        c = self.c
        repl = self.repl
        assert repl is not None and self.query is not None
        repl.start(c.slot_name, c.publication_name, 0)
        self.metrics.state = "streaming"
        self.metrics.confirmed(self.confirmed_lsn)
        log.info("connector.streaming", slot=c.slot_name, from_lsn=format_lsn(self.confirmed_lsn))
        st = _Stream()
        flush_every = max(0.05, c.offset_flush_interval_ms / 1000)
        next_flush = time.monotonic() + flush_every
        hb_every = c.heartbeat_interval_ms / 1000 if c.heartbeat_interval_ms > 0 else None
        self._next_heartbeat = time.monotonic() + (hb_every or 0)
        try:
            beat = self.metrics.heartbeat.beat
            while not self.stop.is_set():
                beat()
                items = repl.read_batch(READ_BATCH, 0.1)
                self.builder.now_us = time.time_ns() // 1000
                self._write_batch(items, st)
                self._after_batch(st)
                now = time.monotonic()
                if now >= next_flush:
                    self._checkpoint()
                    next_flush = time.monotonic() + flush_every
                if repl.reply_requested:
                    repl.send_status(self.confirmed_lsn)
                    self._next_status = now + STATUS_INTERVAL_S
                if hb_every is not None and now >= self._next_heartbeat:
                    self._heartbeat()
                    self._next_heartbeat = now + hb_every
                self._keep_walsender_alive()
                self._write_status()
            self._checkpoint()
            self.metrics.state = "stopped"
            self._write_status(force=True)
            log.info("connector.stopped", confirmed_lsn=format_lsn(self.confirmed_lsn))
        except psycopg.Error as exc:
            raise classify(exc, "streaming changes") from exc

    def _write_batch(self, items: list[tuple[int, bytes | None]], st: _Stream) -> None:
        """The measured hot loop: every item of one read batch. Insert/Update/Delete are written here — runs
        of them by the C writer (``change_batch``), else one by one by ``fast_change`` — and everything
        else (keepalives aside) goes to :meth:`_dispatch`."""
        builder = self.builder
        fast_change = builder.fast_change
        kproduce = self.producer.produce  # type: ignore[union-attr]
        produce = self._produce
        tombstones = builder.tombstones_on_delete
        txmeta = self.c.provide_transaction_metadata
        c_batch = builder.change_batch  # the C writer's loop over a run of changes, or None
        metas = st.metas
        n_c = n_u = n_d = 0
        i, n_items = 0, len(items)
        while i < n_items:
            lsn, payload = items[i]
            i += 1
            if payload is None:  # keepalive: between transactions, its WAL end is safe
                if st.tx is None and lsn > self.safe_lsn:
                    self.safe_lsn = lsn
                continue
            kind = payload[0]
            if kind != 73 and kind != 85 and kind != 68:  # not I U D
                self._dispatch(decode(payload), lsn, st)
                continue
            tx = st.tx
            relid = _U32(payload, 1)[0] if len(payload) >= 6 else -1
            meta = metas.get(relid)
            if meta is None or tx is None:
                decode(payload)  # raises DecodeError if malformed, as before
                continue
            if txmeta and not st.announced:
                self._announce(tx, st)
            if c_batch is not None:  # the C writer takes this change and the run after it
                nxt, a, b, d = self._c_run(items, i - 1, relid, meta, tx, st)
                n_c += a
                n_u += b
                n_d += d
                if nxt >= i:
                    i = nxt
                    continue
            rec = fast_change(meta, payload, tx, lsn)
            if rec is None:
                self._generic_change(meta, payload, tx, lsn, st)
                continue
            op, key, value = rec  # the common case: one pass from bytes to the record
            topic = meta.topic
            try:
                kproduce(topic, value, key)
            except BufferError:
                produce([(topic, key, value, None)])
            if op == "d":
                if tombstones and key is not None:
                    try:
                        kproduce(topic, None, key)
                    except BufferError:
                        produce([(topic, key, None, None)])
                n_d += 1
            elif op == "u":
                n_u += 1
            else:
                n_c += 1
        counts = st.counts
        counts["c"] += n_c
        counts["u"] += n_u
        counts["d"] += n_d

    def _c_run(
        self, items: list[tuple[int, bytes | None]], start: int, relid: int, meta: TableMeta, tx: TxContext, st: _Stream
    ) -> tuple[int, int, int, int]:
        """Hand the run of changes from ``start`` to the C writer: (index after it, creates, updates, deletes).
        The index is ``start`` when it took nothing (a table it does not write)."""
        builder = self.builder
        entry = st.rels.get(relid, _NO_ENTRY)
        if entry is _NO_ENTRY:
            entry = st.rels[relid] = builder.batch_entry(meta, tx)
        if entry is None:
            return start, 0, 0, 0
        produce = self.producer.produce  # type: ignore[union-attr]
        nxt, a, b, d, pending = builder.change_batch(
            items, start, st.rels, builder.batch_tx(tx), builder.batch_tail(), produce, builder.tombstones_on_delete
        )
        if pending:  # its produce() found the queue full
            self._produce(pending)
        return nxt, a, b, d

    def _generic_change(self, meta: TableMeta, payload: bytes, tx: TxContext, lsn: int, st: _Stream) -> None:
        """A change the fast paths declined (unchanged TOAST, a key change, …): decoded, then built field by field."""
        builder = self.builder
        msg = decode(payload)
        if isinstance(msg, Insert):
            self._produce(builder.insert(meta, msg.new, tx, lsn))
            st.counts["c"] += 1
        elif isinstance(msg, Update):
            self._produce(builder.update(meta, msg.old, msg.old_kind, msg.new, tx, lsn))
            st.counts["u"] += 1
        elif isinstance(msg, Delete):
            self._produce(builder.delete(meta, msg.old, msg.old_kind, tx, lsn))
            st.counts["d"] += 1

    def _announce(self, tx: TxContext, st: _Stream) -> None:
        """The transaction's BEGIN record, before its first event (transaction metadata on)."""
        self._produce([self.builder.transaction_event(self.tx_topic, tx, "BEGIN")])
        st.announced = True

    def _dispatch(self, msg: Any, lsn: int, st: _Stream) -> None:
        """Every pgoutput message but Insert/Update/Delete: transaction bounds, tables, types, truncates, messages."""
        if isinstance(msg, Begin):
            st.tx = TxContext(xid=msg.xid, commit_lsn=msg.final_lsn, ts_us=msg.commit_ts_us, begin_lsn=lsn)
            st.announced = False
            st.rels.clear()
        elif isinstance(msg, Commit):
            self._on_commit(msg, st)
        elif isinstance(msg, Relation):
            st.metas[msg.relid] = self._relation(msg)
            st.rels.clear()
        elif isinstance(msg, TypeInfo):
            self.catalog.forget_type(msg.oid)
        elif isinstance(msg, Truncate):
            self._truncate(msg, lsn, st)
        elif isinstance(msg, PgMessage):
            self._logical_message(msg, st)

    def _on_commit(self, msg: Commit, st: _Stream) -> None:
        """The END record (if BEGIN went out); the commit's end is now a safe position."""
        tx = st.tx
        if tx is not None and st.announced:
            tx.end_lsn = msg.end_lsn
            self._produce([self.builder.transaction_event(self.tx_topic, tx, "END")])
        st.tx = None
        if msg.end_lsn > self.safe_lsn:
            self.safe_lsn = msg.end_lsn
        st.last_commit_ms = msg.commit_ts_us // 1000

    def _truncate(self, msg: Truncate, lsn: int, st: _Stream) -> None:
        for relid in msg.relids:
            meta = st.metas.get(relid)
            if meta is not None:
                if self.c.provide_transaction_metadata and st.tx is not None and not st.announced:
                    self._announce(st.tx, st)
                self._produce([self.builder.truncate(meta, st.tx or st.no_tx, lsn)])
                st.counts["t"] += 1

    def _logical_message(self, msg: PgMessage, st: _Stream) -> None:
        """Our heartbeat moves the safe position (between transactions); other messages go to ``<prefix>.message``."""
        if msg.prefix == HEARTBEAT_PREFIX:
            if not msg.transactional and st.tx is None and msg.lsn > self.safe_lsn:
                self.safe_lsn = msg.lsn
            return
        self._ensure_topics([self.msg_topic])
        mtx = st.tx if (msg.transactional and st.tx is not None) else st.no_tx
        self._produce([self.builder.message(self.msg_topic, msg.prefix, msg.content, mtx, msg.lsn)])
        st.counts["m"] += 1

    def _after_batch(self, st: _Stream) -> None:
        """Once per read batch, not per event: poll delivery reports, update the metrics."""
        self.producer.poll(0)  # type: ignore[union-attr]
        if st.last_commit_ms is not None:
            self.metrics.commit_seen(st.last_commit_ms)
            st.last_commit_ms = None
        if any(st.counts.values()):
            self.metrics.events(st.counts)
            st.counts = dict.fromkeys(st.counts, 0)

    def _relation(self, rel: Relation) -> TableMeta | None:
        """A Relation message (first use of a table, or its columns changed): rebuild its TableMeta."""
        name = f"{rel.namespace}.{rel.name}"
        if not admin.included(name, self.patterns):
            return None
        identity = [col.name for col in rel.columns if col.is_key] if rel.replica_identity != "f" else []
        meta = self.catalog.table_meta(
            rel.namespace, rel.name, [(col.name, col.type_oid, col.typmod) for col in rel.columns], rel.relid, identity
        )
        self._ensure_topics([meta.topic])
        log.info("connector.relation", table=name, columns=len(rel.columns), key=list(meta.key_columns))
        return meta

    def _heartbeat(self) -> None:
        """A logical message on an idle database lets the slot advance (without it a filtered or idle database never lets PostgreSQL free WAL)."""
        if self._heartbeat_ok:
            try:
                admin.emit_heartbeat(self.query, HEARTBEAT_PREFIX, self.c.name)  # type: ignore[arg-type]
            except psycopg.errors.InsufficientPrivilege:
                self._heartbeat_ok = False
                log.warning(
                    "connector.heartbeat_disabled",
                    reason="no EXECUTE on pg_logical_emit_message; the slot still advances on server keepalives",
                )
            except psycopg.Error as exc:
                raise classify(exc, "emitting a heartbeat") from exc

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if now >= self._next_lag or force:
            self._next_lag = now + LAG_INTERVAL_S
            try:
                slot = admin.slot_info(self.query, self.c.slot_name)  # type: ignore[arg-type]
                self.metrics.slot_lag(slot.lag_bytes if slot else None)
            except psycopg.Error:
                pass
        if force or now >= getattr(self, "_next_status_file", 0.0):
            self._next_status_file = now + STATUS_INTERVAL_S
            self.metrics.write_status(self.store.status_path)


def run_connector(settings: Settings, stop_event: threading.Event) -> None:
    """Run the PostgreSQL connector until ``stop_event`` is set (or ``snapshot.mode=initial_only`` is done).

    Transient failures (PostgreSQL or Kafka unreachable, server restart, a slot still held by a
    dying process) restart the task from the slot after a backoff; terminal ones (bad config,
    missing privileges, wal_level) raise a :class:`~sevisflow.core.errors.SevisflowError` naming the fix.
    """
    c = settings.connector
    metrics = ConnectorMetrics(c.name, c.slot_name)  # served on the process's [metrics] port (serve_for)
    stall_s = settings.metrics.stall_after_s

    def health() -> tuple[bool, str]:
        """Alive while the stream loop or the snapshot keeps turning (a hung call shows up here)."""
        age = metrics.heartbeat.age()
        return (age <= stall_s, "ok" if age <= stall_s else f"connector loop stalled for {age:.0f}s")

    def ready() -> tuple[bool, str]:
        ok = metrics.state in ("snapshot", "streaming", "done")
        return (ok, "ok" if ok else metrics.state)

    probe = f"connector:{c.name}"
    register_probe(probe, health, ready)
    attempts = 0
    slot_attempts = 0
    try:
        while not stop_event.is_set():
            task = ConnectorTask(settings, stop_event, metrics)
            started = time.monotonic()
            try:
                task.run()
                return
            except SlotInUseError as exc:
                slot_attempts += 1
                if slot_attempts > c.slot_max_retries:
                    raise TerminalError(f"{exc} (gave up after {c.slot_max_retries} retries)") from exc
                delay = c.slot_retry_delay_ms / 1000
                log.warning("connector.slot_in_use", attempt=slot_attempts, retry_in_s=delay)
                metrics.restarted(str(exc))
            except TransientError as exc:
                attempts = 0 if time.monotonic() - started > 60 else attempts + 1
                if 0 <= c.errors_max_retries < attempts:
                    raise
                delay = min(30.0, exc.retry_after_s * (2 ** min(attempts, 5)) / 2)
                log.warning("connector.restarting", error=str(exc), attempt=attempts, retry_in_s=delay)
                metrics.restarted(str(exc))
                metrics.state = "restarting"
            except SevisflowError:
                metrics.state = "failed"
                raise
            except (psycopg.Error, OSError) as exc:
                err = classify(exc, "running the connector")
                if isinstance(err, TerminalError):
                    raise err from exc
                delay = 1.0
                log.warning("connector.restarting", error=str(err), attempt=attempts)
                metrics.restarted(str(err))
            finally:
                task.close()
            stop_event.wait(delay)
    finally:
        unregister_probe(probe)
        metrics.close()
