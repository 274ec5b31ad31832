"""The one Kafka client wrapper of sevisflow (confluent-kafka underneath).

Everything that talks to Kafka goes through here: client configuration from
:class:`~sevisflow.config.KafkaSettings` (TLS/SASL included), topic creation,
reading a topic to its end, and :class:`TransactionalLoop`, the exactly-once
read-process-write loop every stream processor runs in.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from sevisflow.config import KafkaSettings
from sevisflow.errors import TerminalError, UnreachableError
from sevisflow.log import get_logger
from sevisflow.serde import registry
from sevisflow.observability import ConsumerLagSampler, Heartbeat, StageMetrics, register_probe, unregister_probe

log = get_logger(__name__)
DEAD_LETTER_SCHEMA = "sevisflow.dlq.DeadLetter"


def client_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings for any client: bootstrap servers plus security."""
    conf: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": kafka.security_protocol,
                            # librdkafka's own messages go through our JSON logs, not raw to stderr
                            "logger": logging.getLogger("sevisflow.librdkafka")}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        if kafka.ssl_ca_location:
            conf["ssl.ca.location"] = kafka.ssl_ca_location
        if kafka.ssl_certificate_location:
            conf["ssl.certificate.location"] = kafka.ssl_certificate_location
        if kafka.ssl_key_location:
            conf["ssl.key.location"] = kafka.ssl_key_location
        if kafka.ssl_key_password:
            conf["ssl.key.password"] = kafka.ssl_key_password.reveal()
    if kafka.security_protocol.startswith("SASL"):
        conf["sasl.mechanism"] = kafka.sasl_mechanism
        conf["sasl.username"] = kafka.sasl_username
        conf["sasl.password"] = kafka.sasl_password.reveal()
    conf.update(overrides)
    return conf


def make_producer(kafka: KafkaSettings, transactional_id: str | None = None, **overrides: Any) -> Producer:
    """An idempotent producer (acks=all); transactional when ``transactional_id`` is given."""
    return Producer(producer_config(kafka, transactional_id, **overrides))


def producer_config(kafka: KafkaSettings, transactional_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The settings :func:`make_producer` uses."""
    conf = client_config(kafka, **{
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": 8 * 1024 * 1024,
    })
    if transactional_id:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = 60000
    conf.update(overrides)
    return conf


def make_consumer(kafka: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    """A consumer that never auto-commits and reads only committed transactions."""
    conf = client_config(kafka, **{
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
    })
    conf.update(overrides)
    return Consumer(conf)


def make_admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(client_config(kafka))


@dataclass(frozen=True)
class TopicSpec:
    """A topic as code: name, partitions, replication and topic-level config."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


def ensure_topics(kafka: KafkaSettings, specs: Sequence[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent."""
    admin = make_admin(kafka)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise UnreachableError(f"Kafka at {kafka.bootstrap_servers} is not reachable: {exc}") from exc
    wanted = [s for s in specs if s.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                  config=dict(s.config)) for s in wanted],
        operation_timeout=timeout_s,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TerminalError(f"could not create topic {name}: {exc.args[0].str()}") from exc
    _wait_for_metadata(admin, [s.name for s in wanted], timeout_s)
    return created


def _wait_for_metadata(admin: AdminClient, names: Iterable[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    names = list(names)
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout_s)
        if all(n in md.topics and md.topics[n].error is None and
               all(p.leader >= 0 for p in md.topics[n].partitions.values()) for n in names):
            return
        time.sleep(0.1)
    raise UnreachableError(f"topics {names} did not get leaders within {timeout_s}s")


def delivery_raiser(errors: list[KafkaError]) -> Callable[[KafkaError | None, Message], None]:
    """A delivery callback that records failures so :func:`flush_or_raise` can report them."""
    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
    return on_delivery


def produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None,
            partition: int | None = None, headers: list[tuple[str, bytes]] | None = None,
            on_delivery: Callable[..., None] | None = None) -> None:
    """Produce one record, waiting for queue space instead of failing (backpressure)."""
    kwargs: dict[str, Any] = {"key": key, "value": value}
    if partition is not None:
        kwargs["partition"] = partition
    if headers:
        kwargs["headers"] = headers
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def flush_or_raise(producer: Producer, errors: list[KafkaError], timeout_s: float = 60.0) -> None:
    """Flush and raise if any record was not acknowledged."""
    left = producer.flush(timeout_s)
    if left:
        raise UnreachableError(f"{left} records not acknowledged by Kafka within {timeout_s}s")
    if errors:
        raise UnreachableError(f"Kafka refused {len(errors)} records: {errors[0].str()}")


def read_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0,
               start: Mapping[int, int] | None = None) -> Iterator[Message]:
    """Every committed record of ``topic`` from the beginning (or ``start`` offsets) to its current end.

    Uses manual assignment and no group commits, so it never moves anyone's offsets:
    safe for the CLI, auditors and tests.
    """
    consumer = make_consumer(kafka, group_id=f"sevisflow-reader-{uuid.uuid4().hex[:12]}",
                             **{"enable.partition.eof": True})
    try:
        parts = topic_partitions(consumer, kafka, topic, timeout_s)
        if parts is None:
            return
        ends: dict[int, int] = {}
        assign = []
        for p, (low, high) in watermarks(consumer, topic, parts, timeout_s).items():
            begin = max(low, (start or {}).get(p, low))
            if high > begin:
                ends[p] = high
                assign.append(TopicPartition(topic, p, begin if start else OFFSET_BEGINNING))
        if not assign:
            return
        consumer.assign(assign)
        deadline = time.monotonic() + timeout_s
        done: set[int] = set()
        while len(done) < len(assign):
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() > deadline:
                    raise UnreachableError(f"timed out reading {topic} to its end")
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                    continue
                raise UnreachableError(f"reading {topic}: {msg.error().str()}")
            deadline = time.monotonic() + timeout_s
            yield msg
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
    finally:
        consumer.close()


def topic_partitions(consumer: Consumer, kafka: KafkaSettings, topic: str, timeout_s: float) -> list[int] | None:
    """The partition numbers of ``topic``, sorted; None when the topic does not exist (metadata only)."""
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise UnreachableError(f"Kafka at {kafka.bootstrap_servers} is not reachable: {exc}") from exc
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        return None
    return sorted(tmd.partitions)


def watermarks(consumer: Consumer, topic: str, partitions: Iterable[int], timeout_s: float
               ) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}``, each retried while a new leader takes over (see :func:`_watermarks`)."""
    return {p: _watermarks(consumer, TopicPartition(topic, p), timeout_s) for p in partitions}


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """Low and high watermark, retrying while a new leader takes over (right after a broker loss).

    Each try waits at most 5 s: a request to a leader that just died can hang until it times
    out, and the next try asks the partition's new leader.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=min(5.0, max(1.0, deadline - time.monotonic())))
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0]
            if not err.retriable() and err.code() not in (KafkaError.OFFSET_NOT_AVAILABLE,
                                                          KafkaError.LEADER_NOT_AVAILABLE,
                                                          KafkaError.NOT_LEADER_FOR_PARTITION,
                                                          KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
                                                          KafkaError.REQUEST_TIMED_OUT):
                raise
            if time.monotonic() > deadline:
                raise UnreachableError(f"no watermarks for {tp.topic}[{tp.partition}]: {err.str()}") from exc
            time.sleep(0.2)


# --------------------------------------------------------------------------- exactly-once loop


@dataclass(frozen=True)
class Output:
    """One record a processor wants written, atomically with its input's offsets."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


class StateStore:
    """Per-input-partition key/value state, backed by a compacted changelog topic.

    Writes are staged during a transaction and produced to the changelog partition
    that equals the input partition, inside the same Kafka transaction; they become
    visible to :meth:`get` at once but are dropped again if the transaction aborts.
    """

    def __init__(self) -> None:
        self._committed: dict[int, dict[bytes, bytes]] = {}
        self._staged: dict[int, dict[bytes, bytes | None]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        staged = self._staged.get(partition, {})
        if key in staged:
            return staged[key]
        return self._committed.get(partition, {}).get(key)

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        self._staged.setdefault(partition, {})[key] = value

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        merged = dict(self._committed.get(partition, {}))
        for k, v in self._staged.get(partition, {}).items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        return iter(merged.items())

    def staged(self) -> dict[int, dict[bytes, bytes | None]]:
        return self._staged

    def commit(self) -> None:
        for p, kv in self._staged.items():
            target = self._committed.setdefault(p, {})
            for k, v in kv.items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = v
        self._staged = {}

    def abort(self) -> None:
        self._staged = {}

    def load_partition(self, partition: int, data: dict[bytes, bytes]) -> None:
        self._committed[partition] = data

    def drop_partition(self, partition: int) -> None:
        self._committed.pop(partition, None)
        self._staged.pop(partition, None)


TXN_CALL_TIMEOUT_S = 30.0
"""The timeout handed to librdkafka's transactional calls (send offsets, commit, abort, init)."""
TXN_CALL_GRACE_S = 10.0
"""How much longer than its own timeout a transactional call may block before the producer is
written off as stuck: librdkafka's ``send_offsets_to_transaction`` can ignore its timeout and block
forever when the group coordinator's broker died (librdkafka issues #5456 and #5511)."""


class ProducerStuck(Exception):
    """A transactional call did not return within its deadline; the producer cannot be trusted."""

    def __init__(self, call: str, waited_s: float) -> None:
        super().__init__(f"{call} did not return within {waited_s:.0f}s")
        self.call = call
        self.waited_s = waited_s


def call_with_deadline(call: str, fn: Callable[[], Any], deadline_s: float) -> Any:
    """Run ``fn`` in a helper thread and return its result, or raise :class:`ProducerStuck`.

    A blocked C call cannot be interrupted from Python; the helper thread is left to finish or
    hang on its own (it holds the only other reference to the stuck client), and the caller moves
    on with a fresh client.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"kafka-{call}", daemon=True).start()
    if not done.wait(deadline_s):
        raise ProducerStuck(call, deadline_s)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _release(client: Any) -> None:
    """Let a replaced client be destroyed off the loop's thread (destroy can block on a sick cluster).

    The thread's arguments hold the last reference of the caller; it is dropped, and the client
    destroyed, in that thread when it ends.
    """
    threading.Thread(target=_keep_until_done, args=(client,), name="kafka-release", daemon=True).start()


def _keep_until_done(client: Any) -> None:
    del client


class RecordHandler(Protocol):
    def __call__(self, msg: Message, state: StateStore) -> Iterable[Output]: ...


class TransactionalLoop:
    """Exactly-once read → process → write, the way every processor runs.

    The commit order, per batch of polled records:

    1. ``begin_transaction``;
    2. hand each record to ``handler(msg, state)``; produce its outputs, then those of
       ``before_commit(state)`` (outputs that summarise the transaction);
    3. produce the staged state changes to the changelog (same partition number as the input);
    4. ``send_offsets_to_transaction`` with the consumer's next positions and group metadata;
    5. ``commit_transaction``; only then make the staged state the committed state.

    If anything in 1–5 fails with an abortable error, the transaction is aborted,
    staged state dropped, and the consumer rewound to the last committed offsets,
    so the same records are processed again: nothing is lost and, because
    downstream reads with ``read_committed``, nothing appears twice.
    A fatal error (e.g. this instance was fenced by a newer one) stops the loop.

    Watchdog: the transactional calls run with a deadline (``txn_timeout_s`` plus
    :data:`TXN_CALL_GRACE_S`). A producer whose call blocks past it (librdkafka #5456/#5511
    after a broker loss), or whose abort fails, is replaced by a new producer with the same
    ``transactional.id``; its ``init_transactions`` fences the old one and makes the broker
    abort the old open transaction, and the consumer is rewound as after any abort.
    """

    def __init__(self, kafka: KafkaSettings, group_id: str, input_topics: Sequence[str],
                 handler: RecordHandler, transactional_id: str | None = None,
                 state_topic: str | None = None, batch_size: int = 500, batch_timeout_s: float = 0.2,
                 on_idle: Callable[[StateStore], Iterable[Output]] | None = None,
                 consumer_overrides: Mapping[str, Any] | None = None, state: StateStore | None = None,
                 state_partitions: Iterable[int] | None = None, stage: str | None = None,
                 stall_after_s: float = 120.0, txn_timeout_s: float = TXN_CALL_TIMEOUT_S,
                 producer_factory: Callable[[str], Producer] | None = None,
                 before_commit: Callable[[StateStore], Iterable[Output]] | None = None) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.input_topics = list(input_topics)
        self.handler = handler
        self.state_topic = state_topic
        self.state = state if state is not None else StateStore()
        # which state partitions exist: None = the partition numbers assigned on the inputs
        self.state_partitions = None if state_partitions is None else frozenset(state_partitions)
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.on_idle = on_idle
        # outputs that summarise the whole transaction (e.g. one view per changed key), written last
        self.before_commit = before_commit
        self._running = True
        self.transactional_id = transactional_id or f"{group_id}-{uuid.uuid4().hex[:8]}"
        # A stable transactional id is also the consumer's static group membership: a restarted
        # instance takes its partitions back at once instead of waiting for the session timeout.
        static = {"group.instance.id": transactional_id, "session.timeout.ms": 30000} if transactional_id else {}
        static.update(consumer_overrides or {})
        self.consumer = make_consumer(kafka, group_id, **static)
        self.txn_timeout_s = txn_timeout_s
        self._producer_factory = producer_factory or (lambda tid: make_producer(kafka, transactional_id=tid))
        self.producer = self._producer_factory(self.transactional_id)
        self.processed = 0
        self.aborts = 0
        self.producer_replacements = 0
        # observability: metrics labelled with the stage, a heartbeat for /health, a probe for /ready
        self.stage = stage or group_id
        self.metrics = StageMetrics(self.stage)
        self.heartbeat = Heartbeat()
        self.stall_after_s = stall_after_s
        self._lag = ConsumerLagSampler(self.consumer, self.metrics)
        self._polling = False
        self._out_counts: dict[str, int] = {}
        self._dead_letters = {}

    def health(self) -> tuple[bool, str]:
        """Alive while the loop keeps turning (a stuck transaction call shows up here)."""
        age = self.heartbeat.age()
        return (age <= self.stall_after_s, "ok" if age <= self.stall_after_s else f"loop stalled for {age:.0f}s")

    def ready(self) -> tuple[bool, str]:
        return (self._polling, "ok" if self._polling else "starting")

    # -- lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its current transaction and return (safe from a signal handler)."""
        self._running = False

    def run(self, max_idle_polls: int | None = None) -> None:
        """Run until :meth:`stop` (or ``max_idle_polls`` empty polls in a row, for tests)."""
        self._init_transactions()
        self.consumer.subscribe(self.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        probe = f"{self.stage}:{self.transactional_id}"
        register_probe(probe, self.health, self.ready)
        idle = 0
        try:
            while self._running:
                self.heartbeat.beat()
                batch = self.consumer.consume(self.batch_size, self.batch_timeout_s)
                self._polling = True
                self._lag.maybe_sample()
                records = [m for m in batch if not self._is_error(m)]
                idle_outputs = list(self.on_idle(self.state)) if (self.on_idle and not records) else []
                if not records and not idle_outputs and not self.state.staged():
                    idle += 1
                    if max_idle_polls is not None and idle >= max_idle_polls:
                        return
                    continue
                idle = 0
                self._process_in_transaction(records, idle_outputs)
        finally:
            unregister_probe(probe)
            self.consumer.close()
            self.producer.flush(10)

    # -- internals

    @staticmethod
    def _is_error(msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        if err.fatal():
            raise TerminalError(f"Kafka consumer error: {err.str()}")
        log.warning("kafka.consumer_error", error=err.str())
        return True

    def _process_in_transaction(self, records: list[Message], extra: list[Output]) -> None:
        self._out_counts = {}
        self._dead_letters: dict[str, int] = {}
        try:
            self.producer.begin_transaction()
            for out in extra:
                self._produce(out)
            for msg in records:
                for out in self.handler(msg, self.state):
                    self._produce(out)
            if self.before_commit is not None:
                for out in self.before_commit(self.state):
                    self._produce(out)
            self._produce_state()
            if records:
                self._send_offsets(self._next_positions(records))
            self._commit()
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal():
                raise TerminalError(f"Kafka transaction failed fatally ({err.str()}); restart the process") from exc
            log.warning("kafka.transaction_aborted", error=err.str(), records=len(records))
            self.metrics.transaction("abort")
            self._abort_and_rewind()
            return
        except ProducerStuck as exc:
            log.warning("kafka.producer_stuck", stage=self.stage, call=exc.call, waited_s=round(exc.waited_s, 1),
                        records=len(records))
            self.metrics.transaction("abort")
            self._replace_producer(exc.call)
            self._rewind()
            return
        except BaseException:
            self.metrics.transaction("abort")
            self._abort_and_rewind()
            raise
        self.state.commit()
        self.processed += len(records)
        self.metrics.transaction("commit")
        self.metrics.batch(len(records))
        per_topic: dict[str, int] = {}
        for m in records:
            per_topic[m.topic()] = per_topic.get(m.topic(), 0) + 1
        for topic, n in per_topic.items():
            self.metrics.records_in(topic, n)
        for topic, n in self._out_counts.items():
            self.metrics.records_out(topic, n)
        for code, n in self._dead_letters.items():
            self.metrics.dead_letter(code, n)

    # -- transactional calls, each with a deadline librdkafka itself does not always keep

    @property
    def _deadline_s(self) -> float:
        return self.txn_timeout_s + TXN_CALL_GRACE_S

    def _init_transactions(self) -> None:
        producer, timeout = self.producer, self.txn_timeout_s
        try:
            call_with_deadline("init_transactions", lambda: producer.init_transactions(timeout), self._deadline_s)
        except KafkaException as exc:
            raise UnreachableError(f"could not initialise Kafka transactions: {exc.args[0].str()}") from exc
        except ProducerStuck as exc:
            raise UnreachableError(f"could not initialise Kafka transactions: {exc}") from exc

    def _send_offsets(self, positions: list[TopicPartition]) -> None:
        producer, timeout = self.producer, self.txn_timeout_s
        group = self.consumer.consumer_group_metadata()
        call_with_deadline("send_offsets_to_transaction",
                           lambda: producer.send_offsets_to_transaction(positions, group, timeout), self._deadline_s)

    def _commit(self) -> None:
        """Commit; a retriable failure (e.g. a timeout while the coordinator moves) is retried, not aborted."""
        producer, timeout = self.producer, self.txn_timeout_s
        give_up = time.monotonic() + self._deadline_s
        while True:
            try:
                call_with_deadline("commit_transaction", lambda: producer.commit_transaction(timeout), self._deadline_s)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and not err.txn_requires_abort() and time.monotonic() < give_up:
                    log.info("kafka.commit_retry", stage=self.stage, error=err.str())
                    continue
                raise

    def _replace_producer(self, why: str) -> None:
        """Fence this loop's own producer with a fresh one of the same ``transactional.id``.

        ``init_transactions`` on the new producer bumps the epoch: the broker aborts whatever the old
        producer had open, and anything the old one still sends is refused. The old producer is let go.
        """
        old = self.producer
        self.producer_replacements += 1
        self.metrics.transaction("producer_replaced")
        log.warning("kafka.producer_replaced", stage=self.stage, reason=why, replacements=self.producer_replacements)
        self.producer = self._producer_factory(self.transactional_id)
        _release(old)
        del old
        self._init_transactions()

    def _produce(self, out: Output) -> None:
        produce(self.producer, out.topic, out.key, out.value, partition=out.partition, headers=out.headers)
        self._out_counts[out.topic] = self._out_counts.get(out.topic, 0) + 1
        if out.value is not None and registry().schema_name_of(out.value) == DEAD_LETTER_SCHEMA:
            code = registry().decode(out.value).get("code", "unknown")
            self._dead_letters[code] = self._dead_letters.get(code, 0) + 1

    def _produce_state(self) -> None:
        if not self.state_topic:
            return
        for partition, kv in self.state.staged().items():
            for key, value in kv.items():
                produce(self.producer, self.state_topic, key, value, partition=partition)

    def _next_positions(self, records: list[Message]) -> list[TopicPartition]:
        last: dict[tuple[str, int], int] = {}
        for m in records:
            last[(m.topic(), m.partition())] = m.offset() + 1
        return [TopicPartition(t, p, o) for (t, p), o in last.items()]

    def _abort_and_rewind(self) -> None:
        """Abort the open transaction (or fence it, if the abort itself fails) and rewind."""
        self.aborts += 1
        producer, timeout = self.producer, self.txn_timeout_s
        try:
            call_with_deadline("abort_transaction", lambda: producer.abort_transaction(timeout), self._deadline_s)
        except KafkaException as exc:
            if exc.args[0].fatal():
                raise TerminalError(f"could not abort Kafka transaction: {exc.args[0].str()}") from exc
            self._replace_producer(f"abort_transaction: {exc.args[0].name()}")
        except ProducerStuck as exc:
            self._replace_producer(exc.call)
        self._rewind()

    def _rewind(self) -> None:
        """Drop staged state and seek back to the committed offsets: the batch is processed again."""
        self.state.abort()
        assignment = self.consumer.assignment()
        if assignment:
            committed = self.consumer.committed(assignment, timeout=30)
            for tp in committed:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition,
                                                  tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.state_topic:
            wanted = {tp.partition for tp in partitions}
            if self.state_partitions is not None:
                wanted &= self.state_partitions
            for p, data in restore_partitions(self.kafka, self.state_topic, sorted(wanted)).items():
                self.state.load_partition(p, data)
        log.info("kafka.assigned", group=self.group_id, partitions=[f"{tp.topic}:{tp.partition}" for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in {tp.partition for tp in partitions}:
            self.state.drop_partition(p)
        log.info("kafka.revoked", group=self.group_id, partitions=[f"{tp.topic}:{tp.partition}" for tp in partitions])


def restore_partition(kafka: KafkaSettings, topic: str, partition: int, timeout_s: float = 60.0) -> dict[bytes, bytes]:
    """Rebuild one partition of a compacted changelog into a dict (last value per key wins)."""
    return restore_partitions(kafka, topic, [partition], timeout_s)[partition]


def restore_partitions(kafka: KafkaSettings, topic: str, partitions: Sequence[int],
                       timeout_s: float = 60.0) -> dict[int, dict[bytes, bytes]]:
    """Rebuild partitions of a compacted changelog into dicts (last value per key wins), one consumer for all."""
    out: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
    if not partitions:
        return out
    consumer = make_consumer(kafka, group_id=f"sevisflow-restore-{uuid.uuid4().hex[:12]}")
    try:
        ends: dict[int, int] = {}
        assign = []
        for p in partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, p), timeout_s)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        if not assign:
            return out
        consumer.assign(assign)
        deadline = time.monotonic() + timeout_s
        while ends:
            msgs = consumer.consume(10000, 0.5)
            if not msgs:
                for tp in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
                    if tp.offset >= ends[tp.partition]:
                        ends.pop(tp.partition)
                if ends and time.monotonic() > deadline:
                    raise UnreachableError(f"timed out restoring state from {topic}{sorted(ends)}")
                continue
            deadline = time.monotonic() + timeout_s
            for msg in msgs:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise UnreachableError(f"restoring state from {topic}[{msg.partition()}]: {msg.error().str()}")
                p = msg.partition()
                key = msg.key()
                if key is not None:
                    if msg.value() is None:
                        out[p].pop(key, None)
                    else:
                        out[p][key] = msg.value()
                if p in ends and msg.offset() + 1 >= ends[p]:
                    ends.pop(p)
    finally:
        consumer.close()
    return out
