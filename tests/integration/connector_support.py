"""Helpers shared by the connector's integration tests (a plain module, not a test module: no tests here)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg

from sevisflow.connectors.postgres import run_connector
from sevisflow.core.config import Settings
from sevisflow.core.kafka_io import read_topic
from tests.helpers import KafkaHandle, PgHandle, make_settings


def connector_settings(kafka: KafkaHandle, pg: PgHandle, unique: str, tmp: Path, **connector: Any) -> Settings:
    conf = {
        "table.include.list": ["public.*"],
        "publication.name": f"pub_{unique}",
        "heartbeat.interval.ms": 200,
        "offset.flush.interval.ms": 200,
        "snapshot.fetch.size": 500,
        "offsets_dir": str(tmp / "offsets"),
        "slot.retry.delay.ms": 300,
        "name": f"conn-{unique}",
    }
    conf.update(connector)
    settings = make_settings(kafka=kafka, pg=pg, unique=unique, connector=conf)
    return settings.replace(kafka={"partitions": 2})


class RunningConnector:
    """``run_connector`` in a thread; ``stop()`` returns after it finished (re-raising its error)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            run_connector(self.settings, self.stop_event)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def __enter__(self) -> RunningConnector:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "connector did not stop within 60s"
        if self.error is not None:
            raise self.error


def execute(dsn: str, *statements: str, params: Any = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s, params)


def current_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(conn.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8").fetchone()[0])  # type: ignore[index]


def slot_confirmed(dsn: str, slot: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return None if row is None else row[0]


def wait_until(pred: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_caught_up(dsn: str, slot: str, timeout: float = 60) -> None:
    """Until the slot confirmed a position past the server's current WAL position (so Kafka has it all)."""
    target = current_lsn(dsn)
    wait_until(lambda: (slot_confirmed(dsn, slot) or 0) >= target, timeout, f"slot {slot} to confirm {target}")


def events(settings: Settings, topic: str) -> list[tuple[int, int, Any, Any]]:
    """(partition, offset, key, value) of every record, JSON-decoded, in partition order."""
    out = []
    for m in read_topic(settings.kafka, topic, timeout_s=30):
        k, v = m.key(), m.value()
        out.append((m.partition(), m.offset(), orjson.loads(k) if k else None, orjson.loads(v) if v else None))
    out.sort(key=lambda r: (r[0], r[1]))
    return out


def changes(settings: Settings, table: str) -> list[dict[str, Any]]:
    """The change events (tombstones left out) of ``public.<table>``."""
    topic = f"{settings.connector.topic_prefix}.public.{table}"
    return [v for _, _, _, v in events(settings, topic) if v is not None]


def by_partition(evs: list[tuple[int, int, Any, Any]]) -> Iterator[list[tuple[int, int, Any, Any]]]:
    parts: dict[int, list[tuple[int, int, Any, Any]]] = {}
    for e in evs:
        parts.setdefault(e[0], []).append(e)
    return iter(parts.values())


def wait_streaming(settings: Settings, timeout: float = 60) -> None:
    """Until the connector reports it finished its snapshot and streams."""
    from sevisflow.app.cli.connector import status_data

    wait_until(
        lambda: (status_data(settings).get("reported") or {}).get("state") == "streaming",
        timeout,
        "the connector to stream",
        interval=0.2,
    )


def in_source_order(vals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events of several partitions in WAL order: snapshot first, then (commit lsn, lsn); a PK change's d before c."""

    def key(v: dict[str, Any]) -> tuple[int, int, int, int]:
        commit, lsn = json.loads(v["source"]["sequence"])
        return (0 if v["op"] == "r" else 1, int(commit or 0), int(lsn), 0 if v["op"] == "d" else 1)

    return sorted(vals, key=key)


def run_to_end(settings: Settings, timeout: float = 60) -> None:
    """Run the connector until it returns by itself (an error, or initial_only done); re-raise its error."""
    rc = RunningConnector(settings)
    rc.thread.start()
    rc.thread.join(timeout)
    if rc.thread.is_alive():
        rc.stop()
        raise AssertionError(f"the connector was still running after {timeout}s")
    if rc.error is not None:
        raise rc.error
