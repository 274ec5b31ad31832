"""The batcher's Kafka adapter: a thin shell around :func:`sevisflow.processors.batcher.core.apply`.

Inputs, all keyed by OrgID and co-partitioned (same partition count and the
same partitioner, so one school's events, commands and results share a partition
number): ``sevis.events``, ``sevis.batch.commands``, ``sevis.results``.
Output: ``sevis.batches`` (plus the scheduled close commands on
``sevis.batch.commands`` and dead letters on ``sevisflow.dlq``), and the compacted
per-school view ``sevis.batch.open`` (key OrgID, one OpenBatch record = the open batch as
``batch show`` displays it). The view is written once per school per transaction, after all
the transaction's inputs, in the same transaction as the events it summarises; after a restart
or a rebalance every school of the taken partitions is written once more, so the view heals
itself (e.g. after an upgrade, or if the topic was recreated).

It runs in :class:`~sevisflow.core.kafka_io.TransactionalLoop`: outputs, state changes
and input offsets commit in one Kafka transaction. Two details differ from the
loop's defaults, both because the state of a school must live in exactly one
place: the consumer uses the *range* assignor (it gives one member the same
partition number of every input topic, the cooperative-sticky default does not),
and a stable ``group.instance.id``/``transactional.id`` per instance, so a
restarted instance fences its crashed predecessor and aborts its open
transaction at once instead of after the transaction timeout.

Persisted state (changelog ``sevisflow.batcher.state``, compacted, partition = input
partition), one key per item so a change writes only what changed:

=========================  =====================================================
key                        value (JSON)
=========================  =====================================================
``m|<org>``                meta: revision, seq, last BatchID stamp, open_since, sched_date, early_rev, held
``r|<org>|<record_id>``    one open-batch record (status open / held / waiting)
``s|<org>|<student_key>``  the student's SEVIS ID
``c|<org>|<command_id>``   an applied command and what it produced (idempotence)
``b|<org>|<batch_id>``     a closed batch's content (requeue, result matching)
=========================  =====================================================

Once a transaction commits, the school's open records it wrote are left to the store
(:class:`BatcherStore`, "spilled"): memory holds their ids and stubs, not the records.

Resume rule: the state is exactly the effect of every input up to the committed
offsets of the three input topics; after a crash the loop restores it and goes
on with the first uncommitted input.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from confluent_kafka import Message

from sevisflow.core.checkpoints import checkpoint
from sevisflow.core.config import Settings
from sevisflow.core.dlq import dead_letter
from sevisflow.core.errors import ConfigError
from sevisflow.core.kafka_io import Output, StateStore, TopicSpec, TransactionalLoop, ensure_topics, position
from sevisflow.core.log import get_logger
from sevisflow.core.observability import StageMetrics
from sevisflow.core.serde import SerializationError, registry
from sevisflow.core.state import CommittedState, open_committed
from sevisflow.core.topics import pipeline_topics, stage_group, state_topic_spec
from sevisflow.core.topics import state_topic as core_state_topic
from sevisflow.core.worklist.deadlines import Deadlines, DueMemo
from sevisflow.processors.batcher.core import (
    CommandIn,
    EventIn,
    PMap,
    Publish,
    Reject,
    ResultIn,
    School,
    SendCommand,
    Spilled,
    SpilledBatch,
    Tick,
    apply,
    changed_keys,
    open_view,
    spilled,
    spilled_batches,
    view_changed,
)
from sevisflow.processors.batcher.gauges import worklist_gauges
from sevisflow.processors.batcher.guard import MAX_FUTURE_MS, CommandPolicy, SchoolPolicy, parse_principals
from sevisflow.processors.batcher.ids import BATCH_ID_PREFIX, member_batch_prefix, user_id_problem

log = get_logger(__name__)

EVENT_SCHEMA = "sevisflow.events.SevisEvent"
COMMAND_SCHEMA = "sevisflow.commands.BatchCommand"
RESULT_SCHEMA = "sevisflow.results.SevisResult"
BATCH_SCHEMA = "sevisflow.batches.BatchEvent"
OPEN_BATCH_SCHEMA = "sevisflow.batches.OpenBatch"
TICK_EVERY_S = 2.0
GAUGES_EVERY_S = 5.0


def state_topic(settings: Settings) -> str:
    return core_state_topic(settings, "batcher")


def group_id(settings: Settings) -> str:
    return stage_group(settings, "batcher")


def batcher_topics(settings: Settings) -> list[TopicSpec]:
    """The batcher's own topic: its state changelog."""
    return [state_topic_spec(settings, "batcher")]


# ----------------------------------------------------------------------------- state store


HOT_RECORDS = 4096
"""Committed open records the batcher keeps decoded (the most recently written or read, across its schools);
every other open record is read back from the state store when an input, a close or the view needs it."""
HOT_BATCHES = 8
"""Kept closed batches whose content the batcher keeps decoded (the most recently read): SEVIS's results for
one batch read its content once per result record."""


class BatcherStore(StateStore):
    """The loop's state store plus a cache of decoded :class:`School` values, dropped on abort.

    A school's open records stay in memory only until the transaction that wrote them commits: then they are
    *spilled* (:func:`~sevisflow.processors.batcher.core.spilled`), i.e. the school keeps their ids and reads
    them back from this store when it needs them, the last ``HOT_RECORDS`` written or read kept decoded. So the
    batcher's memory follows its RocksDB block cache, not the size of its open batches (docs/ARCHITECTURE.md,
    "Batcher").

    It also tracks which schools' open-batch view must be (re)published: ``view_dirty`` until a
    transaction that carried the view commits (``view_sent`` are those of the open transaction).
    """

    def __init__(self, committed: CommittedState | None = None) -> None:
        super().__init__(committed)
        self.cache: dict[tuple[int, str], School] = {}
        self.hot: OrderedDict[tuple[int, str, str], dict[str, Any]] = OrderedDict()
        """The committed open records kept decoded, least recently used first (see RecordLoader)."""
        self.hot_batches: OrderedDict[tuple[int, str, str], list[dict[str, Any]]] = OrderedDict()
        """The content of kept closed batches read lately, least recently used first (see BatchLoader)."""
        self.partitions: set[int] = set()
        self.view_dirty: set[tuple[int, str]] = set()
        self.view_sent: set[tuple[int, str]] = set()
        # the schools with committed state, per partition: listed at assignment, then kept up to date at
        # each commit, so listing them (every tick and gauge pass) is not a pass over every key
        self._orgs: dict[int, set[str]] = {}

    def commit(self) -> None:
        written: dict[tuple[int, str], list[str]] = {}
        closed: dict[tuple[int, str], list[str]] = {}
        for partition, kv in self._staged.items():
            _follow_meta_keys(self._orgs.setdefault(partition, set()), kv)
            for key in kv:
                if key.startswith((b"r|", b"b|")):
                    org, _, rest = key[2:].decode().partition("|")
                    (written if key[0] == ord("r") else closed).setdefault((partition, org), []).append(rest)
        super().commit()
        self.view_dirty -= self.view_sent
        self.view_sent.clear()
        for (partition, org), rids in written.items():
            self._spill(partition, org, rids)
        for (partition, org), bids in closed.items():
            self._spill_batches(partition, org, bids)

    def _spill(self, partition: int, org: str, rids: list[str]) -> None:
        """Leave the committed records ``rids`` of a cached school to the store, the newest kept decoded."""
        school = self.cache.get((partition, org))
        for rid in rids:
            self.hot.pop((partition, org, rid), None)
        if school is None:
            return
        records = school.records
        for rid in rids:
            rec = records.get(rid)
            if rec is not None:
                self.hot[(partition, org, rid)] = rec  # the newest, last to go
        while len(self.hot) > HOT_RECORDS:
            self.hot.popitem(last=False)
        spilled_records = spilled(records, rids, RecordLoader(self, partition, org))
        self.cache[(partition, org)] = dataclasses.replace(school, records=spilled_records)

    def _spill_batches(self, partition: int, org: str, bids: list[str]) -> None:
        """Leave the content of the committed closed batches ``bids`` of a cached school to the store."""
        for bid in bids:
            self.hot_batches.pop((partition, org, bid), None)
        school = self.cache.get((partition, org))
        if school is not None:
            batches = spilled_batches(school.batches, bids, BatchLoader(self, partition, org))
            self.cache[(partition, org)] = dataclasses.replace(school, batches=batches)

    def abort(self) -> None:
        super().abort()
        self.cache.clear()
        self.view_sent.clear()

    def load_partition(self, partition: int, data: Mapping[bytes, bytes]) -> None:
        super().load_partition(partition, data)
        self._forget(partition)
        self.partitions.add(partition)
        self._orgs[partition] = {k[2:].decode() for k, _ in self.committed.items(partition) if k.startswith(b"m|")}
        self.view_dirty |= {(partition, org) for org in self.orgs(partition)}

    def drop_partition(self, partition: int) -> None:
        super().drop_partition(partition)
        self._forget(partition)
        self.partitions.discard(partition)
        self._orgs.pop(partition, None)

    def _forget(self, partition: int) -> None:
        for key in [k for k in self.cache if k[0] == partition]:
            del self.cache[key]
        for hot in [k for k in self.hot if k[0] == partition]:
            del self.hot[hot]
        for hot in [k for k in self.hot_batches if k[0] == partition]:
            del self.hot_batches[hot]
        self.view_dirty = {k for k in self.view_dirty if k[0] != partition}
        self.view_sent = {k for k in self.view_sent if k[0] != partition}

    def orgs(self, partition: int) -> list[str]:
        """The schools with state in ``partition``, this transaction's new ones included."""
        orgs = set(self._orgs.get(partition, ()))
        _follow_meta_keys(orgs, self._staged.get(partition, {}))
        return sorted(orgs)


def _follow_meta_keys(orgs: set[str], writes: Mapping[bytes, bytes | None]) -> None:
    """Update a set of schools for ``writes``: a school is there while its meta key ``m|<org>`` is."""
    for key, value in writes.items():
        if key.startswith(b"m|"):
            (orgs.add if value is not None else orgs.discard)(key[2:].decode())


_SORTED = orjson.OPT_SORT_KEYS


def _k(kind: str, org: str, rest: str = "") -> bytes:
    return f"{kind}|{org}|{rest}".encode() if rest else f"{kind}|{org}".encode()


class _SpillReader:
    """Reads one school's spilled values back from the stage's store, keeping the last ones read decoded in one of
    the store's least-recently-used caches (:class:`RecordLoader`, :class:`BatchLoader`).

    It holds the store weakly: the store's cache holds the school that holds the reader, and a strong
    reference back would make every store a reference cycle, left to the collector when it goes."""

    __slots__ = ("_hot", "_org", "_partition", "_store")

    def __init__(self, store: StateStore, partition: int, org: str, hot: OrderedDict[Any, Any] | None) -> None:
        self._hot = hot
        self._store = weakref.ref(store)
        self._partition = partition
        self._org = org

    def _stored(self, kind: str, name: str, what: str) -> bytes:
        """The stored value of ``name`` (a ``kind`` key of the school): it must be there."""
        store = self._store()
        if store is None:
            raise KeyError(f"{what} {name!r} of {self._org}: the batcher's state store is closed")
        value = store.get(self._partition, _k(kind, self._org, name))
        if value is None:  # the school says the store has it: a bug, not bad input
            raise KeyError(f"{what} {name!r} of {self._org} is missing from the batcher's state store")
        return value

    def _cached(self, name: str) -> Any:
        """``name``'s decoded value if the cache has it (now the most recently used), else None."""
        hot = self._hot
        if hot is None:
            return None
        key = (self._partition, self._org, name)
        value = hot.get(key)
        if value is not None:
            hot.move_to_end(key)
        return value

    def _keep(self, name: str, value: Any, keep: int) -> Any:
        """Cache ``name``'s decoded ``value`` (the ``keep`` most recently used stay); returns it."""
        hot = self._hot
        if hot is not None:
            hot[(self._partition, self._org, name)] = value
            if len(hot) > keep:
                hot.popitem(last=False)
        return value


class RecordLoader(_SpillReader):
    """Reads one school's spilled open records back (core.Loader), keeping the last ``HOT_RECORDS`` read or
    written decoded (a spilled record is always its committed value: a write un-spills it until the commit;
    one event reads its student's records several times: index, diff, size)."""

    __slots__ = ()

    def __init__(self, store: StateStore, partition: int, org: str) -> None:
        super().__init__(store, partition, org, store.hot if isinstance(store, BatcherStore) else None)

    def __call__(self, record_id: str) -> dict[str, Any]:
        rec: dict[str, Any] | None = self._cached(record_id)
        if rec is None:
            rec = self._keep(record_id, orjson.loads(self.raw(record_id)), HOT_RECORDS)
        return rec

    def raw(self, record_id: str) -> bytes:
        return self._stored("r", record_id, "open record")


class BatchLoader(_SpillReader):
    """Reads the content of one school's kept closed batches back, keeping the last ``HOT_BATCHES`` read decoded
    (a closed batch's content never changes)."""

    __slots__ = ()

    def __init__(self, store: StateStore, partition: int, org: str) -> None:
        super().__init__(store, partition, org, store.hot_batches if isinstance(store, BatcherStore) else None)

    def __call__(self, bid: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] | None = self._cached(bid)
        if content is None:
            content = self._keep(bid, orjson.loads(self._stored("b", bid, "closed batch"))["records"], HOT_BATCHES)
        return content


def load_school(store: StateStore, partition: int, org: str) -> School:
    """Rebuild one school's state from the store's keys; the open records and the closed batches' content stay
    in the store (spilled)."""
    meta: dict[str, Any] | None = None
    stubs: dict[str, Spilled] = {}
    index: dict[str, list[str]] = {}
    records_bytes = 0
    sevis_ids, commands, batches = {}, {}, {}
    batch_loader = BatchLoader(store, partition, org)
    prefix_meta = _k("m", org)
    for key, value in store.items(partition):
        if key == prefix_meta:
            meta = orjson.loads(value)
            continue
        parts = key.split(b"|", 2)
        if len(parts) != 3 or parts[1].decode() != org:
            continue
        kind, rest = parts[0], parts[2].decode()
        if kind == b"r":
            rec = orjson.loads(value)  # read once for its stub and the student index, then left to the store
            stubs[rest] = Spilled.of(rec)
            index.setdefault(rec["student_key"], []).append(rest)
            records_bytes += len(value)  # the length of dumps(rec) (key order does not change it)
        elif kind == b"s":
            sevis_ids[rest] = orjson.loads(value)
        elif kind == b"c":
            commands[rest] = orjson.loads(value)
        elif kind == b"b":  # its content is read once here, then left to the store
            batches[rest] = SpilledBatch(rest, orjson.loads(value), batch_loader)
    m = meta or {}
    return School(
        org_id=org,
        revision=m.get("revision", 0),
        seq=m.get("seq", 0),
        last_stamp=m.get("last_stamp", 0),
        id_prefix=m.get("id_prefix") or BATCH_ID_PREFIX,
        open_since=m.get("open_since"),
        sched_date=m.get("sched_date"),
        early_rev=int(m.get("early_rev") or 0),
        held=m.get("held", {}),
        records=PMap(stubs, load=RecordLoader(store, partition, org)),
        sevis_ids=sevis_ids,
        commands=commands,
        batches=batches,
        student_ids=PMap({k: tuple(v) for k, v in index.items()}),
        records_bytes=records_bytes,
    )


def save_diff(store: StateStore, partition: int, old: School, new: School) -> None:
    """Stage the keys that changed between ``old`` and ``new`` (apply() copies what it changes)."""
    org = new.org_id
    if old.meta() != new.meta():
        store.put(partition, _k("m", org), orjson.dumps(new.meta()))
    for kind, a, b in (
        ("r", old.records, new.records),
        ("s", old.sevis_ids, new.sevis_ids),
        ("c", old.commands, new.commands),
        ("b", old.batches, new.batches),
    ):
        if a is b:
            continue
        written = changed_keys(a, b)
        for key in set(a) | set(b) if written is None else written:
            va, vb = a.get(key), b.get(key)
            if va is vb or (kind == "s" and va == vb):
                continue
            if vb is None:
                store.put(partition, _k(kind, org, key), None)
            else:  # a record as the open-batch view carries it (sorted keys): a spilled one is taken as stored
                store.put(partition, _k(kind, org, key), orjson.dumps(vb, option=_SORTED if kind == "r" else 0))


# ----------------------------------------------------------------------------- the stage


class BatcherStage:
    """Decodes inputs, runs the core, encodes outputs; one instance per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        t = settings.topics
        self.topics = {t.events: "event", t.commands: "command", t.results: "result"}
        self._last_tick = 0.0
        self._last_gauges = 0.0
        self._unscheduled_warned: set[str] = set()  # member schools told once: no close_dso, no scheduled close
        self.metrics: StageMetrics | None = None  # the loop's (build_loop sets it): the worklist gauges
        school = settings.school
        if school.close_at:
            _check_schedule(school.close_at, school.close_dso, school.timezone)
        self.policy = command_policy(settings)
        d = settings.deadlines
        try:  # the rule table in force: the early close and the deadline gauges use it
            self.deadlines = Deadlines.configured(d.limits, d.soon_days, d.urgent_days, school.timezone)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.due_memo = DueMemo(self.deadlines)  # due dates worked out once per record version, not per pass
        if not self.policy.dso_user_ids:
            log.warning("batcher.no_dsos", fix="set school.dso_user_ids: every DSO command is refused until then")
        elif not self.policy.principals and settings.kafka.security_protocol != "PLAINTEXT":
            log.warning(
                "batcher.principals_unchecked",
                fix="set school.dso_principals to bind each DSO user id to its Kafka principal",
            )

    # -- record path

    def handle(self, msg: Message, store: StateStore) -> list[Output]:
        topic, partition, _ = position(msg)
        kind = self.topics.get(topic)
        value = msg.value()
        if kind is None or value is None:
            return []
        try:
            if kind == "event":
                rec = registry().decode(value, EVENT_SCHEMA)
                inp: Any = EventIn(rec, self._log_time(msg, rec))
            elif kind == "command":
                rec = registry().decode(value, COMMAND_SCHEMA)
                log_ms = self._log_time(msg, rec)
                inp = CommandIn(rec, log_ms=log_ms, policy=self.policy, refused=_clock_problem(log_ms))
            else:
                rec = registry().decode(value, RESULT_SCHEMA)
                inp = ResultIn(rec, self._log_time(msg, rec))
        except SerializationError as exc:
            return [
                dead_letter(
                    self.settings.topics.dlq,
                    "batcher",
                    "undecodable",
                    f"{kind} not decodable: {exc}",
                    self._log_time(msg, {}),
                    msg=msg,
                )
            ]
        org = rec.get("org_id") or (msg.key() or b"").decode(errors="replace")
        if not ORG_ID.fullmatch(org):
            return [
                dead_letter(
                    self.settings.topics.dlq,
                    "batcher",
                    "bad_org_id",
                    f"{kind} names OrgID {org[:40]!r}, which is not a SEVIS OrgID",
                    self._log_time(msg, {}),
                    msg=msg,
                )
            ]
        return self._apply(store, partition, org, inp, msg)

    def _apply(self, store: StateStore, partition: int, org: str, inp: Any, msg: Message | None) -> list[Output]:
        if isinstance(inp, CommandIn) and not inp.member_school and self.settings.member_school(org) is not None:
            inp = dataclasses.replace(inp, member_school=True)  # a member school's BatchIDs: ids.member_batch_id
        cache = store.cache if isinstance(store, BatcherStore) else {}
        old = cache.get((partition, org)) or load_school(store, partition, org)
        try:
            new, outs = apply(old, inp)
        except Exception as exc:  # noqa: BLE001 - one input never stops the school: dead-letter it, keep the state
            log.error("batcher.input_failed", org=org, error=type(exc).__name__)
            if msg is None:
                return []
            return [
                dead_letter(
                    self.settings.topics.dlq,
                    "batcher",
                    "batcher_error",
                    f"the batcher could not apply this input ({type(exc).__name__}: {str(exc)[:300]}); "
                    "the school's state is unchanged",
                    self._log_time(msg, {}),
                    msg=msg,
                )
            ]
        save_diff(store, partition, old, new)
        cache[(partition, org)] = new
        if isinstance(store, BatcherStore) and view_changed(old, new):
            store.view_dirty.add((partition, org))
            store.view_sent.discard((partition, org))  # changed after its view went out: send it again
        return self._encode(org, outs, msg)

    def view_outputs(self, store: StateStore) -> list[Output]:
        """The open-batch view of every school changed (or taken over) and not yet in this transaction."""
        if not isinstance(store, BatcherStore):
            return []
        outs = []
        for partition, org in sorted(store.view_dirty - store.view_sent):
            school = store.cache.get((partition, org)) or load_school(store, partition, org)
            outs.append(
                Output(
                    self.settings.topics.open_batches,
                    org.encode(),
                    registry().encode(OPEN_BATCH_SCHEMA, open_view(school)),
                )
            )
            store.view_sent.add((partition, org))
        if outs:  # a school's records changed: the gauges follow (throttled)
            self.update_gauges(store)
        return outs

    def _encode(self, org: str, outs: Iterable[Any], msg: Message | None) -> list[Output]:
        t = self.settings.topics
        key = org.encode()
        result: list[Output] = []
        for out in outs:
            if isinstance(out, Publish):
                ev = out.event
                result.append(Output(t.batches, key, registry().encode(BATCH_SCHEMA, ev)))
                if ev["type"] == "closed":
                    n = len(orjson.loads(ev["records_json"]))
                    log.info("batcher.closed", org=org, batch_id=ev["batch_id"], records=n, command_id=ev["command_id"])
                    checkpoint("batcher.closed")  # a crash test stops at the next commit (kafka.before_commit)
                elif ev["type"] == "command_rejected":
                    log.warning("batcher.command_rejected", org=org, command_id=ev["command_id"])
            elif isinstance(out, SendCommand):
                sched = orjson.loads(out.command.get("payload_json") or "{}")
                late_s = (out.command["requested_at_ms"] - sched.get("scheduled_at_ms", 0)) / 1000
                log.info(
                    "batcher.scheduled_close",
                    org=org,
                    command_id=out.command["command_id"],
                    scheduled_at_ms=sched.get("scheduled_at_ms"),
                    ran_at_ms=sched.get("ran_at_ms"),
                )
                if late_s > 0:
                    log.warning(
                        "batcher.scheduled_close_late",
                        org=org,
                        command_id=out.command["command_id"],
                        late_s=round(late_s),
                        missed_days=len(sched.get("missed_days") or []),
                    )
                result.append(Output(t.commands, key, registry().encode(COMMAND_SCHEMA, out.command)))
            elif isinstance(out, Reject):
                log.warning(
                    "batcher.scheduled_close_missed" if out.stage != "batcher" else "batcher.rejected_input",
                    org=org,
                    code=out.code,
                    student_key=out.student_key,
                )
                result.append(
                    dead_letter(
                        t.dlq,
                        out.stage,
                        out.code,
                        out.reason,
                        self._log_time(msg, {}) if msg is not None else (out.at_ms or 0),
                        msg=msg,
                        student_key=out.student_key,
                    )
                )
        return result

    @staticmethod
    def _log_time(msg: Message | None, rec: dict[str, Any]) -> int:
        """The input's time from the log (never the batcher's clock): the Kafka record timestamp."""
        if msg is None:
            return 0
        _, ts = msg.timestamp()
        return int(ts) if ts and ts > 0 else 0

    # -- idle path: the daily scheduled close

    def on_idle(self, store: StateStore) -> list[Output]:
        """The scheduler's tick, and the views still to publish (e.g. after a restart or a rebalance)."""
        outs = self._tick(store) + self.view_outputs(store)
        self.update_gauges(store)
        return outs

    def update_gauges(self, store: StateStore, force: bool = False) -> None:
        """The worklist gauges over this instance's schools, at most every GAUGES_EVERY_S (idle ticks and
        commits both call it: the bands move with the calendar as well as with the records)."""
        if self.metrics is None or not isinstance(store, BatcherStore):
            return
        now = time.time()
        if not force and now - self._last_gauges < GAUGES_EVERY_S:
            return
        self._last_gauges = now
        schools = [
            store.cache.get((p, org)) or load_school(store, p, org)
            for p in sorted(store.partitions)
            for org in store.orgs(p)
        ]
        g = worklist_gauges(schools, self.deadlines, int(now * 1000), self.due_memo)
        self.metrics.worklist(g.records_by_band, g.oldest_ready_age_s, g.rejections_open, g.oldest_rejection_age_s)

    def _tick(self, store: StateStore) -> list[Output]:
        school = self.settings.school
        if not school.close_at or not isinstance(store, BatcherStore):
            return []
        now = time.time()
        if now - self._last_tick < TICK_EVERY_S:
            return []
        self._last_tick = now
        tick = Tick(
            now_ms=int(now * 1000),
            timezone=school.timezone,
            close_at=school.close_at,
            close_dso=school.close_dso,
            close_early=self.deadlines if school.close_early_when_due else None,
            due_memo=self.due_memo,
        )
        outs: list[Output] = []
        for p in sorted(store.partitions):
            for org in store.orgs(p):
                program = self.settings.program(org)  # an exchange program's scheduled close is signed by its RO
                member = self.settings.member_school(org)  # a member school's by its close_dso
                if program is not None:
                    org_tick = dataclasses.replace(tick, close_dso=program.ro_user_id)
                elif member is not None:
                    if not member.close_dso:
                        self._warn_unscheduled(org)
                        continue  # not closed on schedule: no close_dso signs for it (warned once)
                    org_tick = dataclasses.replace(tick, close_dso=member.close_dso)
                else:
                    org_tick = tick
                outs += self._apply(store, p, org, org_tick, None)
        if self.metrics is None:
            self.due_memo.sweep()  # no gauge pass sweeps it (a stage run without metrics)
        return outs

    def _warn_unscheduled(self, org: str) -> None:
        """A member school without close_dso is not closed on schedule: said once per school and process."""
        if org in self._unscheduled_warned:
            return
        self._unscheduled_warned.add(org)
        log.warning(
            "batcher.member_not_scheduled",
            org=org,
            fix="set close_dso in this school's [[schools]] entry to close it at school.close_at, "
            "or close it by hand (`sevisflow batch --org <OrgID> close`)",
        )


ORG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,29}")
"""What an OrgID in a state key may look like: a school code or a J program number (``P-1-12345``), never a
``|`` (it separates the state key's parts) nor anything long."""


def command_policy(settings: Settings) -> CommandPolicy:
    """Who may act for the school, from [school] dso_user_ids / dso_principals / close_dso, and for each exchange
    program ([[exchange_programs]]: its RO and AROs; a principal may be mapped to one of them too)."""
    school = settings.school
    for user in school.dso_user_ids:
        problem = user_id_problem(user)
        if problem:
            raise ConfigError(f"school.dso_user_ids: {problem}")
    try:
        principals = parse_principals(school.dso_principals)
    except ValueError as exc:
        raise ConfigError(f"school.dso_principals: {exc}") from None
    programs = {p.program_number: p.user_ids() for p in settings.exchange_programs}
    officers = {u for users in programs.values() for u in users}
    # member schools ([[schools]]): each one's DSOs act for it alone; a principal may be mapped to one of them
    members = {m.org_id: SchoolPolicy(frozenset(m.dso_user_ids), m.close_dso) for m in settings.schools}
    prefixes: dict[str, str] = {}
    for m in settings.schools:  # their BatchIDs must never be equal: the outbox and the sinks find a batch by it
        other = prefixes.setdefault(member_batch_prefix(m.org_id), m.org_id)
        if other != m.org_id:
            raise ConfigError(
                f"[[schools]] {other} and {m.org_id} would share the BatchID prefix {member_batch_prefix(m.org_id)}: "
                "run them in two deployments, or report this to the sevisflow maintainers"
            )
    member_dsos = {u for m in settings.schools for u in m.dso_user_ids}
    unknown = sorted(set(principals.values()) - set(school.dso_user_ids) - officers - member_dsos)
    if unknown:
        raise ConfigError(
            f"school.dso_principals maps to {unknown[0]}, which is not in school.dso_user_ids (nor an "
            "RO/ARO of an exchange program, nor a DSO of a [[schools]] member): add it there or remove the mapping"
        )
    return CommandPolicy(frozenset(school.dso_user_ids), principals, school.close_dso, programs, school.org_id, members)


def _clock_problem(log_ms: int, now_ms: int | None = None) -> str | None:
    """A command whose Kafka timestamp is ahead of the batcher's clock was produced with a forged timestamp
    (the time window of requested_at_ms is checked against it): refused before the core sees it."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if log_ms > now_ms + MAX_FUTURE_MS:
        return (
            f"not applied: the command's Kafka timestamp is {(log_ms - now_ms) / 60000:.0f} minutes ahead of the "
            "batcher's clock; check the clock of the computer that sent it"
        )
    return None


def _check_schedule(close_at: str, close_dso: str, timezone: str) -> None:
    from zoneinfo import ZoneInfo

    try:
        hh, mm = (int(x) for x in close_at.split(":"))
        assert 0 <= hh < 24 and 0 <= mm < 60
    except (ValueError, AssertionError):
        raise ConfigError(f"school.close_at = {close_at!r}: use local HH:MM, e.g. 16:30") from None
    problem = user_id_problem(close_dso)
    if problem:
        raise ConfigError(f"school.close_dso: {problem} (needed because school.close_at is set)")
    try:
        ZoneInfo(timezone)
    except Exception:  # noqa: BLE001 - zoneinfo raises several types
        raise ConfigError(f"school.timezone = {timezone!r} is not a known time zone (e.g. America/Chicago)") from None


def build_loop(
    settings: Settings, instance: str | None = None, consumer_overrides: dict[str, Any] | None = None
) -> tuple[TransactionalLoop, BatcherStage]:
    """The batcher's transactional loop (not started)."""
    stage = BatcherStage(settings)
    group = group_id(settings)
    instance = instance or os.environ.get("SEVISFLOW_INSTANCE") or socket.gethostname()
    t = settings.topics
    # range: one member gets the same partition number of every input (cooperative-sticky does not); a metadata
    # refresh every 10 s (librdkafka: 5 min) ends soon the hold of a member that joined before it knew every
    # input topic (TransactionalLoop(copartitioned=True))
    overrides: dict[str, Any] = {"partition.assignment.strategy": "range", "topic.metadata.refresh.interval.ms": 10000}
    overrides.update(consumer_overrides or {})
    # the open-batch views go out once per changed school per transaction, after every input was
    # handled (a 500-event poll writes one view, not 500): they commit or abort with their events
    loop = TransactionalLoop(
        settings.kafka,
        group,
        [t.events, t.commands, t.results],
        stage.handle,
        transactional_id=f"{group}-{instance}",
        state_topic=state_topic(settings),
        on_idle=stage.on_idle,
        consumer_overrides=overrides,
        state=BatcherStore(open_committed(settings.state, f"{group}-{instance}", "batcher")),
        stall_after_s=settings.metrics.stall_after_s,
        before_commit=stage.view_outputs,
        dlq_topic=settings.topics.dlq,
        stage="batcher",
        copartitioned=True,
    )
    stage.metrics = loop.metrics
    return loop, stage


def run(
    settings: Settings,
    stop_event: threading.Event,
    instance: str | None = None,
    consumer_overrides: dict[str, Any] | None = None,
) -> None:
    """Run the batcher until ``stop_event`` is set (for ``sevisflow run`` and tests)."""
    loop, _ = build_loop(settings, instance=instance, consumer_overrides=consumer_overrides)
    # like the other processors: create what is missing (after an upgrade, the open-batch view topic),
    # so a missing topic cannot make every transaction abort
    ensure_topics(settings.kafka, pipeline_topics(settings) + batcher_topics(settings))

    loop.stop_when(stop_event, "batcher")
    log.info("batcher.start", group=loop.group_id, state_topic=loop.state_topic)
    loop.run()
    log.info("batcher.stop", processed=loop.processed, aborts=loop.aborts)
