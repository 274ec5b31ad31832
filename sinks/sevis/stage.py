"""The SEVIS sink stage: the outbox ⇄ SEVIS, results → ``sevis.results``, refusals → ``requeue``.

One SEVIS sink per outbox: the stage holds :class:`~sevisflow.sinks.outbox.OutboxLock` (an OS ``flock`` on
``<outbox_dir>/.sink-sevis.lock``) while it runs; a second one stops at once with an error naming
the holder's pid and host.

Observability like the ``TransactionalLoop`` stages: the stage registers a probe, so the process's
``/health`` fails when no HTTP exchange or loop turn happened for ``metrics.stall_after_s`` (a
hung SEVIS call), and ``/ready`` answers 200 once the first pass over the outbox is done.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import KafkaError

from sevisflow.core.config import Settings
from sevisflow.core.kafka_io import delivery_raiser, flush_or_raise, make_producer, produce
from sevisflow.core.ledger import Ledger, LedgerWriter, writer_anchors
from sevisflow.core.log import get_logger
from sevisflow.core.observability import StageMetrics, register_probe, unregister_probe
from sevisflow.core.serde import registry
from sevisflow.sinks.outbox import OutboxLock
from sevisflow.sinks.sevis.uploader import STAGE, SevisSink, error_kind
from sevisflow.sinks.xml.stage import make_outbox, requeue_command

log = get_logger(__name__)

RESULT_SCHEMA = "sevisflow.results.SevisResult"


class KafkaPublisher:
    """Publishes results and requeue commands with an idempotent producer and waits for the acks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = make_producer(settings.kafka)

    def results(self, org_id: str, records: list[dict[str, Any]]) -> None:
        errors: list[KafkaError] = []
        cb = delivery_raiser(errors)
        for rec in records:
            produce(
                self.producer,
                self.settings.topics.results,
                org_id.encode(),
                registry().encode(RESULT_SCHEMA, rec),
                on_delivery=cb,
            )
        flush_or_raise(self.producer, errors)

    def requeue(self, org_id: str, batch_id: str, record_ids: list[str], reason: str, code: str) -> None:
        import time

        out = requeue_command(
            self.settings,
            org_id,
            batch_id,
            record_ids,
            reason=reason,
            at_ms=int(time.time() * 1000),
            command_id=f"requeue-{batch_id}",
            extra={"code": code},
        )
        errors: list[KafkaError] = []
        produce(self.producer, out.topic, out.key, out.value, on_delivery=delivery_raiser(errors))
        flush_or_raise(self.producer, errors)

    def anchor(self, key: bytes, value: bytes) -> None:
        """Publish the audit ledger's new head on the ledger topic (compacted) and wait for the ack."""
        errors: list[KafkaError] = []
        produce(self.producer, self.settings.topics.ledger, key, value, on_delivery=delivery_raiser(errors))
        flush_or_raise(self.producer, errors)

    def close(self) -> None:
        self.producer.flush(10)


def run(
    settings: Settings, stop_event: threading.Event, tick_s: float = 1.0, publisher: Any = None, client: Any = None
) -> None:
    """Upload ready batches and download results until ``stop_event`` is set.

    Raises :class:`~sevisflow.core.errors.TerminalError` (e.g. a client certificate SEVIS
    refuses) so the operator sees it; the batch stays in ``sending`` and is probed
    before any new upload once the problem is fixed.
    """
    outbox = make_outbox(settings)
    lock = OutboxLock(outbox.root).acquire()  # before anything else: a second sink stops here
    try:
        pub = publisher if publisher is not None else KafkaPublisher(settings)
    except BaseException:
        lock.release()
        raise
    try:
        anchors = writer_anchors(settings.kafka, settings.topics.ledger) if isinstance(pub, KafkaPublisher) else {}
        writer = LedgerWriter(Ledger(outbox.root), STAGE, settings.school.org_id, anchors)
        sink = SevisSink(settings, outbox, pub, client=client, ledger=writer)  # loads the client certificate
        sink.reconcile()  # a ledger that lost its anchors stops the stage here; crash leftovers are sealed
    except Exception as exc:
        StageMetrics(STAGE).error(error_kind(exc))  # e.g. sevis_certificate: the process stops with its message
        if hasattr(pub, "close"):
            pub.close()
        lock.release()
        raise
    stall_after_s = settings.metrics.stall_after_s
    if stall_after_s < settings.sevis.http_timeout_s:
        log.warning(
            "sink_sevis.stall_below_http_timeout",
            stall_after_s=stall_after_s,
            http_timeout_s=settings.sevis.http_timeout_s,
            hint="a slow but answering SEVIS makes /health fail: raise [metrics] stall_after_s "
            "above [sevis] http_timeout_s",
        )
    passes = 0

    def health() -> tuple[bool, str]:
        age = sink.heartbeat.age()
        return (age <= stall_after_s, "ok" if age <= stall_after_s else f"loop stalled for {age:.0f}s")

    def ready() -> tuple[bool, str]:
        return (passes > 0, "ok" if passes else "first pass over the outbox not done yet")

    log.info("sink_sevis.started", outbox=str(outbox.root), upload_url=sink.client.__dict__.get("upload_url"))
    register_probe(STAGE, health, ready)
    try:
        while not stop_event.is_set():
            sink.heartbeat.beat()
            try:
                sink.step()
            except Exception as exc:
                sink.metrics.error(error_kind(exc))
                raise
            passes += 1
            stop_event.wait(min(tick_s, max(0.05, settings.sevis.poll_interval_s)))
    finally:
        unregister_probe(STAGE)
        try:
            if hasattr(pub, "close"):
                pub.close()
        finally:
            lock.release()
        log.info("sink_sevis.stopped")
