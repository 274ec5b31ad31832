"""The connector's persisted state: a typed value with a documented resume rule.

The *stream* position lives in PostgreSQL, in the slot: ``confirmed_flush_lsn`` is the
end LSN of the last transaction (or heartbeat) whose events Kafka acknowledged. A restart
streams from there, so transactions that committed after it are sent again — at-least-once,
and the repeats carry the same ``source.sequence``.

The *snapshot* position lives in ``<offsets_dir>/<name>.<slot>.json`` (this module), written
atomically (temp file, fsync, rename) and only after Kafka acknowledged every event the file
claims. Resume rule for an interrupted snapshot: tables in ``done`` are skipped; the table in
``current`` restarts strictly *after* ``last_key`` (the text of the last primary key Kafka
acknowledged, compared with ``(pk…) > (last_key…)``), so no acknowledged row is read again and
no row is skipped. Rows read after a resume come from a new exported snapshot and carry that
snapshot's consistent point as ``source.lsn`` (see snapshot.py).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sevisflow.core.errors import TerminalError


@dataclass
class SnapshotProgress:
    lsn: int  # consistent point the rows are read at (stamped as source.lsn)
    tables: list[str]  # schema.table, in snapshot order
    done: list[str] = field(default_factory=list)
    current: str | None = None
    last_key: list[str | None] | None = None
    rows: int = 0  # rows acknowledged so far (all tables)
    total_estimate: int = 0
    started_ms: int = 0
    resumed: int = 0  # how many times this snapshot was resumed


@dataclass
class ConnectorState:
    slot_name: str
    snapshot_completed: bool = False
    snapshotted_tables: list[str] = field(default_factory=list)
    snapshot: SnapshotProgress | None = None  # not None while a snapshot is in progress

    @property
    def offset_exists(self) -> bool:
        return self.snapshot_completed


class StateStore:
    """Reads and writes the :class:`ConnectorState` of one connector + slot."""

    def __init__(self, directory: str | os.PathLike[str], name: str, slot: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name}.{slot}")
        self.dir = Path(directory)
        self.path = self.dir / f"{safe}.json"
        self.status_path = self.dir / f"{safe}.status.json"
        self.slot = slot

    def load(self) -> ConnectorState:
        if not self.path.exists():
            return ConnectorState(slot_name=self.slot)
        try:
            raw: dict[str, Any] = json.loads(self.path.read_text())
            snap = raw.pop("snapshot", None)
            state = ConnectorState(**raw)
            state.snapshot = SnapshotProgress(**snap) if snap else None
            return state
        except (ValueError, TypeError) as exc:
            raise TerminalError(
                f"connector state file {self.path} is unreadable ({exc}); "
                "move it away to start over (a new snapshot per snapshot.mode)"
            ) from exc

    def save(self, state: ConnectorState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(asdict(state), indent=1))


def write_atomic(path: Path, text: str, durable: bool = True) -> None:
    """Replace ``path`` atomically; ``durable`` fsyncs first (state yes, the status file no)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
