"""The audit ledger: a hash chain over what the pipeline sent and received, anchored on Kafka.

The outbox manifest (written by sinks/xml) records each document's sha256 but nothing links
one batch to the next, so deleting a whole batch folder, or rewriting a document *and* its
manifest together, would leave no trace in the outbox itself. The ledger adds that link:
``<outbox_dir>/audit-ledger.jsonl`` (0600, append-only), one JSON line per sealing step::

    {"seq": 3, "kind": "archive", "batch_id": "S1718791200000", "day": "2024-06-19", "state": "ready",
     "file": "S1718791200000.xml", "xml_sha256": "…", "manifest_sha256": "…", "closed_at_ms": 1718791200000,
     "prev": "<hash of entry 2>", "hash": "<sha256 of this entry without 'hash'>"}
    {"seq": 4, "kind": "evidence", "batch_id": "S1718791200000", "day": "2024-06-19", "state": "processed",
     "files": {"post-1.json": "…", "upload-response.xml": "…", "results/sevis_transaction_log.xml": "…"}, …}

Who seals: the XML sink seals each document + manifest (``archive``) when it files the batch,
inside the Kafka transaction that commits the closed event's offset; the SEVIS sink seals every
file it writes into the folder (POST evidence, SEVIS's answers, the transaction log, the PDFs,
``reason.json``) with the state the batch reached (``evidence``). ``hash`` is the sha256 of the
entry's canonical JSON (sorted keys, no ``hash`` field) and ``prev`` the previous entry's
``hash`` (64 zeros for the first): changing, removing or reordering a line breaks the chain.

**Anchor.** A chain alone cannot show that its tail was cut off, or that the whole file was
replaced by an older copy or re-linked from scratch. So each time a writer moves the head it
publishes ``{"seq", "hash", …}`` on the compacted topic ``[topics] ledger`` (key
``<OrgID>:<writer>``): the XML sink in the same transaction as the batch's offsets, the SEVIS sink
right after the fsynced append (and again at start when the file is ahead). ``verify`` reads the
anchors and requires every anchored ``(seq, hash)`` to be the ledger's line ``seq``; a writer
refuses to seal on a ledger that does not hold its anchor (it would re-anchor a forgery).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

LEDGER_FILE = "audit-ledger.jsonl"
GENESIS = "0" * 64
ARCHIVE = "archive"
EVIDENCE = "evidence"
STATE_RANK = {"ready": 0, "sending": 1, "uploaded": 2, "processed": 3, "failed": 3}
"""How far a batch has gone; a folder whose state ranks below its sealed state was moved backwards."""
UNSEALED = {"state.json"}
"""Files of a batch folder that are not evidence: timing and display data the sink rewrites."""


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    line: int
    batch_id: str | None
    message: str


def check_chain(entries: Iterable[dict[str, Any]]) -> tuple[list[ChainProblem], str]:
    """Problems of the chain (empty when intact) and the head hash. Pure."""
    problems: list[ChainProblem] = []
    prev = GENESIS
    for i, e in enumerate(entries, start=1):
        bid = e.get("batch_id")
        if e.get("seq") != i:
            problems.append(
                ChainProblem(
                    i, bid, f"sequence number {e.get('seq')} where {i} was expected (a line was removed or inserted)"
                )
            )
        if e.get("prev") != prev:
            problems.append(
                ChainProblem(
                    i,
                    bid,
                    "link broken: 'prev' is not the hash of the line before "
                    "(a line before it was removed, changed or reordered)",
                )
            )
        if entry_hash(e) != e.get("hash"):
            problems.append(ChainProblem(i, bid, "entry altered: its content does not match its hash"))
        prev = e.get("hash") or ""
    return problems, prev


def chain(prev_entries: list[dict[str, Any]], fields: dict[str, Any]) -> dict[str, Any]:
    """The next entry after ``prev_entries`` carrying ``fields`` (seq, prev and hash added)."""
    e = {**fields, "seq": len(prev_entries) + 1, "prev": prev_entries[-1]["hash"] if prev_entries else GENESIS}
    e["hash"] = entry_hash(e)
    return e


def new_entry(
    prev_entries: list[dict[str, Any]],
    *,
    batch_id: str,
    day: str,
    file: str,
    xml_sha256: str,
    manifest_sha256: str,
    closed_at_ms: int | None,
    state: str = "ready",
) -> dict[str, Any]:
    """An ``archive`` entry: the document and manifest of one batch as the XML sink filed them."""
    return chain(
        prev_entries,
        {
            "kind": ARCHIVE,
            "batch_id": batch_id,
            "day": day,
            "file": file,
            "xml_sha256": xml_sha256,
            "manifest_sha256": manifest_sha256,
            "closed_at_ms": closed_at_ms,
            "state": state,
        },
    )


def _parse(data: bytes) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            e = orjson.loads(line)
            out.append(e if isinstance(e, dict) else {"seq": None, "hash": None, "_unreadable_line": n})
        except orjson.JSONDecodeError:
            out.append({"seq": None, "batch_id": None, "hash": None, "prev": None, "_unreadable_line": n})
    return out


class Ledger:
    """The ledger file next to the outbox (read, append under an exclusive lock; never rewritten)."""

    def __init__(self, outbox_dir: str | Path) -> None:
        self.path = Path(outbox_dir) / LEDGER_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return _parse(self.path.read_bytes())

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Append ready-made entries (O_APPEND, fsync; the file is created 0600)."""
        self.seal(lambda _: entries, prechained=True)

    def seal(
        self, make: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], prechained: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Append what ``make(current entries)`` returns, chained, under ``flock``; fsynced before return.

        Returns (all entries now, the new ones). The lock makes the read-chain-append one step for
        every writer (the XML and the SEVIS sink append to the same file)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            entries = _parse(os.pread(fd, size, 0)) if size else []
            new: list[dict[str, Any]] = []
            for fields in make(entries):
                new.append(fields if prechained else chain(entries + new, fields))
            if new:
                os.write(fd, b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in new))
                os.fsync(fd)
            return entries + new, new
        finally:
            os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------- what a batch folder holds


def sealed_by_batch(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """batch_id → {"archive": entry | None, "files": {rel: sha256}, "state": highest sealed state, "lines": [seq]}."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        bid = e.get("batch_id")
        if not bid:
            continue
        b = out.setdefault(bid, {"archive": None, "files": {}, "state": None, "lines": []})
        b["lines"].append(e.get("seq"))
        if e.get("kind", ARCHIVE) == ARCHIVE and b["archive"] is None and e.get("xml_sha256"):
            b["archive"] = e
        for rel, digest in (e.get("files") or {}).items():
            b["files"].setdefault(rel, digest)
        st = e.get("state")
        if st in STATE_RANK and (b["state"] is None or STATE_RANK[st] > STATE_RANK[b["state"]]):
            b["state"] = st
    return out


def evidence_files(folder: Path, xml_name: str) -> dict[str, Path]:
    """The evidence files of a batch folder (relative name → path): everything but the document, the
    manifest (sealed by the XML sink), ``state.json`` and temporary/hidden files."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        if rel in UNSEALED or rel in ("manifest.json", xml_name):
            continue
        out[rel] = p
    return out


def archive_fields(bd: Any) -> dict[str, Any]:
    """The ``archive`` entry's fields for a batch folder just filed (``bd``: a sevisflow.sinks.outbox.BatchDir)."""
    m = orjson.loads((bd.path / "manifest.json").read_bytes())
    file = m.get("file") or bd.xml_path.name
    return {
        "kind": ARCHIVE,
        "batch_id": m.get("batch_id") or bd.name,
        "day": bd.day,
        "file": file,
        "xml_sha256": file_sha256(bd.path / file),
        "manifest_sha256": file_sha256(bd.path / "manifest.json"),
        "closed_at_ms": m.get("closed_at_ms"),
        "state": bd.state,
    }


def seal_archive(ledger: Ledger, bd: Any, batch_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seal a batch's document + manifest once (a re-delivered batch finds its line and adds none)."""

    def make(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if sealed_by_batch(entries).get(batch_id, {}).get("archive") is not None:
            return []
        return [archive_fields(bd)]

    return ledger.seal(make)


def seal_evidence(ledger: Ledger, bd: Any, batch_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seal the folder's evidence files not sealed yet, and its state when it went further than sealed.

    A file sealed once is never sealed again (a changed copy stays a difference verify reports)."""

    def make(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        known = sealed_by_batch(entries).get(batch_id, {"files": {}, "state": None})
        files = {
            rel: file_sha256(p)
            for rel, p in evidence_files(bd.path, bd.xml_path.name).items()
            if rel not in known["files"]
        }
        further = known["state"] is None or STATE_RANK.get(bd.state, 0) > STATE_RANK[known["state"]]
        if not files and not further:
            return []
        return [{"kind": EVIDENCE, "batch_id": batch_id, "day": bd.day, "state": bd.state, "files": files}]

    return ledger.seal(make)


# ----------------------------------------------------------------------------- the anchor


def ledger_id(path: Path) -> str:
    """Which ledger an anchor is for: the ledger file's absolute path (one cluster may serve several outboxes)."""
    return str(Path(path).resolve())


def anchor_key(org_id: str, writer: str, ledger_path: Path) -> bytes:
    return f"{org_id}:{writer}:{ledger_id(ledger_path)}".encode()


def anchor_value(entries: list[dict[str, Any]], writer: str, ledger_path: Path, now_ms: int | None = None) -> bytes:
    """The head record a writer publishes after it moved the head (``seq`` 0 = an empty ledger)."""
    last = entries[-1] if entries else {}
    return orjson.dumps(
        {
            "seq": last.get("seq") or 0,
            "hash": last.get("hash") or GENESIS,
            "batch_id": last.get("batch_id"),
            "writer": writer,
            "ledger": ledger_id(ledger_path),
            "at_ms": int(time.time() * 1000) if now_ms is None else now_ms,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def anchors_for(anchors: Mapping[str, Mapping[str, Any]], ledger_path: Path) -> dict[str, Mapping[str, Any]]:
    """The anchors of this ledger file (by the path in the key; unreadable values of its keys included)."""
    suffix = ":" + ledger_id(ledger_path)
    return {k: v for k, v in anchors.items() if k.endswith(suffix)}


def latest_anchors(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, dict[str, Any]]:
    """key → the latest anchor (records in log order); unreadable values are kept as ``{"unreadable": True}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in records:
        k = (key or b"").decode("utf-8", "replace")
        if value is None:
            out.pop(k, None)
            continue
        try:
            v = orjson.loads(value)
            out[k] = v if isinstance(v, dict) else {"unreadable": True}
        except orjson.JSONDecodeError:
            out[k] = {"unreadable": True}
    return out


def check_anchors(entries: list[dict[str, Any]], anchors: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Problems when the ledger is not the one the writers anchored (empty when every anchor is in it). Pure.

    An anchor ``(seq, hash)`` must be line ``seq`` of the file, with that hash: a shorter file was
    truncated or replaced by an older copy; another hash there means the chain was rewritten."""
    problems = []
    for key, a in sorted(anchors.items()):
        if a.get("unreadable") or not isinstance(a.get("seq"), int):
            problems.append(f"anchor {key}: unreadable head record on the ledger topic")
            continue
        seq, h = a["seq"], a.get("hash")
        if seq == 0:
            continue
        if seq > len(entries):
            problems.append(
                f"the head anchored by {key} is line {seq} ({str(h)[:16]}…), but the ledger has "
                f"{len(entries)} line(s): it was truncated, emptied or replaced by an older copy"
            )
        elif entries[seq - 1].get("hash") != h:
            problems.append(
                f"ledger line {seq} is not the one anchored by {key} ({str(h)[:16]}…): the ledger was "
                "rewritten (lines removed and the chain re-linked, or the file replaced)"
            )
    return problems


def anchored_head(anchors: Mapping[str, Mapping[str, Any]]) -> tuple[int, str]:
    """(seq, hash) of the furthest anchor (0, GENESIS when none)."""
    best = (0, GENESIS)
    for a in anchors.values():
        if isinstance(a.get("seq"), int) and a["seq"] > best[0]:
            best = (a["seq"], str(a.get("hash")))
    return best


def writer_anchors(kafka: Any, topic: str, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """The anchors a sink starts from; a missing ledger topic stops it (it could not anchor anything)."""
    from sevisflow.core.errors import TerminalError

    anchors = read_anchors(kafka, topic, timeout_s)
    if anchors is None:
        raise TerminalError(
            f"the audit ledger topic {topic} does not exist: create it with `sevisflow topics "
            "apply` ([topics] ledger); the sinks anchor the ledger's head there"
        )
    return anchors


def read_anchors(kafka: Any, topic: str, timeout_s: float = 30.0) -> dict[str, dict[str, Any]] | None:
    """The latest anchor per writer on the ledger topic; None when the topic does not exist."""
    import uuid

    from sevisflow.core.kafka_io import make_consumer, read_topic, topic_partitions

    consumer = make_consumer(kafka, group_id=f"sevisflow-reader-{uuid.uuid4().hex[:12]}")
    try:
        if topic_partitions(consumer, kafka, topic, timeout_s) is None:
            return None
    finally:
        consumer.close()
    return latest_anchors((m.key(), m.value()) for m in read_topic(kafka, topic, timeout_s))


class LedgerWriter:
    """One writer of the ledger (a sink): seals under the lock, refuses a ledger that lost its anchors.

    ``anchors`` are the heads read from the ledger topic at start; after each seal the writer's own
    new head joins them, so a ledger replaced while the sink runs is refused at the next seal too.
    """

    def __init__(
        self, ledger: Ledger, writer: str, org_id: str, anchors: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        self.ledger = ledger
        self.writer = writer
        self.org_id = org_id
        self.anchors: dict[str, Mapping[str, Any]] = anchors_for(anchors or {}, ledger.path)

    def check(self, entries: list[dict[str, Any]]) -> None:
        from sevisflow.core.errors import TerminalError

        problems = check_anchors(entries, self.anchors)
        if problems:
            raise TerminalError(
                f"the audit ledger {self.ledger.path} is not the one anchored on the ledger topic: "
                f"{problems[0]}. Nothing was sealed: restore the ledger from the backup (or find who "
                "changed it); the sink does not extend a ledger it cannot trust"
            )

    def _seal(
        self, sealer: Callable[..., tuple[list[dict[str, Any]], list[dict[str, Any]]]], bd: Any, batch_id: str
    ) -> tuple[bytes, bytes]:
        entries, _ = sealer(_Checked(self.ledger, self.check), bd, batch_id)
        key, value = self._anchor(entries)
        self.anchors[key.decode()] = orjson.loads(value)
        return key, value

    def _anchor(self, entries: list[dict[str, Any]]) -> tuple[bytes, bytes]:
        return (
            anchor_key(self.org_id, self.writer, self.ledger.path),
            anchor_value(entries, self.writer, self.ledger.path),
        )

    def seal_archive(self, bd: Any, batch_id: str) -> tuple[bytes, bytes]:
        """Seal the document + manifest (once) and return the head record (key, value) to publish."""
        return self._seal(seal_archive, bd, batch_id)

    def seal_evidence(self, bd: Any, batch_id: str) -> tuple[bytes, bytes]:
        """Seal the folder's new evidence / state and return the head record (key, value) to publish."""
        return self._seal(seal_evidence, bd, batch_id)

    def head(self) -> tuple[bytes, bytes]:
        """The current head (after checking the anchors) — published at start when the file is ahead."""
        entries = self.ledger.entries()
        self.check(entries)
        return self._anchor(entries)


class _Checked(Ledger):
    """A ledger whose ``seal`` first runs ``guard`` on the entries read under the lock."""

    def __init__(self, inner: Ledger, guard: Callable[[list[dict[str, Any]]], None]) -> None:
        super().__init__(inner.path.parent)
        self._guard = guard

    def seal(
        self, make: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], prechained: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        def guarded(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            self._guard(entries)
            return make(entries)

        return super().seal(guarded, prechained)
