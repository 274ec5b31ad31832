"""The audit ledger: a hash chain over the outbox's archived batches.

The outbox manifest (written by sinks/xml) records each document's sha256 but nothing
links one batch to the next, so deleting a whole batch folder, or rewriting a document
*and* its manifest together, would leave no trace in the outbox itself. The ledger adds
that link without touching the sink's files: ``<outbox_dir>/audit-ledger.jsonl`` (0600),
one JSON line per sealed batch::

    {"seq": 3, "batch_id": "S1718791200000", "day": "2024-06-19", "file": "S1718791200000.xml",
     "xml_sha256": "…", "manifest_sha256": "…", "closed_at_ms": 1718791200000,
     "prev": "<hash of entry 2>", "hash": "<sha256 of this entry without 'hash'>"}

``hash`` is the sha256 of the entry's canonical JSON (sorted keys, no ``hash`` field), and
``prev`` the previous entry's ``hash`` (64 zeros for the first), so changing, removing or
reordering any line breaks the chain at that line. ``sevisflow verify --all`` seals a batch
only after it has verified it (re-rendered from the log, identical bytes), then checks
every sealed batch is still in the outbox with the same document and manifest. The chain's
head is printed by every run: an auditor who notes it (or a scheduler that publishes it)
also detects a truncated ledger (``verify --all --head <hash>``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import orjson

LEDGER_FILE = "audit-ledger.jsonl"
GENESIS = "0" * 64


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    line: int
    batch_id: str | None
    message: str


def check_chain(entries: Iterable[dict[str, Any]]) -> tuple[list[ChainProblem], str]:
    """Problems of the chain (empty when intact) and the head hash. Pure."""
    problems: list[ChainProblem] = []
    prev = GENESIS
    seen: set[str] = set()
    for i, e in enumerate(entries, start=1):
        bid = e.get("batch_id")
        if e.get("seq") != i:
            problems.append(ChainProblem(i, bid, f"sequence number {e.get('seq')} where {i} was expected "
                                                  "(a line was removed or inserted)"))
        if e.get("prev") != prev:
            problems.append(ChainProblem(i, bid, "link broken: 'prev' is not the hash of the line before "
                                                  "(a line before it was removed, changed or reordered)"))
        if entry_hash(e) != e.get("hash"):
            problems.append(ChainProblem(i, bid, "entry altered: its content does not match its hash"))
        if bid in seen:
            problems.append(ChainProblem(i, bid, "batch sealed twice"))
        seen.add(bid or "")
        prev = e.get("hash") or ""
    return problems, prev


def new_entry(prev_entries: list[dict[str, Any]], *, batch_id: str, day: str, file: str, xml_sha256: str,
              manifest_sha256: str, closed_at_ms: int | None) -> dict[str, Any]:
    prev = prev_entries[-1]["hash"] if prev_entries else GENESIS
    e = {"seq": len(prev_entries) + 1, "batch_id": batch_id, "day": day, "file": file, "xml_sha256": xml_sha256,
         "manifest_sha256": manifest_sha256, "closed_at_ms": closed_at_ms, "prev": prev}
    e["hash"] = entry_hash(e)
    return e


class Ledger:
    """The ledger file next to the outbox (read, append; never rewritten)."""

    def __init__(self, outbox_dir: str | Path) -> None:
        self.path = Path(outbox_dir) / LEDGER_FILE

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"seq": None, "batch_id": None, "hash": None, "prev": None, "_unreadable_line": n})
        return out

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Append sealed entries (O_APPEND, fsync; the file is created 0600)."""
        if not entries:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in entries))
            os.fsync(fd)
        finally:
            os.close(fd)
