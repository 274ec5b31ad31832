"""What the connector shows about itself: Prometheus metrics and a status file for ``sevisflow connector status``.

Both carry counts, positions and times only — never row values. The status file
(``<offsets_dir>/<name>.<slot>.status.json``) is rewritten about once a second by the running
connector; ``connector status`` reads it and adds the live slot lag from PostgreSQL.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from sevisflow.connectors.postgres.offsets import write_atomic
from sevisflow.core.log import get_status_logger
from sevisflow.core.observability import Heartbeat, RateLimit, progress_lines, tally

STAGE = "connector"
status = get_status_logger()


class ConnectorMetrics:
    """Counters and gauges of one connector, in their own registry (several may run in one process)."""

    def __init__(self, name: str, slot: str) -> None:
        self.name = name
        self.slot = slot
        self.registry = CollectorRegistry()
        labels = {"stage": STAGE, "connector": name, "slot": slot}
        lbl = list(labels)
        self._events = Counter(
            "sevisflow_connector_events", "change events produced to Kafka", lbl + ["op"], registry=self.registry
        )
        self._snapshot_rows = Counter(
            "sevisflow_connector_snapshot_rows", "snapshot rows produced", lbl, registry=self.registry
        )
        self._snap_progress = Gauge(
            "sevisflow_connector_snapshot_progress_ratio",
            "snapshot progress 0..1 (1 when done or not needed)",
            lbl,
            registry=self.registry,
        )
        self._lag = Gauge(
            "sevisflow_connector_slot_lag_bytes",
            "WAL bytes between the server's position and the slot's confirmed_flush_lsn",
            lbl,
            registry=self.registry,
        )
        self._confirmed = Gauge(
            "sevisflow_connector_confirmed_lsn", "last LSN confirmed to PostgreSQL", lbl, registry=self.registry
        )
        self._last_event = Gauge(
            "sevisflow_connector_last_event_timestamp_seconds",
            "wall-clock time of the last change event produced",
            lbl,
            registry=self.registry,
        )
        self._behind = Gauge(
            "sevisflow_connector_behind_source_seconds",
            "now minus the commit time of the last streamed transaction",
            lbl,
            registry=self.registry,
        )
        self._restarts = Counter(
            "sevisflow_connector_restarts", "task restarts after transient errors", lbl, registry=self.registry
        )
        self._labels = labels
        self.events_total = 0
        self.snapshot_rows = 0
        self.state = "starting"
        # liveness for /health: the stream loop and the snapshot beat it on every turn / chunk
        self.heartbeat = Heartbeat()
        self.last_event_ms: int | None = None
        self.last_commit_ms: int | None = None
        self.confirmed_lsn: int | None = None
        self.slot_lag_bytes: int | None = None
        self.snapshot: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)
        self._snapshot_line = RateLimit(scale=0.25)  # long work: a line every quarter progress interval
        # exposed through the process's /metrics ([metrics] port, sevisflow.core.observability.serve_for)
        # next to the other stages; the connector has no server of its own
        from sevisflow.core.observability import process_registry

        self._process_registry: CollectorRegistry | None = process_registry()
        try:
            self._process_registry.register(self.registry)  # a registry is a collector of its metrics
        except ValueError:  # same metric names already there (a second connector in one process)
            self._process_registry = None

    # -- updates (called per batch, not per event)

    def events(self, op_counts: dict[str, int]) -> None:
        n = 0
        for op, c in op_counts.items():
            if c:
                self._events.labels(**self._labels, op=op).inc(c)
                n += c
        if n:
            self.events_total += n
            tally(STAGE).add(records_out=n)
            now = time.time()
            self.last_event_ms = int(now * 1000)
            self._last_event.labels(**self._labels).set(now)

    def snapshot_progress(self, rows_added: int, info: dict[str, Any]) -> None:
        if rows_added:
            self._snapshot_rows.labels(**self._labels).inc(rows_added)
            self.snapshot_rows += rows_added
            self.last_event_ms = int(time.time() * 1000)
            tally(STAGE).add(records_out=rows_added)
        self.snapshot = info
        total = info.get("total_estimate") or 0
        ratio = 1.0 if info.get("completed") else (min(info.get("rows", 0) / total, 0.999) if total else 0.0)
        self._snap_progress.labels(**self._labels).set(ratio)
        self._snapshot_line_maybe(info, ratio)

    def _snapshot_line_maybe(self, info: dict[str, Any], ratio: float) -> None:
        """``connector.snapshot_progress`` (rows done of the estimate, tables done): the first, then one per
        quarter progress interval, and the last (``completed``) always."""
        facts = {
            "snapshot_rows": info.get("rows", 0),
            "snapshot_rows_estimate": info.get("total_estimate") or None,
            "snapshot_tables_done": info.get("tables_done"),
            "snapshot_tables": info.get("tables"),
        }
        tally(STAGE).set(**facts)
        if progress_lines() and (info.get("completed") or self._snapshot_line.due()):
            status.info(
                "connector.snapshot_progress",
                stage=STAGE,
                connector=self.name,
                rows=facts["snapshot_rows"],
                rows_estimate=facts["snapshot_rows_estimate"],
                tables_done=facts["snapshot_tables_done"],
                tables=facts["snapshot_tables"],
                percent=round(100 * ratio, 1),
                completed=bool(info.get("completed")),
            )

    def snapshot_not_needed(self) -> None:
        self._snap_progress.labels(**self._labels).set(1.0)

    def commit_seen(self, commit_ts_ms: int) -> None:
        self.last_commit_ms = commit_ts_ms
        self._behind.labels(**self._labels).set(max(0.0, time.time() - commit_ts_ms / 1000))

    def confirmed(self, lsn: int) -> None:
        self.confirmed_lsn = lsn
        self._confirmed.labels(**self._labels).set(lsn)

    def slot_lag(self, lag: int | None) -> None:
        self.slot_lag_bytes = lag
        if lag is not None:
            self._lag.labels(**self._labels).set(lag)
            tally(STAGE).set(slot_lag_bytes=lag)

    def restarted(self, error: str) -> None:
        self.last_error = error
        self._restarts.labels(**self._labels).inc()

    def events_per_second(self) -> float:
        now = time.monotonic()
        self._rate.append((now, self.events_total + self.snapshot_rows))
        while len(self._rate) > 2 and now - self._rate[0][0] > 10:
            self._rate.popleft()
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    # -- outputs

    def status(self) -> dict[str, Any]:
        return {
            "connector": self.name,
            "slot": self.slot,
            "state": self.state,
            "pid": os.getpid(),
            "events_total": self.events_total,
            "snapshot_rows": self.snapshot_rows,
            "events_per_second": round(self.events_per_second(), 1),
            "last_event_ms": self.last_event_ms,
            "last_commit_ms": self.last_commit_ms,
            "confirmed_lsn": self.confirmed_lsn,
            "slot_lag_bytes": self.slot_lag_bytes,
            "snapshot": self.snapshot,
            "last_error": self.last_error,
            "updated_ms": int(time.time() * 1000),
        }

    def write_status(self, path: os.PathLike[str] | str) -> None:
        from pathlib import Path

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, orjson.dumps(self.status()).decode(), durable=False)

    def close(self) -> None:
        if self._process_registry is not None:
            try:
                self._process_registry.unregister(self.registry)
            except KeyError:
                pass
            self._process_registry = None
