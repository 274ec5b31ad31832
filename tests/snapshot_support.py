"""The snapshot's producing loop without Kafka: a recording producer and the records a ConnectorTask hands it
(tests/unit/test_connector_copy_batch.py, tests/integration/test_connector_copy.py)."""

from __future__ import annotations

import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sevisflow.connectors.postgres.envelope import TableMeta, TxContext
from sevisflow.connectors.postgres.metrics import ConnectorMetrics
from sevisflow.connectors.postgres.pgoutput import Value
from sevisflow.connectors.postgres.snapshot import SnapshotMarks
from sevisflow.connectors.postgres.task import ConnectorTask, _SnapshotRun
from sevisflow.core.config import settings_from_mapping

# what COPY TO writes for the characters it escapes (PostgreSQL's CopyAttributeOutText)
COPY_ESCAPES = {"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def copy_text(rows: list[list[Value]]) -> bytes:
    """Rows as COPY TO writes them in text format: NULL as \\N, the special characters escaped."""
    lines = []
    for row in rows:
        fields = ["\\N" if v is None else "".join(COPY_ESCAPES.get(ch, ch) for ch in str(v)) for v in row]
        lines.append("\t".join(fields) + "\n")
    return "".join(lines).encode()


class RecordingProducer:
    """A producer that keeps what it is given and refuses the calls listed in ``refuse`` with BufferError
    (the n-th produce() call, counting refused ones), as a full librdkafka queue does."""

    def __init__(self, refuse: Collection[int] = ()) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None]] = []
        self.calls = 0
        self.refuse = refuse
        self.polls = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | None) -> None:
        self.calls += 1
        if self.calls in self.refuse:
            raise BufferError("Local: Queue full")
        self.records.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def snapshot_task(tmp_path: Path) -> ConnectorTask:
    settings = settings_from_mapping({"connector": {"offsets_dir": str(tmp_path)}})
    return ConnectorTask(settings, threading.Event(), ConnectorMetrics("conn", "slot"))


def snapshot_records(
    task: ConnectorTask, meta: TableMeta, chunks: list[Any], producer: RecordingProducer
) -> tuple[list[tuple[str, bytes | None, bytes | None]], int]:
    """What the snapshot's producing loop hands the producer for these chunks (marks and the held-back last
    row included), and the rows it counted."""
    tx = TxContext(xid=9, commit_lsn=None, ts_us=1000, snapshot="true")
    run = _SnapshotRun(tx, 77, None, None, [], 0)
    marks = SnapshotMarks(first=True)
    for chunk in chunks:
        task._produce_runs(marks.runs(meta, chunk), run, producer)  # type: ignore[arg-type]
    task._produce_runs(marks.finish(), run, producer)  # type: ignore[arg-type]
    return producer.records, run.rows
