"""The one Kafka client wrapper of sevisflow (confluent-kafka underneath).

Everything that talks to Kafka goes through here: client configuration from
:class:`~sevisflow.core.config.KafkaSettings` (TLS/SASL included), topic creation,
reading a topic to its end, and :class:`TransactionalLoop`, the exactly-once
read-process-write loop every stream processor runs in.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

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

from sevisflow.core.checkpoints import checkpoint
from sevisflow.core.config import KafkaSettings
from sevisflow.core.errors import ConfigError, TerminalError, TransientError, UnreachableError
from sevisflow.core.log import get_logger
from sevisflow.core.observability import ConsumerLagSampler, Heartbeat, StageMetrics, register_probe, unregister_probe
from sevisflow.core.serde import registry
from sevisflow.core.source_order import SourceOrder
from sevisflow.core.state import CommittedState, MemoryState

log = get_logger(__name__)
DEAD_LETTER_SCHEMA = "sevisflow.dlq.DeadLetter"
DEFAULT_DLQ_TOPIC = "sevisflow.dlq"


# librdkafka warns about retries it then performs itself (a coordinator still loading after a broker
# start, an idempotence/transactional PID not yet granted): nothing for an operator to do, so INFO.
_SELF_RETRIED = re.compile(r"retrying|load in progress|not available: retrying", re.IGNORECASE)


class _SelfRetriedAsInfo(logging.Filter):
    """Log librdkafka's self-retried warnings at INFO (and drop them when INFO is off)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and _SELF_RETRIED.search(record.getMessage()):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return LIBRDKAFKA_LOG.isEnabledFor(logging.INFO)
        return True


LIBRDKAFKA_LOG = logging.getLogger("sevisflow.librdkafka")
LIBRDKAFKA_LOG.addFilter(_SelfRetriedAsInfo())


def client_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings for any client: bootstrap servers plus security."""
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
        # librdkafka's own messages go through our JSON logs, not raw to stderr
        "logger": LIBRDKAFKA_LOG,
    }
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
        conf["error_cb"] = _remember_auth_failures(kafka)
    conf.update(overrides)
    return conf


# Authentication failures librdkafka reported, per (bootstrap servers, SASL user): a refused login looks
# like "broker unreachable" to a request that times out, so the error we raise looks here first.
_AUTH_FAILURES: dict[tuple[str, str], str] = {}
_AUTH_CODES = (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED)


def _remember_auth_failures(kafka: KafkaSettings) -> Callable[[KafkaError], None]:
    key = (kafka.bootstrap_servers, kafka.sasl_username)

    def on_error(err: KafkaError) -> None:
        if err.code() in _AUTH_CODES:
            if key not in _AUTH_FAILURES:
                log.warning("kafka.authentication_failed", user=kafka.sasl_username, reason=err.str())
            _AUTH_FAILURES[key] = err.str()
        else:
            log.warning("kafka.client_error", code=err.name(), reason=err.str())

    return on_error


def kafka_failure(
    kafka: KafkaSettings, exc: KafkaException | None, doing: str = "", client: Any = None
) -> UnreachableError | TerminalError:
    """The error to raise when a Kafka request failed: a refused login is terminal and says so.

    librdkafka reports a refused SASL login only through ``error_cb``, served by ``poll``: with the
    ``client`` that failed, its queued errors are served first, so the answer names the real cause."""
    if client is not None and kafka.security_protocol.startswith("SASL"):
        client.poll(0.5)
    reason = _AUTH_FAILURES.get((kafka.bootstrap_servers, kafka.sasl_username))
    if (
        reason is None
        and exc is not None
        and exc.args
        and isinstance(exc.args[0], KafkaError)
        and exc.args[0].code() in _AUTH_CODES
    ):
        reason = exc.args[0].str()
    if reason is not None:
        return TerminalError(
            f"Kafka at {kafka.bootstrap_servers} refused the login of SASL user "
            f"{kafka.sasl_username!r} ({reason}): check kafka.sasl_username, kafka.sasl_password "
            "and kafka.sasl_mechanism"
        )
    shown = exc.args[0].str() if exc is not None and exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
    return UnreachableError(
        f"Kafka at {kafka.bootstrap_servers} is not reachable{' ' + doing if doing else ''}: {shown}"
    )


_Client = TypeVar("_Client")


def _new_client(factory: Callable[[dict[str, Any]], _Client], conf: dict[str, Any]) -> _Client:
    """Build a librdkafka client; settings it refuses (a wrong key password, a missing file) are a ConfigError."""
    try:
        return factory(conf)
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
        hint = (
            "check kafka.ssl_key_password, ssl_key_location, ssl_certificate_location and ssl_ca_location"
            if "ssl" in reason.lower()
            else "check the [kafka] settings"
        )
        raise ConfigError(f"the Kafka client refused its settings: {reason}: {hint}") from None


def make_producer(kafka: KafkaSettings, transactional_id: str | None = None, **overrides: Any) -> Producer:
    """An idempotent producer (acks=all); transactional when ``transactional_id`` is given."""
    return _new_client(Producer, producer_config(kafka, transactional_id, **overrides))


def producer_config(kafka: KafkaSettings, transactional_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The settings :func:`make_producer` uses."""
    conf = client_config(
        kafka,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": 8 * 1024 * 1024,
        },
    )
    if transactional_id:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = 60000
    conf.update(overrides)
    return conf


def make_consumer(kafka: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    """A consumer that never auto-commits and reads only committed transactions."""
    conf = client_config(
        kafka,
        **{
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            # librdkafka's default (64 MiB, and 100,000 records per partition) let a stage that was behind
            # hold hundreds of MiB of fetched records; this bound is still thousands of records ahead
            "queued.max.messages.kbytes": kafka.consumer_queue_mb * 1024,
            "queued.min.messages": 10000,
        },
    )
    conf.update(overrides)
    return _new_client(Consumer, conf)


def make_admin(kafka: KafkaSettings) -> AdminClient:
    return _new_client(AdminClient, client_config(kafka))


def position(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a record a consumer returned.

    The client types them optional, since a message being produced has none yet; a consumed one always does.
    """
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise TypeError("a message that was not consumed has no topic, partition and offset")
    return topic, partition, offset


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
        raise kafka_failure(kafka, exc, client=admin) from exc
    wanted = [s for s in specs if s.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=dict(s.config)
            )
            for s in wanted
        ],
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
        if all(
            n in md.topics
            and md.topics[n].error is None
            and all(p.leader >= 0 for p in md.topics[n].partitions.values())
            for n in names
        ):
            return
        time.sleep(0.1)
    raise UnreachableError(f"topics {names} did not get leaders within {timeout_s}s")


def delivery_raiser(errors: list[KafkaError]) -> Callable[[KafkaError | None, Message], None]:
    """A delivery callback that records failures so :func:`flush_or_raise` can report them."""

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)

    return on_delivery


def produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    partition: int | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    on_delivery: Callable[..., None] | None = None,
) -> None:
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


def read_topic(
    kafka: KafkaSettings, topic: str, timeout_s: float = 30.0, start: Mapping[int, int] | None = None
) -> Generator[Message, None, None]:
    """Every committed record of ``topic`` from the beginning (or ``start`` offsets) to its current end.

    Uses manual assignment and no group commits, so it never moves anyone's offsets:
    safe for the CLI, auditors and tests.
    """
    consumer = make_consumer(
        kafka, group_id=f"sevisflow-reader-{uuid.uuid4().hex[:12]}", **{"enable.partition.eof": True}
    )
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
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof = msg.partition()
                    if eof is not None:
                        done.add(eof)
                    continue
                raise UnreachableError(f"reading {topic}: {err.str()}")
            deadline = time.monotonic() + timeout_s
            yield msg
            _, partition, offset = position(msg)
            if offset + 1 >= ends[partition]:
                done.add(partition)
    finally:
        consumer.close()


def topic_partitions(consumer: Consumer, kafka: KafkaSettings, topic: str, timeout_s: float) -> list[int] | None:
    """The partition numbers of ``topic``, sorted; None when the topic does not exist (metadata only)."""
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise kafka_failure(kafka, exc) from exc
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        return None
    return sorted(tmd.partitions)


def watermarks(
    consumer: Consumer, topic: str, partitions: Iterable[int], timeout_s: float
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
            if not err.retriable() and err.code() not in (
                KafkaError.OFFSET_NOT_AVAILABLE,
                KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError.NOT_LEADER_FOR_PARTITION,
                KafkaError._TIMED_OUT,
                KafkaError._TRANSPORT,
                KafkaError.REQUEST_TIMED_OUT,
            ):
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
    The committed state lives in ``committed`` (:mod:`sevisflow.core.state`: dicts by default, or
    RocksDB for bounded memory, per ``[state]``); :meth:`commit` hands it the whole
    transaction as one write.
    """

    def __init__(self, committed: CommittedState | None = None) -> None:
        self.committed: CommittedState = committed if committed is not None else MemoryState()
        self._staged: dict[int, dict[bytes, bytes | None]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        staged = self._staged.get(partition)
        if staged is not None and key in staged:
            return staged[key]
        return self.committed.get(partition, key)

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        self._staged.setdefault(partition, {})[key] = value

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        staged = self._staged.get(partition)
        if not staged:
            return self.committed.items(partition)
        return self._merged(partition, dict(staged))

    def _merged(self, partition: int, staged: dict[bytes, bytes | None]) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self.committed.items(partition):
            if k not in staged:
                yield k, v
            elif (new := staged.pop(k)) is not None:
                yield k, new
        for k, value in staged.items():
            if value is not None:
                yield k, value

    def committed_partition(self, partition: int) -> Mapping[bytes, bytes]:
        """The committed state of one partition, read-only (staged writes not included)."""
        return self.committed.partition(partition)

    def staged_partition(self, partition: int) -> dict[bytes, bytes | None]:
        """The staged writes of one partition, for a caller that stages in bulk."""
        return self._staged.setdefault(partition, {})

    def staged(self) -> dict[int, dict[bytes, bytes | None]]:
        return self._staged

    def commit(self) -> None:
        self.committed.apply(self._staged)
        self._staged = {}

    def abort(self) -> None:
        self._staged = {}

    def load_partition(self, partition: int, data: Mapping[bytes, bytes]) -> None:
        self.committed.load(partition, data)

    def drop_partition(self, partition: int) -> None:
        self.committed.drop(partition)
        self._staged.pop(partition, None)

    def close(self) -> None:
        """Release the committed layer (a RocksDB folder is removed: the changelog has everything)."""
        self._staged = {}
        self.committed.close()


TXN_CALL_TIMEOUT_S = 30.0
"""The timeout handed to librdkafka's transactional calls (send offsets, commit, abort, init)."""
TXN_CALL_GRACE_S = 10.0
"""How much longer than its own timeout a transactional call may block before the producer is
written off as stuck: librdkafka's ``send_offsets_to_transaction`` can ignore its timeout and block
forever when the group coordinator's broker died (librdkafka issues #5456 and #5511)."""
TXN_LINGER_MS = 1000
"""How long a stage's transactional producer lets records wait to fill a batch. Its outputs and state
records are invisible until the loop commits, and the loop flushes before every commit (a flush sends
at once, whatever the linger), so a long linger adds no latency; it sends a transaction's records in
fewer, larger batches than the 5 ms of :func:`producer_config` would (bench/README.md, "Scale",
"Producer linger")."""


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


def fence_predecessor(kafka: KafkaSettings, transactional_id: str, timeout_s: float = TXN_CALL_TIMEOUT_S) -> None:
    """Fence whatever producer last used ``transactional_id`` now, before this process reads anything.

    ``init_transactions`` bumps the epoch: the broker aborts the predecessor's open transaction (or
    finishes its commit), so a read_committed read of the topics it wrote does not wait for
    ``transaction.timeout.ms``. For a stage that reads such a topic at start, before its loop runs.
    """
    producer = make_producer(kafka, transactional_id=transactional_id)
    try:
        # a partial, not a closure: the `del` below must drop this frame's only reference
        call_with_deadline(
            "init_transactions", functools.partial(producer.init_transactions, timeout_s), timeout_s + TXN_CALL_GRACE_S
        )
    except KafkaException as exc:
        raise UnreachableError(f"could not fence transactional id {transactional_id}: {exc.args[0].str()}") from exc
    except ProducerStuck as exc:
        raise UnreachableError(f"could not fence transactional id {transactional_id}: {exc}") from exc
    finally:
        _release(producer)
        del producer


class RecordHandler(Protocol):
    """A stage's function of one record: its outputs (state is staged through ``state``)."""

    def __call__(self, msg: Message, state: StateStore, /) -> Iterable[Output]: ...


class InstanceFenced(TerminalError):
    """Another process now runs this stage under the same identity (``transactional.id`` and
    ``group.instance.id``) and fenced this one.

    The runner (:mod:`sevisflow.app.runner`) does not restart the stage at once — that would fence the
    other instance back, and so on — but keeps it as a passive standby that starts again only when
    :meth:`identity_in_use` says the other instance is gone.
    """

    def __init__(self, kafka: KafkaSettings, group_id: str, instance_id: str, detail: str) -> None:
        super().__init__(
            f"stage identity {instance_id!r} (consumer group {group_id}) was taken over by another "
            f"process ({detail}); this instance stops processing and stands by until that one is gone"
        )
        self.kafka = kafka
        self.group_id = group_id
        self.instance_id = instance_id

    def identity_in_use(self) -> bool:
        """True while a member with this ``group.instance.id`` is in the group (or when that cannot be told)."""
        try:
            return static_member_id(self.kafka, self.group_id, self.instance_id) is not None
        except Exception as exc:  # noqa: BLE001 - unknown counts as "in use": a standby must never fence a live one
            log.warning(
                "kafka.standby_check_failed", group=self.group_id, instance=self.instance_id, error=type(exc).__name__
            )
            return True


def static_member_id(kafka: KafkaSettings, group_id: str, instance_id: str, timeout_s: float = 10.0) -> str | None:
    """The member id currently holding ``group.instance.id`` = ``instance_id`` in ``group_id``, if any.

    A static member stays in the group until its session times out, also after a kill -9, so
    "no member" means no process of this identity has heartbeated for ``session.timeout.ms``.
    """
    admin = make_admin(kafka)
    futures = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)
    desc = futures[group_id].result(timeout=timeout_s + 5)
    for member in desc.members or []:
        if member.group_instance_id == instance_id:
            return str(member.member_id)
    return None


FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.FENCED_INSTANCE_ID}
)
"""Errors that mean a newer instance with this identity exists (producer epoch bumped, or the static
consumer member replaced)."""

RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
    }
)
"""Produce errors that belong to one record (too large, invalid): retrying the same record cannot help."""


def _state_refused(size: int, key: bytes | None, topic: str, partition: int, err: KafkaError) -> str:
    """Why a transaction cannot commit when Kafka refuses one of its state values (not one record's fault)."""
    return (
        f"state value of {size} bytes (key {len(key or b'')} bytes) refused by {topic}[{partition}]: "
        f"{err.str()}; this stage's state values must be split into smaller ones"
    )


NON_RETRIABLE_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.POLICY_VIOLATION,
        KafkaError.UNSUPPORTED_VERSION,
    }
)
"""Errors a retry cannot fix until someone changes something (ACLs, topics, the cluster): the loop keeps
retrying (with backoff) but ``/health`` turns false with the reason until a transaction commits."""

DLQ_SOURCE_VALUE_MAX = 256 * 1024
"""A dead letter carries the source record's value only up to this size (so it fits the DLQ topic)."""


LOOP_DLQ_CODES = frozenset({"handler_failed", "output_too_large", "output_invalid"})
"""The dead-letter codes the loop itself writes (the handlers write their own, with their own codes)."""


def record_bytes(msg: Message) -> int:
    """What a fetched record weighs in a stage's reorder window: its key's and value's bytes."""
    key, value = msg.key(), msg.value()
    return (len(key) if key else 0) + (len(value) if value else 0)


class _RecordFailed(Exception):
    """The handler raised for one record: the transaction is redone with that record dead-lettered."""

    def __init__(self, position: tuple[str, int, int], reason: str) -> None:
        super().__init__(reason)
        self.position = position
        self.reason = reason


class _Redo(Exception):
    """Outputs were refused for good (too large, invalid): the transaction is redone without them."""


class _TxnFailed(Exception):
    """Producing failed for a reason that is not one record's (authorization, a missing topic, state too large)."""

    def __init__(self, reason: str, retriable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable


def _where(exc: BaseException) -> str:
    """Where an exception was raised (file:line in function): actionable, and free of record values."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}"


class TransactionalLoop:
    """Exactly-once read → process → write, the way every processor runs.

    The commit order, per batch of polled records:

    1. ``begin_transaction``;
    2. hand each record to ``handler(msg, state)``; produce its outputs, then those of
       ``before_commit(state)`` (outputs that summarise the transaction);
    3. produce the staged state changes to the changelog (same partition number as the input);
       flush, so every output's delivery is known before anything is committed;
    4. ``send_offsets_to_transaction`` with the consumer's next positions and group metadata;
    5. ``commit_transaction``; only then make the staged state the committed state.

    If anything in 1–5 fails with an abortable error, the transaction is aborted,
    staged state dropped, and the consumer rewound to the last committed offsets,
    so the same records are processed again: nothing is lost and, because
    downstream reads with ``read_committed``, nothing appears twice. Failed
    transactions are retried after a backoff (``retry_base_s`` doubling up to
    ``retry_max_s``, reset by the next commit).

    Unknown outcome: when ``commit_transaction`` misses its deadline or fails with an error
    that is neither retriable nor abortable, the broker may have committed. The loop then
    replaces its producer (whose ``init_transactions`` settles the open transaction one way or
    the other), rebuilds the state of its assigned partitions from the changelog
    (read_committed, to the end) and seeks to the committed offsets: state and offsets
    come from the broker together, whichever way the commit went.

    One record never stops the stage: a record the handler raises for (anything but a Kafka
    error, an I/O error — retried with the backoff — or a sevisflow transient/terminal/config
    error — the stage restarts or stops) and an output Kafka refuses for good (too large, invalid) become
    dead letters on ``dlq_topic`` with the reason and the source position; the transaction is
    redone without them and the input offsets move on.

    Identity: a stable ``transactional_id`` is also the consumer's ``group.instance.id``. A
    restarted instance fences its zombie at once. An instance that is fenced by another live
    one raises :class:`InstanceFenced` (the runner keeps it as a standby) and never fences back.

    Watchdog: the transactional calls run with a deadline (``txn_timeout_s`` plus
    :data:`TXN_CALL_GRACE_S`). A producer whose call blocks past it (librdkafka #5456/#5511
    after a broker loss), or whose abort fails, is replaced by a new producer with the same
    ``transactional.id``; its ``init_transactions`` fences the old one and makes the broker
    abort the old open transaction, and the consumer is rewound as after any abort (or, for
    ``commit_transaction``, the state rebuilt as above).

    Polling: a poll waits up to ``batch_timeout_s`` for its first record; then it gathers more (up to
    ``batch_size``) until ``[kafka] commit_interval_ms`` (200) has passed since the previous transaction ended.
    A record that reaches an idle stage is handled at once (librdkafka's batch consume, called alone, waited out
    the whole timeout first), while under steady input a transaction starts at most every ``commit_interval_ms``:
    a Kafka transaction costs CPU in the stage and the broker, so more of them would slow a busy box.

    Produce order (``reorder_window_bytes`` > 0; normalize): while polls come back full, fetched records up to that
    many bytes of keys and values are held and handed over oldest first by Kafka timestamp across partitions
    (:mod:`sevisflow.core.source_order`), at most ``batch_size`` per transaction; a short poll (nothing more
    fetched) hands over the oldest batch held, so a stage that keeps up holds nothing. Held records are in no
    transaction, so only handled offsets are committed; a rewind or a revoke drops them and they are fetched again.

    Idle work: with no records polled, ``on_idle(state)`` may do work of the stage's own (normalize applies
    a slice of its held snapshot, the batcher runs its scheduler); its outputs commit like a record's. After
    a turn that did work the next poll does not wait (``batch_timeout_s`` is for an idle stage), so a
    snapshot released in slices is not slowed by one poll timeout per slice.

    Checkpoints (:func:`sevisflow.core.checkpoints.checkpoint`, where the crash tests stop it): ``kafka.before_send_offsets``,
    ``kafka.before_commit``, ``kafka.after_commit``.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        group_id: str,
        input_topics: Sequence[str],
        handler: RecordHandler,
        transactional_id: str | None = None,
        state_topic: str | None = None,
        batch_size: int = 500,
        batch_timeout_s: float = 0.2,
        on_idle: Callable[[StateStore], Iterable[Output]] | None = None,
        consumer_overrides: Mapping[str, Any] | None = None,
        state: StateStore | None = None,
        state_partitions: Iterable[int] | None = None,
        stage: str | None = None,
        stall_after_s: float = 120.0,
        txn_timeout_s: float = TXN_CALL_TIMEOUT_S,
        producer_factory: Callable[[str], Producer] | None = None,
        before_commit: Callable[[StateStore], Iterable[Output]] | None = None,
        dlq_topic: str | None = None,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        copartitioned: bool = False,
        reorder_window_bytes: int = 0,
    ) -> None:
        self.kafka = kafka
        # records held back so that, while the stage is behind, it gets them in produce order across partitions
        # (sevisflow/core/source_order.py); 0 = handed over as fetched
        self._order: SourceOrder[Message] | None = (
            SourceOrder(reorder_window_bytes, size=record_bytes) if reorder_window_bytes > 0 else None
        )
        # the inputs are co-partitioned (one key's records share a partition number on every input topic, and the
        # state of a key lives under that number): a partition number is processed only when this member holds it
        # on every input topic (see _on_assign)
        self.copartitioned = copartitioned
        self.paused: list[TopicPartition] = []
        self.group_id = group_id
        self.input_topics = list(input_topics)
        self.handler = handler
        self.state_topic = state_topic
        self.state = state if state is not None else StateStore()
        # which state partitions exist: None = the partition numbers assigned on the inputs
        self.state_partitions = None if state_partitions is None else frozenset(state_partitions)
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.commit_interval_s = kafka.commit_interval_ms / 1000
        self.on_idle = on_idle
        # outputs that summarise the whole transaction (e.g. one view per changed key), written last
        self.before_commit = before_commit
        # where records the handler cannot process and outputs Kafka refuses go (None: the default topic)
        self.dlq_topic = dlq_topic or DEFAULT_DLQ_TOPIC
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._running = True
        self._stop = threading.Event()
        self.static = transactional_id is not None
        self._missing_topics_seen: set[str] = set()
        self.transactional_id = transactional_id or f"{group_id}-{uuid.uuid4().hex[:8]}"
        # A stable transactional id is also the consumer's static group membership: a restarted
        # instance takes its partitions back at once instead of waiting for the session timeout.
        static = {"group.instance.id": transactional_id, "session.timeout.ms": 30000} if transactional_id else {}
        static.update(consumer_overrides or {})
        self.consumer = make_consumer(kafka, group_id, **static)
        self.txn_timeout_s = txn_timeout_s
        self._producer_factory = producer_factory or (
            lambda tid: make_producer(kafka, transactional_id=tid, **{"linger.ms": TXN_LINGER_MS})
        )
        self.producer = self._producer_factory(self.transactional_id)
        self.processed = 0
        self.aborts = 0
        self.producer_replacements = 0
        self.rebuilds = 0
        """How often the state was rebuilt from the changelog after a commit of unknown outcome."""
        self.dead_lettered = 0
        """Records and outputs this loop sent to the dead-letter topic instead of processing/producing them."""
        # observability: metrics labelled with the stage, a heartbeat for /health, a probe for /ready
        self.stage = stage or group_id
        self.metrics = StageMetrics(self.stage)
        self.heartbeat = Heartbeat()
        self.stall_after_s = stall_after_s
        self._lag = ConsumerLagSampler(
            self.consumer, self.metrics, held=self._order.held_by_partition if self._order is not None else None
        )
        self._polling = False
        self._turn_ended = 0.0  # when the last transaction (or failed try) ended: paces the polls (_poll)
        self._out_counts: dict[str, int] = {}
        self._dead_letters: dict[str, int] = {}
        # records the handler failed on, by (topic, partition, offset) → reason; outputs refused for
        # good, by origin → (topic, key, code, reason); both kept until their input is committed
        self._poison: dict[tuple[str, int, int], str] = {}
        self._refused: dict[tuple[Any, ...], tuple[str, bytes | None, str, str]] = {}
        self._delivery_failures: list[tuple[tuple[Any, ...], Output, KafkaError]] = []
        self._failures = 0
        self._failing_since: float | None = None
        self._last_failure = ""
        self._problem: str | None = None

    def health(self) -> tuple[bool, str]:
        """Alive while the loop keeps turning and commits; false with the reason on a non-retriable error."""
        age = self.heartbeat.age()
        if age > self.stall_after_s:
            return False, f"loop stalled for {age:.0f}s"
        if self._problem:
            return False, self._problem
        if self._failing_since is not None and time.monotonic() - self._failing_since > self.stall_after_s:
            return False, (
                f"no transaction committed for {time.monotonic() - self._failing_since:.0f}s "
                f"({self._failures} failed): {self._last_failure}"
            )
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return (self._polling, "ok" if self._polling else "starting")

    # -- lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its current transaction and return (safe from a signal handler)."""
        self._running = False
        self._stop.set()

    def stop_when(self, stop_event: threading.Event, name: str) -> None:
        """:meth:`stop` once ``stop_event`` is set (a stage's ``run(settings, stop_event)``), from a daemon thread."""

        def watch() -> None:
            stop_event.wait()
            self.stop()

        threading.Thread(target=watch, name=f"{name}-stop", daemon=True).start()

    def run(self, max_idle_polls: int | None = None) -> None:
        """Run until :meth:`stop` (or ``max_idle_polls`` empty polls in a row, for tests)."""
        self._init_transactions()
        self.consumer.subscribe(
            self.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        probe = f"{self.stage}:{self.transactional_id}"
        register_probe(probe, self.health, self.ready)
        idle = 0
        idle_work = False  # the last on_idle turn did work: it may have more, so poll without waiting
        try:
            while self._running:
                self.heartbeat.beat()
                batch = self._poll(0 if idle_work or self._order else self.batch_timeout_s)
                self._polling = True
                self._lag.maybe_sample()
                records = [m for m in batch if not self._is_error(m)]
                if self._order is not None:
                    self._order.add(records)
                    # a full poll: the client has more fetched, so hold the newest (up to the window) for it; one
                    # batch at most per transaction, as without the window
                    records = self._order.take(caught_up=len(batch) < self.batch_size, limit=self.batch_size)
                    if not records and len(self._order):
                        continue
                idle_outputs = list(self.on_idle(self.state)) if (self.on_idle and not records) else []
                if not records and not idle_outputs and not self.state.staged():
                    idle_work = False
                    idle += 1
                    if max_idle_polls is not None and idle >= max_idle_polls:
                        return
                    continue
                idle = 0
                idle_work = not records  # on_idle made outputs or staged state: it may have more
                if not self._process_in_transaction(records, idle_outputs):
                    self._back_off()
                self._turn_ended = time.monotonic()
        finally:
            unregister_probe(probe)
            self.consumer.close()
            self.producer.flush(10)
            self.state.close()

    # -- internals

    def _poll(self, timeout_s: float) -> list[Message]:
        """Up to ``batch_size`` records: wait at most ``timeout_s`` for the first, then gather until
        ``commit_interval_s`` after the end of the previous transaction (librdkafka's batch consume returns only
        with a full batch or after its whole timeout, so it is asked only for what that pacing leaves)."""
        first = self.consumer.consume(1, timeout_s)
        if not first or self.batch_size <= 1:
            return list(first)
        gather_s = max(0.0, self._turn_ended + self.commit_interval_s - time.monotonic())
        return [*first, *self.consumer.consume(self.batch_size - 1, gather_s)]

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        if err.code() in FENCED_CODES or (self.static and "fenced" in err.str().lower()):
            # "Static consumer fenced by other consumer with same group.instance.id" (a _FATAL error)
            raise InstanceFenced(self.kafka, self.group_id, self.transactional_id, f"consumer: {err.str()}")
        if err.fatal() or err.code() == KafkaError._FATAL:
            raise TerminalError(f"Kafka consumer error: {err.str()}")
        if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            # an input topic that does not exist yet (a mapped table the connector has not written to):
            # librdkafka subscribes to it at its next metadata refresh after it appears and reads it from
            # the start (auto.offset.reset=earliest), so this is news, not a warning
            if err.str() not in self._missing_topics_seen:
                self._missing_topics_seen.add(err.str())
                log.info("kafka.input_topic_missing", error=err.str())
            return True
        log.warning("kafka.consumer_error", error=err.str())
        return True

    def _process_in_transaction(self, records: list[Message], extra: list[Output]) -> bool:
        """One transaction over ``records``; True when it committed (or was redone for a dead letter)."""
        self._out_counts = {}
        self._dead_letters = {}
        self._delivery_failures = []
        committing = False
        try:
            self.producer.begin_transaction()
            for i, out in enumerate(extra):
                self._emit(out, ("on_idle", i), None)
            for msg in records:
                self._handle(msg)
            if self.before_commit is not None:
                for i, out in enumerate(self.before_commit(self.state)):
                    self._emit(out, ("before_commit", i), None)
            self._produce_state()
            self._flush()
            if records:
                checkpoint("kafka.before_send_offsets")
                self._send_offsets(self._next_positions(records))
            checkpoint("kafka.before_commit")
            committing = True
            self._commit()
            checkpoint("kafka.after_commit")
        except _RecordFailed as exc:
            # the handler may have staged part of its state: drop the whole try, redo it with the record dead-lettered
            self._poison[exc.position] = exc.reason
            log.warning(
                "kafka.record_failed",
                stage=self.stage,
                topic=exc.position[0],
                partition=exc.position[1],
                offset=exc.position[2],
            )
            self.metrics.transaction("redo")
            self._abort_and_rewind()
            return True
        except _Redo:
            self.metrics.transaction("redo")
            self._abort_and_rewind()
            return True
        except _TxnFailed as exc:
            self._failed(exc.reason, retriable=exc.retriable)
            self._abort_and_rewind()
            return False
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() in FENCED_CODES:
                self.metrics.transaction("abort")
                self.state.abort()
                raise InstanceFenced(
                    self.kafka, self.group_id, self.transactional_id, f"producer: {err.str()}"
                ) from exc
            self._failed(
                f"{'commit' if committing else 'transaction'}: {err.str()}",
                retriable=err.code() not in NON_RETRIABLE_CODES,
            )
            if committing and not err.txn_requires_abort():
                # neither committed for sure nor abortable: the broker may have committed
                self._recover_unknown_outcome(f"commit_transaction: {err.name()}")
            elif err.fatal():
                log.warning("kafka.producer_fatal", stage=self.stage, error=err.str())
                self._replace_producer(f"fatal: {err.name()}")
                self._rewind()
            else:
                log.warning("kafka.transaction_aborted", stage=self.stage, error=err.str(), records=len(records))
                self._abort_and_rewind()
            return False
        except ProducerStuck as exc:
            log.warning(
                "kafka.producer_stuck",
                stage=self.stage,
                call=exc.call,
                waited_s=round(exc.waited_s, 1),
                records=len(records),
            )
            self._failed(f"{exc.call} did not return within {exc.waited_s:.0f}s", retriable=True)
            if exc.call == "commit_transaction":
                self._recover_unknown_outcome(exc.call)
            else:
                self._replace_producer(exc.call)
                self._rewind()
            return False
        except OSError as exc:
            # the handler's own side effect failed (e.g. the XML sink's disk is full): retried with backoff;
            # /health turns false if nothing commits for stall_after_s
            self._failed(
                f"I/O error in the handler: {type(exc).__name__} [errno {exc.errno}] {exc.strerror}", retriable=True
            )
            self._abort_and_rewind()
            return False
        except InstanceFenced:
            self.metrics.transaction("abort")
            self.state.abort()
            raise
        except TerminalError as exc:
            self._problem = f"stopped: {exc}"[:500]
            self._abort_and_rewind()
            raise
        except BaseException:
            self._abort_and_rewind()
            raise
        self.state.commit()
        self._committed(records)
        return True

    def _committed(self, records: list[Message]) -> None:
        """Bookkeeping after a commit: metrics, retry state reset, forget dead-letter marks now behind us."""
        self.processed += len(records)
        self.metrics.transaction("commit")
        self.metrics.batch(len(records))
        self._failures = 0
        self._failing_since = None
        self._problem = None
        per_topic: dict[str, int] = {}
        positions = [position(m) for m in records]
        for topic, _, _ in positions:
            per_topic[topic] = per_topic.get(topic, 0) + 1
        for topic, n in per_topic.items():
            self.metrics.records_in(topic, n)
        for topic, n in self._out_counts.items():
            self.metrics.records_out(topic, n)
        for code, n in self._dead_letters.items():
            self.metrics.dead_letter(code, n)
        self.dead_lettered += sum(n for code, n in self._dead_letters.items() if code in LOOP_DLQ_CODES)
        done = {(t, p): o for t, p, o in positions}
        if self._poison:
            self._poison = {k: v for k, v in self._poison.items() if k[2] > done.get((k[0], k[1]), -1)}
        if self._refused:  # hook outputs (on_idle, before_commit) were replaced in this very commit
            self._refused = {
                k: v for k, v in self._refused.items() if k[0] == "record" and k[3] > done.get((k[1], k[2]), -1)
            }

    def _handle(self, msg: Message) -> None:
        """Run the handler for one record (or dead-letter it when it failed before) and emit its outputs."""
        pos = position(msg)
        reason = self._poison.get(pos)
        if reason is not None:
            self._produce_dead_letter("handler_failed", reason, msg=msg)
            return
        try:
            outs = list(self.handler(msg, self.state))
        except (KafkaException, ProducerStuck, TransientError, TerminalError, ConfigError, OSError, MemoryError):
            raise  # the environment, not the record: retried (transient) or the stage stops (terminal)
        except Exception as exc:  # any other failure is the record's: it goes to the DLQ
            raise _RecordFailed(
                pos,
                f"{self.stage} could not process {pos[0]}[{pos[1]}]@{pos[2]}: "
                f"{type(exc).__name__} at {_where(exc)}; the record was skipped. "
                "Fix the source data or the stage and re-send it if it matters",
            ) from exc
        for i, out in enumerate(outs):
            self._emit(out, ("record", pos[0], pos[1], pos[2], i), msg)

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
        call_with_deadline(
            "send_offsets_to_transaction",
            lambda: producer.send_offsets_to_transaction(positions, group, timeout),
            self._deadline_s,
        )

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

    def _flush(self) -> None:
        """Wait for every output's delivery report, so a refused record is known before the commit."""
        producer, timeout = self.producer, self.txn_timeout_s
        call_with_deadline("flush", lambda: producer.flush(timeout), self._deadline_s)
        if not self._delivery_failures:
            return
        failures, self._delivery_failures = self._delivery_failures, []
        culprits: dict[tuple[str, int], tuple[int, tuple[Any, ...], Output, KafkaError]] = {}
        other: KafkaError | None = None
        for origin, out, err in failures:
            if err.code() not in RECORD_ERRORS:
                other = other or err
                continue
            # the broker refuses a whole batch of records for one too large: pick the largest per partition
            size = len(out.key or b"") + len(out.value or b"")
            where = (out.topic, out.partition if out.partition is not None else -1)
            if where not in culprits or size > culprits[where][0]:
                culprits[where] = (size, origin, out, err)
        for size, origin, out, err in culprits.values():
            if origin[0] == "state":
                raise _TxnFailed(_state_refused(size, out.key, out.topic, origin[1], err), retriable=False)
            self._refuse(origin, out, err, size)
        if culprits:
            raise _Redo
        if other is not None:
            raise _TxnFailed(f"producing failed: {other.str()}", retriable=other.code() not in NON_RETRIABLE_CODES)

    def _replace_producer(self, why: str) -> None:
        """Fence this loop's own producer with a fresh one of the same ``transactional.id``.

        ``init_transactions`` on the new producer bumps the epoch: the broker aborts whatever the old
        producer had open (or finishes its commit, if it was already being committed), and anything the
        old one still sends is refused. The old producer is let go. With a stable identity, the loop
        first checks that its consumer still holds it: if another live instance took it over, the loop
        raises :class:`InstanceFenced` instead of fencing that instance back.
        """
        if self.static:
            self._check_still_ours()
        old = self.producer
        self.producer_replacements += 1
        self.metrics.transaction("producer_replaced")
        log.warning("kafka.producer_replaced", stage=self.stage, reason=why, replacements=self.producer_replacements)
        self.producer = self._producer_factory(self.transactional_id)
        _release(old)
        del old
        self._init_transactions()

    def _check_still_ours(self) -> None:
        try:
            holder = static_member_id(self.kafka, self.group_id, self.transactional_id)
            mine = self.consumer.memberid()
        except Exception as exc:  # noqa: BLE001 - cannot tell (sick cluster): go on as before
            log.info("kafka.identity_check_failed", stage=self.stage, error=type(exc).__name__)
            return
        if holder is not None and mine and holder != mine:
            raise InstanceFenced(
                self.kafka,
                self.group_id,
                self.transactional_id,
                f"member {holder} now holds group.instance.id {self.transactional_id}",
            )

    def _emit(self, out: Output, origin: tuple[Any, ...], msg: Message | None) -> None:
        """Produce one output, or its dead letter when Kafka refused it for good before."""
        refused = self._refused.get(origin)
        if refused is not None and refused[0] == out.topic and refused[1] == out.key:
            self._produce_dead_letter(refused[2], refused[3], msg=msg, key=out.key)
            return
        try:
            self._produce(out, origin)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() not in RECORD_ERRORS:
                raise
            # refused before it was queued: the transaction is intact, the dead letter takes its place
            self._refuse(origin, out, err, len(out.key or b"") + len(out.value or b""))
            refused = self._refused[origin]
            self._produce_dead_letter(refused[2], refused[3], msg=msg, key=out.key)

    def _refuse(self, origin: tuple[Any, ...], out: Output, err: KafkaError, size: int) -> None:
        code = "output_too_large" if "LARGE" in err.name() or "SIZE" in err.name() else "output_invalid"
        where = "input " + f"{origin[1]}[{origin[2]}]@{origin[3]}" if origin[0] == "record" else f"the {origin[0]} hook"
        reason = (
            f"{self.stage}: the output for {out.topic} derived from {where} ({size} bytes) was refused by Kafka: "
            f"{err.str()}. It was dead-lettered instead of written; raise the topic's max.message.bytes "
            "or make the record smaller, then re-send the source record"
        )
        self._refused[origin] = (out.topic, out.key, code, reason)
        log.warning(
            "kafka.output_refused",
            stage=self.stage,
            topic=out.topic,
            bytes=size,
            code=err.name(),
            origin=":".join(str(x) for x in origin),
        )

    def _produce_dead_letter(
        self, code: str, reason: str, msg: Message | None = None, key: bytes | None = None
    ) -> None:
        """A DeadLetter (the shape of :mod:`sevisflow.dlq`) for a record or output the loop had to leave out."""
        from sevisflow.core.dlq import dead_letter_record  # dlq imports this module's Output

        value = msg.value() if msg is not None else None
        at_ms = msg.timestamp()[1] if msg is not None and msg.timestamp()[1] > 0 else 0
        record = dead_letter_record(
            self.stage,
            code,
            reason,
            at_ms,
            source_key=msg.key() if msg is not None else key,
            source_value=value if value is not None and len(value) <= DLQ_SOURCE_VALUE_MAX else None,
        )
        if msg is not None:
            record.update(
                {"source_topic": msg.topic(), "source_partition": msg.partition(), "source_offset": msg.offset()}
            )
        dl_key = record["source_key"]
        if dl_key is not None and len(dl_key) > DLQ_SOURCE_VALUE_MAX:
            dl_key = record["source_key"] = None
        self._produce(Output(self.dlq_topic, dl_key, registry().encode(DEAD_LETTER_SCHEMA, record)), ("dlq",))

    def _produce(self, out: Output, origin: tuple[Any, ...] = ("output",)) -> None:
        failures = self._delivery_failures

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append((origin, out, err))

        produce(
            self.producer,
            out.topic,
            out.key,
            out.value,
            partition=out.partition,
            headers=out.headers,
            on_delivery=on_delivery,
        )
        self._out_counts[out.topic] = self._out_counts.get(out.topic, 0) + 1
        if out.value is not None and registry().schema_name_of(out.value) == DEAD_LETTER_SCHEMA:
            code = registry().decode(out.value).get("code", "unknown")
            self._dead_letters[code] = self._dead_letters.get(code, 0) + 1

    def _produce_state(self) -> None:
        """The transaction's state changes to the changelog: one delivery callback per partition and no
        per-record objects (a stage writes several state records per input record)."""
        if not self.state_topic:
            return
        topic, failures, written = self.state_topic, self._delivery_failures, 0
        for partition, kv in self.state.staged().items():
            origin = ("state", partition)

            def on_delivery(err: KafkaError | None, msg: Message, origin: tuple[Any, ...] = origin) -> None:
                if err is not None:
                    failures.append((origin, Output(topic, msg.key(), msg.value(), partition=msg.partition()), err))

            for key, value in kv.items():
                try:
                    produce(self.producer, topic, key, value, partition=partition, on_delivery=on_delivery)
                except KafkaException as exc:  # above the producer's own message.max.bytes: never queued
                    if exc.args[0].code() not in RECORD_ERRORS:
                        raise
                    raise _TxnFailed(
                        _state_refused(len(key) + len(value or b""), key, topic, partition, exc.args[0]),
                        retriable=False,
                    ) from exc
            written += len(kv)
        if written:
            self._out_counts[topic] = self._out_counts.get(topic, 0) + written

    def _next_positions(self, records: list[Message]) -> list[TopicPartition]:
        last: dict[tuple[str, int], int] = {}
        for t, p, o in map(position, records):
            last[(t, p)] = o + 1
        return [TopicPartition(t, p, o) for (t, p), o in last.items()]

    # -- failures, retries and recovery

    def _failed(self, reason: str, retriable: bool) -> None:
        """Count a failed transaction; a non-retriable reason makes /health false until the next commit."""
        self._failures += 1
        self.metrics.transaction("abort")
        self.metrics.error("kafka")
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._last_failure = reason[:500]
        if not retriable:
            self._problem = f"non-retriable: {reason}"[:500]
            log.error("kafka.transaction_failed", stage=self.stage, retriable=False, failures=self._failures)

    def retry_delay_s(self) -> float:
        """Seconds to wait before retrying after ``self._failures`` failed transactions in a row."""
        if self._failures <= 0:
            return 0.0
        return min(self.retry_max_s, self.retry_base_s * 2.0 ** (self._failures - 1))

    def _back_off(self) -> None:
        """Wait before the next try; the heartbeat goes on (waiting on purpose is not a stall — a loop that
        keeps failing shows on /health through ``_failing_since`` instead)."""
        delay = self.retry_delay_s()
        if delay <= 0:
            return
        log.info("kafka.retry_backoff", stage=self.stage, failures=self._failures, backoff_s=round(delay, 2))
        until = time.monotonic() + delay
        while not self._stop.is_set() and (left := until - time.monotonic()) > 0:
            self.heartbeat.beat()
            self._stop.wait(min(0.5, left))
        self.heartbeat.beat()

    def _recover_unknown_outcome(self, why: str) -> None:
        """After a commit that may or may not have landed: settle it, then take state and offsets from Kafka."""
        self.aborts += 1
        self.rebuilds += 1
        log.warning("kafka.commit_outcome_unknown", stage=self.stage, reason=why, rebuilds=self.rebuilds)
        self.metrics.transaction("outcome_unknown")
        self._replace_producer(why)
        self.state.abort()
        if self.state_topic:
            wanted = {tp.partition for tp in self.consumer.assignment()}
            if self.state_partitions is not None:
                wanted &= self.state_partitions
            self._restore_state(self.state_topic, sorted(wanted))
        self._rewind()

    def _restore_state(self, state_topic: str, partitions: list[int]) -> None:
        """Replace the state of ``partitions`` with the changelog's (last value per key wins).

        A committed layer on disk is wiped and written chunk by chunk as the changelog is read, so a
        restore does not hold a partition in memory; then ``load_partition`` is called with the
        layer's own view (a no-op write) so stores that keep caches reset them as for any load.
        """
        if not getattr(self.state.committed, "streams_restore", False):
            for p, data in restore_partitions(self.kafka, state_topic, partitions).items():
                self.state.load_partition(p, data)
            return
        for p in partitions:
            self.state.committed.drop(p)
        restore_partitions(self.kafka, state_topic, partitions, into=self.state.committed.apply)
        for p in partitions:
            self.state.load_partition(p, self.state.committed.partition(p))

    def _abort_and_rewind(self) -> None:
        """Abort the open transaction (or fence it, if the abort itself fails) and rewind."""
        self.aborts += 1
        producer, timeout = self.producer, self.txn_timeout_s
        try:
            call_with_deadline("abort_transaction", lambda: producer.abort_transaction(timeout), self._deadline_s)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() in FENCED_CODES:
                self.state.abort()
                raise InstanceFenced(
                    self.kafka, self.group_id, self.transactional_id, f"producer: {err.str()}"
                ) from exc
            self._replace_producer(f"abort_transaction: {err.name()}")
        except ProducerStuck as exc:
            self._replace_producer(exc.call)
        self._rewind()

    def _rewind(self) -> None:
        """Drop staged state and seek back to the committed offsets: the batch is processed again."""
        self.state.abort()
        if self._order is not None:
            self._order.clear()  # fetched again from the committed offsets
        assignment = self.consumer.assignment()
        if assignment:
            committed = self.consumer.committed(assignment, timeout=30)
            for tp in committed:
                self.consumer.seek(
                    TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        wanted = {tp.partition for tp in partitions}
        self.paused = []
        if self.copartitioned:
            split = split_numbers(self.input_topics, [(tp.topic, tp.partition) for tp in partitions])
            # a member that joined before it knew every input topic (metadata of new topics arrives late) gets
            # that topic's partitions nowhere, or another member gets them: a key's records would then be handled
            # in two places, one of them without the key's state. Hold those numbers (paused, state not restored)
            # until the next rebalance, which the metadata refresh that finds the topic brings. A pause outlives
            # a rebalance in librdkafka, so every whole number is resumed explicitly.
            consumer.assign(partitions)
            consumer.resume([tp for tp in partitions if tp.partition not in split])
            if split:
                self.paused = [tp for tp in partitions if tp.partition in split]
                consumer.pause(self.paused)
                wanted -= split
                log.warning(
                    "kafka.not_copartitioned",
                    group=self.group_id,
                    held=sorted(split),
                    fix="waiting for a rebalance that gives this member every input topic's partitions",
                )
        if self.state_topic:
            if self.state_partitions is not None:
                wanted &= self.state_partitions
            self._restore_state(self.state_topic, sorted(wanted))
        log.info("kafka.assigned", group=self.group_id, partitions=[f"{tp.topic}:{tp.partition}" for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._order is not None:
            self._order.drop([(tp.topic, tp.partition) for tp in partitions])
        for p in {tp.partition for tp in partitions}:
            self.state.drop_partition(p)
        log.info("kafka.revoked", group=self.group_id, partitions=[f"{tp.topic}:{tp.partition}" for tp in partitions])


def split_numbers(topics: Sequence[str], assigned: Iterable[tuple[str, int]]) -> set[int]:
    """The partition numbers assigned on some of ``topics`` but not on all of them (co-partitioned inputs: those
    must not be processed here, the rest of that number's records may be with another member)."""
    by_topic: dict[str, set[int]] = {t: set() for t in topics}
    for topic, partition in assigned:
        by_topic.setdefault(topic, set()).add(partition)
    numbers = set().union(*by_topic.values()) if by_topic else set()
    whole = set.intersection(*by_topic.values()) if by_topic else set()
    return numbers - whole


def restore_partition(kafka: KafkaSettings, topic: str, partition: int, timeout_s: float = 60.0) -> dict[bytes, bytes]:
    """Rebuild one partition of a compacted changelog into a dict (last value per key wins)."""
    return restore_partitions(kafka, topic, [partition], timeout_s)[partition]


PENDING_COMMIT_GRACE_S = 15.0
"""How long a restore waits for an unfinished transaction at the end of a changelog partition before it takes the
committed part alone (see :func:`restore_partitions`)."""


def restore_partitions(
    kafka: KafkaSettings,
    topic: str,
    partitions: Sequence[int],
    timeout_s: float = 60.0,
    into: Callable[[dict[int, dict[bytes, bytes | None]]], None] | None = None,
    pending_grace_s: float = PENDING_COMMIT_GRACE_S,
) -> dict[int, dict[bytes, bytes]]:
    """Rebuild partitions of a compacted changelog into dicts (last value per key wins), one consumer for all.

    With ``into``, nothing is kept: each polled chunk goes to ``into`` as ``{partition: {key: value or
    None for a tombstone}}`` in log order (a disk-backed store applies it), and the dicts returned are empty.

    Where it ends: the partition's *high* watermark, not the last stable offset a read_committed client is told.
    ``commit_transaction`` returns before the broker has written the commit markers, so right after the member
    that held the partition committed its last transaction (a rebalance follows a commit), the last stable
    offset can still stand before that transaction (measured: 42 of 200 queries right after a commit). Ending
    there lost the transaction's state while the input offsets it committed held, so its inputs were never
    applied again. The read_committed consumer reads up to the high watermark as markers land; a transaction
    still open after ``pending_grace_s`` without progress is one whose writer died (a live one's commit is
    fenced by the rebalance) and is left out: the broker aborts it at its timeout.
    """
    out: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
    if not partitions:
        return out
    consumer = make_consumer(kafka, group_id=f"sevisflow-restore-{uuid.uuid4().hex[:12]}")
    ends_probe = make_consumer(
        kafka, group_id=f"sevisflow-restore-{uuid.uuid4().hex[:12]}", **{"isolation.level": "read_uncommitted"}
    )
    try:
        ends: dict[int, int] = {}
        assign = []
        for p in partitions:
            low, _ = _watermarks(consumer, TopicPartition(topic, p), timeout_s)
            _, high = _watermarks(ends_probe, TopicPartition(topic, p), timeout_s)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        if not assign:
            return out
        consumer.assign(assign)
        deadline = time.monotonic() + timeout_s
        progress = time.monotonic()
        while ends:
            msgs = consumer.consume(10000, 0.5)
            if not msgs:
                now = time.monotonic()
                for tp in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
                    if tp.offset >= ends[tp.partition]:
                        ends.pop(tp.partition)
                if ends and now - progress > pending_grace_s:
                    _settle_open_transactions(consumer, topic, ends)
                if ends and now > deadline:
                    raise UnreachableError(f"timed out restoring state from {topic}{sorted(ends)}")
                continue
            deadline = progress = time.monotonic()
            deadline += timeout_s
            chunk: dict[int, dict[bytes, bytes | None]] = {}
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise UnreachableError(f"restoring state from {topic}[{msg.partition()}]: {err.str()}")
                _, p, offset = position(msg)
                key, value = msg.key(), msg.value()
                if key is not None:
                    if into is not None:
                        chunk.setdefault(p, {})[key] = value
                    elif value is None:
                        out[p].pop(key, None)
                    else:
                        out[p][key] = value
                if p in ends and offset + 1 >= ends[p]:
                    ends.pop(p)
            if into is not None and chunk:
                into(chunk)
    finally:
        consumer.close()
        ends_probe.close()
    return out


def _settle_open_transactions(consumer: Consumer, topic: str, ends: dict[int, int]) -> None:
    """Stop waiting on the partitions whose read stands at the last stable offset: what lies beyond is a
    transaction that stayed open through the grace period (its writer died), not one being committed."""
    for tp in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
        _, stable = _watermarks(consumer, TopicPartition(topic, tp.partition), 10.0)
        if tp.offset >= stable:
            log.warning(
                "kafka.restore_open_transaction_left",
                topic=topic,
                partition=tp.partition,
                at=tp.offset,
                high=ends[tp.partition],
            )
            ends.pop(tp.partition)
