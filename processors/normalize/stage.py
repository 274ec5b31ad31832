"""The normalize stage on Kafka: change topics (+ transaction topic) → ``sevisflow.students``.

A thin shell around :class:`~sevisflow.processors.normalize.view.Normalizer`, run in
:class:`~sevisflow.core.kafka_io.TransactionalLoop`: the student views it publishes, its dead letters,
its state changes and its input offsets commit in one Kafka transaction, so after ``kill -9`` at
any point a restarted instance restores the state from the changelog and carries on with the first
uncommitted record — nothing lost, nothing published twice (read_committed).

One sequencer. Per-table topics do not share keys or partitions, and a transaction spans tables,
so putting a transaction back together needs every change topic and the transaction topic in one
place. normalize therefore keeps all its state under state partition 0 of its changelog
(``sevisflow.normalize.state``) and runs as a single active instance: every instance uses the same
static ``group.instance.id``/``transactional.id``, so a new one fences the old one (a standby can wait
to take over). That matches the source: a PostgreSQL replication slot is one ordered stream too.
What scales out is everything after it: ``sevisflow.students`` is keyed by student, and
sevis_events runs one instance per partition (docs/ARCHITECTURE.md, "Processors").
"""

from __future__ import annotations

import collections.abc
import threading
from collections import OrderedDict
from typing import Any

import orjson
from confluent_kafka import Message

from sevisflow.core.checkpoints import checkpoint
from sevisflow.core.config import Settings, StateSettings
from sevisflow.core.kafka_io import (
    Output,
    StateStore,
    TopicSpec,
    TransactionalLoop,
    ensure_topics,
    make_admin,
    position,
)
from sevisflow.core.log import get_logger
from sevisflow.core.serde import registry
from sevisflow.core.state import CommittedState, open_committed
from sevisflow.core.topics import pipeline_topics, stage_group, state_topic, state_topic_spec
from sevisflow.processors.normalize.changes import ChangeFormatError, parse_change, parse_tx_marker
from sevisflow.processors.normalize.common import dlq_output, mapping_path, msg_time
from sevisflow.processors.normalize.mapping import Mapping, load_mapping
from sevisflow.processors.normalize.view import Normalizer, Result, view_key

log = get_logger(__name__)

STUDENT_SCHEMA = "sevisflow.students.StudentView"
STATE_PARTITION = 0
PROCESSOR_VERSION = "sevisflow-normalize/1"


class StoreKV:
    """The Normalizer's key/value view of the loop's state store (partition 0), with a decode cache.

    Values are JSON-encoded once per transaction, when the loop asks for the staged state
    (:meth:`flush`), not on every ``put``: a unit rewrites the same view, queue and index keys
    several times, and only the last version goes to the changelog.

    ``max_entries`` bounds the cache (least recently used dropped first) so that with a store on disk
    memory does not grow with the SIS. It is trimmed only in :meth:`flush`, between transactions: then
    nothing is staged-but-unencoded and every dropped value is read back, equal, from the store; within
    one transaction the cache holds what that transaction touched (the Normalizer may keep working on a
    value it got until it puts it back). None = unbounded.
    """

    def __init__(self, store: StateStore, max_entries: int | None = None) -> None:
        self.store = store
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.dirty: set[str] = set()
        # keys this transaction read and found in neither the staged nor the committed state: dropping one
        # needs no tombstone. Asking the store instead costs a read per dropped key (a random RocksDB read
        # per held snapshot row); a key not listed just gets a tombstone, which is harmless.
        self.absent: set[str] = set()
        self.max_entries = max_entries
        self.encoded: dict[str, tuple[Any, bytes]] = {}  # see encoded_as

    def get(self, key: str) -> Any:
        if key in self.cache:
            if self.max_entries is not None:
                self.cache.move_to_end(key)
            return self.cache[key]
        k = key.encode()
        raw = self.store.get(STATE_PARTITION, k)
        if raw is None:
            value = None
            if k not in self.store.staged_partition(STATE_PARTITION):  # not a tombstone staged earlier
                self.absent.add(key)
        else:
            value = orjson.loads(raw)
        self.cache[key] = value
        return value

    def put(self, key: str, value: Any) -> None:
        self.cache[key] = value
        if self.max_entries is not None:
            self.cache.move_to_end(key)
        self.dirty.add(key)

    def encoded_as(self, key: str, value: Any, raw: bytes) -> None:
        """``raw`` is ``orjson.dumps(value)``, made anyway (a published view's ``view_json``): the flush writes it
        for ``key`` instead of encoding ``value`` again, if ``value`` is then still the key's value (the same
        object). Sound because a value handed out is not changed in place once encoded: a unit copies a view
        before it changes it (``Normalizer._view``), and the copy is a new object."""
        if key in self.dirty and self.cache.get(key) is value:
            self.encoded[key] = (value, raw)

    def flush(self) -> None:
        """Encode what changed since the last flush into the store's staged state; then trim the cache."""
        staged = self.store.staged_partition(STATE_PARTITION)
        encoded = self.encoded
        for key in self.dirty:
            value = self.cache[key]
            k = key.encode()
            if value is None and key in self.absent:
                staged.pop(k, None)  # made and dropped in one transaction (e.g. a transaction buffer)
            elif value is None:
                staged[k] = None
            else:
                known = encoded.get(key)
                staged[k] = known[1] if known is not None and known[0] is value else orjson.dumps(value)
        self.dirty.clear()
        self.absent.clear()
        encoded.clear()
        if self.max_entries is not None:
            while len(self.cache) > self.max_entries:
                self.cache.popitem(last=False)

    def reset(self) -> None:
        self.cache.clear()
        self.dirty.clear()
        self.absent.clear()
        self.encoded.clear()


class NormalizeStore(StateStore):
    """State store whose decoded cache is dropped whenever staged state is (abort, reassignment)."""

    def __init__(self, committed: CommittedState | None = None, cache_entries: int | None = None) -> None:
        super().__init__(committed)
        self.kv = StoreKV(self, cache_entries)
        # next offset handled per input (topic, partition) in this run, since the last commit point
        # at most: cleared whenever staged state is dropped, so it never runs ahead of the state
        self.handled: dict[tuple[str, int], int] = {}

    def staged(self) -> dict[int, dict[bytes, bytes | None]]:
        self.kv.flush()
        if not self._staged.get(STATE_PARTITION, True):
            self._staged.pop(STATE_PARTITION)
        return super().staged()

    def abort(self) -> None:
        super().abort()
        self.kv.reset()
        self.handled.clear()

    def load_partition(self, partition: int, data: collections.abc.Mapping[bytes, bytes]) -> None:
        super().load_partition(partition, data)
        self.kv.reset()
        self.handled.clear()

    def drop_partition(self, partition: int) -> None:
        super().drop_partition(partition)
        self.kv.reset()
        self.handled.clear()


def cache_bound(state: StateSettings) -> int | None:
    """How many decoded values normalize keeps between transactions: bounded with the rocksdb store (else
    memory would still grow with the SIS); unbounded with the memory store, whose dicts hold it all anyway."""
    return (state.cache_entries or None) if state.backend == "rocksdb" else None


def input_topics(settings: Settings, mapping: Mapping) -> tuple[list[str], str | None]:
    """The topics whose records normalize applies: the mapped tables' change topics and the transaction topic."""
    prefix = settings.connector.topic_prefix
    tables = [f"{prefix}.{t}" for t in mapping.tables()]
    tx = f"{prefix}.transaction" if settings.connector.provide_transaction_metadata else None
    return tables + ([tx] if tx else []), tx


def connector_pattern(settings: Settings) -> str:
    """Every topic the connector writes (``<prefix>.…``), as a subscription pattern: normalize also reads
    the captured tables the mapping does not use, only to see where the snapshot ends (their rows are
    skipped; a ``last`` row or a streamed row there ends the snapshot hold)."""
    return "^" + settings.connector.topic_prefix.replace(".", "\\.") + "\\..+"


def normalize_topics(settings: Settings) -> list[TopicSpec]:
    # only partition 0 holds state; the others exist because the loop restores the partition
    # numbers it is assigned on its inputs
    return [state_topic_spec(settings, "normalize")]


class NormalizeStage:
    def __init__(self, settings: Settings, mapping: Mapping, store: NormalizeStore) -> None:
        self.settings = settings
        self.mapping = mapping
        self.store = store
        self.topics, self.tx_topic = input_topics(settings, mapping)
        self.applied = frozenset(self.topics)
        self.prefix = settings.connector.topic_prefix + "."
        self.subscription = [*self.topics, connector_pattern(settings)]
        self.normalizer = Normalizer(mapping, store.kv, use_transactions=self.tx_topic is not None, hold_streamed=True)
        self.consumer: Any = None  # the loop's consumer (build_loop): watermarks and positions
        self._admin: Any = None  # made on first use: the snapshot's end watermarks
        self._sliced = False  # a release slice was applied in the current transaction (by on_idle)
        self._release_views = self._release_dead = 0  # counted over a release, for its closing log line
        self._parsed_marks: tuple[object, list[tuple[tuple[str, int], int]]] = (None, [])  # see _marks_to_reach

    def handle(self, msg: Message, state: StateStore) -> list[Output]:
        outs = self._handle(msg)
        topic, partition, offset = position(msg)
        self.store.handled[(topic, partition)] = offset + 1
        if self.normalizer.snapshot_status() is not None and not self.normalizer.releasing():
            self.check_snapshot(idle=False)
        return outs

    def on_idle(self, state: StateStore) -> list[Output]:
        if self.normalizer.snapshot_status() is None:
            return []
        if not self.normalizer.releasing():
            self.check_snapshot(idle=True)
        return self._release_slice()

    def before_commit(self, state: StateStore) -> list[Output]:
        """One slice of a snapshot release per Kafka transaction (after this transaction's records)."""
        if self._sliced:
            self._sliced = False  # this transaction's slice came from on_idle
            return []
        return self._release_slice()

    # -- the initial snapshot (docs/MAPPING.md, "The initial snapshot")

    def check_snapshot(self, idle: bool) -> None:
        """Start applying the held snapshot once it is complete: its end was seen (a row with source.snapshot
        "last" of any captured table, or any streamed record — a row of any table or a transaction
        marker) and every partition of every connector topic has been consumed up to the high
        watermark read at that moment, so every row produced before the end has been held. No
        particular row has to be read first: see docs/MAPPING.md, "The initial snapshot"."""
        st = self.normalizer.snapshot_status()
        if not st or not (st.get("last") or st.get("ended")):
            return
        marks = self.store.kv.get("sw")
        if marks is None:
            marks = self._watermarks()
            if marks is None:
                return  # broker not answering: try again on the next record or idle turn
            self.store.kv.put("sw", marks)
            log.info(
                "normalize.snapshot_end_seen",
                rows=st.get("n"),
                by="last" if st.get("last") else "stream",
                partitions=len(marks),
            )
        if not self._reached(marks, idle):
            return
        self.normalizer.begin_release()
        self.store.kv.put("sw", None)
        log.info("normalize.snapshot_release_started", rows=st.get("n"), groups=st.get("g", 0))

    def _release_slice(self) -> list[Output]:
        """Apply the next slice of a snapshot being released (``[state] release_slice_rows``, whole students):
        the transaction, its memory and its time (well inside max.poll.interval.ms) do not grow with the school."""
        if not self.normalizer.releasing():
            return []
        checkpoint("normalize.release_slice")
        res, done = self.normalizer.release_step(self.settings.state.release_slice_rows)
        self._sliced = True
        self._release_views += len(res.updates)
        self._release_dead += len(res.dead)
        if done:
            log.info("normalize.snapshot_applied", views=self._release_views, dead=self._release_dead)
            self._release_views = self._release_dead = 0
        return self.outputs(res, None)

    def _watermarks(self) -> dict[str, list[int]] | None:
        """Low and high watermark of every partition of every connector topic, in two ListOffsets requests
        from an admin client (the loop's consumer's own query waits behind its long-poll fetch, ~0.5 s per
        partition: 13 s for a school's 28 input partitions)."""
        from confluent_kafka import KafkaException, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        if self.consumer is None:
            return {}
        try:
            md = self.consumer.list_topics(timeout=10)
            tps = [
                TopicPartition(topic, p)
                for topic in sorted(set(self.topics) | {t for t in md.topics if t.startswith(self.prefix)})
                if (tmd := md.topics.get(topic)) is not None and tmd.error is None
                for p in tmd.partitions
            ]
            if not tps:
                return {}
            if self._admin is None:
                self._admin = make_admin(self.settings.kafka)
            ends = []
            for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
                futures = self._admin.list_offsets(dict.fromkeys(tps, spec), request_timeout=10)
                ends.append({(tp.topic, tp.partition): f.result(timeout=15).offset for tp, f in futures.items()})
        except KafkaException as exc:
            log.warning("normalize.snapshot_watermarks_failed", error=exc.args[0].str())
            return None
        except TimeoutError:
            log.warning("normalize.snapshot_watermarks_failed", error="ListOffsets timed out")
            return None
        low, high = ends
        return {f"{topic}|{p}": [low[(topic, p)], high[(topic, p)]] for topic, p in sorted(high)}

    def _reached(self, marks: dict[str, list[int]], idle: bool) -> bool:
        """Whether this consumer is at or past every watermark. Between polls only the records handled
        count; in an idle turn (everything polled is handled) the consumer's position, or the committed
        offset where it has none yet, counts too (it also steps over transaction markers)."""
        from confluent_kafka import KafkaException, TopicPartition

        missing: list[TopicPartition] = []
        handled = self.store.handled
        for where, high in self._marks_to_reach(marks):
            if handled.get(where, -1) >= high:
                continue
            if not idle or self.consumer is None:
                return False
            missing.append(TopicPartition(*where))
        if not missing:
            return True
        try:
            pos = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(missing)}
            unknown = [tp for tp in missing if pos.get((tp.topic, tp.partition), -1) < 0]
            if unknown:
                for tp in self.consumer.committed(unknown, timeout=10):
                    pos[(tp.topic, tp.partition)] = tp.offset
        except KafkaException:
            return False
        return all(pos.get((tp.topic, tp.partition), -1) >= marks[f"{tp.topic}|{tp.partition}"][1] for tp in missing)

    def _marks_to_reach(self, marks: dict[str, list[int]]) -> list[tuple[tuple[str, int], int]]:
        """``marks``' partitions that had records, as ((topic, partition), high watermark): parsed once per marks
        value, not at every record handled while the snapshot's end is awaited (28 partitions for a school)."""
        if self._parsed_marks[0] is not marks:
            parsed = []
            for name, (low, high) in marks.items():
                topic, p = name.rsplit("|", 1)
                if high > low:
                    parsed.append(((topic, int(p)), high))
            self._parsed_marks = (marks, parsed)
        return self._parsed_marks[1]

    def _handle(self, msg: Message) -> list[Output]:
        if msg.topic() not in self.applied:
            return self._handle_other(msg)
        try:
            if msg.topic() == self.tx_topic:
                marker = parse_tx_marker(msg.value())
                res = self.normalizer.on_marker(marker) if marker else Result()
            else:
                ch = parse_change(msg.key(), msg.value(), *position(msg))
                res = self.normalizer.on_change(ch) if ch else Result()
        except ChangeFormatError as exc:
            log.warning("normalize.bad_record", topic=msg.topic(), partition=msg.partition(), offset=msg.offset())
            return [
                dlq_output(
                    self.settings,
                    "normalize",
                    "bad_change_event",
                    str(exc),
                    at_ms=msg_time(msg),
                    student_key=None,
                    field=None,
                    topic=msg.topic(),
                    partition=msg.partition(),
                    offset=msg.offset(),
                    key=msg.key(),
                    value=msg.value(),
                )
            ]
        return self.outputs(res, msg)

    def _handle_other(self, msg: Message) -> list[Output]:
        """A record of a captured table the mapping does not read: only its snapshot mark matters, and
        only while a snapshot is held (not our data: a malformed one is skipped, not dead-lettered)."""
        if not self.normalizer.holding():
            return []
        try:
            ch = parse_change(msg.key(), msg.value(), *position(msg))
        except ChangeFormatError:
            return []
        if ch is not None:
            self.normalizer.on_change(ch)
        return []

    def outputs(self, res: Result, msg: Message | None) -> list[Output]:
        outs: list[Output] = []
        for d in res.dead:
            ch = d.change
            log.info(
                "normalize.dead_letter",
                code=d.code,
                student=d.student_key,
                topic=ch.topic if ch else None,
                offset=ch.offset if ch else None,
            )
            value = orjson.dumps(ch.to_json()) if ch else (msg.value() if msg is not None else None)
            outs.append(
                dlq_output(
                    self.settings,
                    "normalize",
                    d.code,
                    d.reason,
                    at_ms=(ch.commit_ts_ms if ch and ch.commit_ts_ms else msg_time(msg)),
                    student_key=d.student_key,
                    field=d.field,
                    topic=ch.topic if ch else (msg.topic() if msg is not None else None),
                    partition=ch.partition if ch else (msg.partition() if msg is not None else None),
                    offset=ch.offset if ch else (msg.offset() if msg is not None else None),
                    key=orjson.dumps(ch.key) if ch else None,
                    value=value,
                )
            )
        for u in res.updates:
            commit = max((x.get("commit_ts_ms") or 0 for x in u.lineage), default=0) or None
            view_json = orjson.dumps(u.view)
            self.store.kv.encoded_as(view_key(u.student_key), u.view, view_json)
            rec = {
                "student_key": u.student_key,
                "exists": bool(u.view.get("exists")),
                "international": bool(u.view.get("international")),
                "sevis_id": u.view.get("student", {}).get("sevis_id"),
                "view_json": view_json.decode(),
                "unit_id": u.unit_id,
                "snapshot": u.snapshot,
                "commit_ts_ms": commit,
                "lineage": u.lineage,
                "processor_version": PROCESSOR_VERSION,
            }
            outs.append(
                Output(self.settings.topics.students, u.student_key.encode(), registry().encode(STUDENT_SCHEMA, rec))
            )
        return outs


def build_loop(
    settings: Settings, mapping: Mapping | None = None, batch_size: int = 2000
) -> tuple[TransactionalLoop, NormalizeStage]:
    """The normalize stage's transactional loop (not started)."""
    mapping = mapping or load_mapping(mapping_path(settings))
    group = stage_group(settings, "normalize")
    instance = f"{group}-sequencer"  # the same for every instance: the newest fences the others
    store = NormalizeStore(open_committed(settings.state, instance, "normalize"), cache_bound(settings.state))
    stage = NormalizeStage(settings, mapping, store)
    loop = TransactionalLoop(
        settings.kafka,
        group,
        stage.subscription,
        stage.handle,
        transactional_id=instance,
        state_topic=state_topic(settings, "normalize"),
        batch_size=batch_size,
        state=store,
        state_partitions={STATE_PARTITION},
        on_idle=stage.on_idle,
        before_commit=stage.before_commit,
        consumer_overrides={"session.timeout.ms": 10000, "topic.metadata.refresh.interval.ms": 5000},
        stall_after_s=settings.metrics.stall_after_s,
        dlq_topic=settings.topics.dlq,
        stage="normalize",
        reorder_window_bytes=settings.kafka.reorder_window_mb << 20,
    )
    stage.consumer = loop.consumer
    return loop, stage


def check_transaction_topic(settings: Settings, stage: NormalizeStage) -> None:
    """Warn when the transaction topic has more than one partition: its END records are then not in
    commit order, and transactions may be applied out of order (deploy/topics.toml sets one)."""
    if not stage.tx_topic:
        return
    try:
        md = make_admin(settings.kafka).list_topics(stage.tx_topic, timeout=10)
    except Exception:  # noqa: BLE001 - only a check; the loop reports an unreachable broker itself
        return
    tmd = md.topics.get(stage.tx_topic)
    if tmd is not None and tmd.error is None and len(tmd.partitions) > 1:
        log.error(
            "normalize.transaction_topic_partitions",
            topic=stage.tx_topic,
            partitions=len(tmd.partitions),
            fix="recreate it with one partition (deploy/topics.toml [transaction] partitions = 1)",
        )


def ensure_stage_topics(settings: Settings) -> None:
    ensure_topics(settings.kafka, pipeline_topics(settings) + normalize_topics(settings))


def run(settings: Settings, stop_event: threading.Event, mapping: Mapping | None = None) -> None:
    """Run normalize until ``stop_event`` is set (the all-in-one runner and ``sevisflow process normalize``)."""
    ensure_stage_topics(settings)
    loop, stage = build_loop(settings, mapping)
    check_transaction_topic(settings, stage)
    loop.stop_when(stop_event, "normalize")
    log.info("normalize.start", group=loop.group_id, inputs=len(stage.topics), transactions=bool(stage.tx_topic))
    loop.run()
    log.info("normalize.stop", processed=loop.processed, aborts=loop.aborts)
