"""Checkpoints of the batcher re-run: where ``verify <BatchID>`` resumes instead of starting from empty.

The batching check re-runs the pure batcher (:func:`sevisflow.processors.batcher.core.apply`) over a
school's inputs. From an empty state that costs the school's whole history before the batch. When verify
has *verified* a batch, it records the replay as it stood right after that batch's ``closed`` event:

* ``state`` — the batcher's :class:`~sevisflow.processors.batcher.core.School`, every field but derived
  caches (fields left out of its equality, rebuilt by the batcher): ``apply`` is a pure function of the
  state and the input, so the state is all a resumed replay needs;
* ``offsets`` — per topic and partition, the first offset *after* the last record of the school the
  replay had applied (on ``sevis.batches``: matched), so a resumed replay reads only from there;
* ``anchors`` — the sha256 of the value of that last applied record (offset - 1), which a resumed
  replay reads again and compares: a topic deleted and re-created, or records removed, do not match;
* ``reproduced`` — how many of the school's batch events the replay had reproduced (for the message).

Nothing else in it depends on when or how far the log was read, so the same close gives the same bytes
(gzip without a time stamp, JSON with sorted keys): ``verify --all`` re-derives every checkpoint from an
empty state and compares.

Files (all 0600, folders 0700), under ``<outbox_dir>/audit/``:

* ``checkpoints/<OrgID>/<BatchID>.json.gz`` — one checkpoint;
* ``checkpoints.jsonl`` — the index: one line per checkpoint written (``org_id``, ``batch_id``, the
  ``closed`` event's position, ``file``, ``sha256`` of the file), hash-chained like the audit ledger
  (:func:`sevisflow.core.ledger.chain`). A checkpoint whose file does not hash to its line, an index whose
  chain is broken, an unreadable file: the checkpoint is not used, verify says why and replays from empty.

Pure apart from :class:`CheckpointStore` (the files).
"""

from __future__ import annotations

import dataclasses
import gc
import gzip
import hashlib
import os
import re
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sevisflow.core.ledger import Ledger, check_chain

FORMAT = 1
AUDIT_DIR = "audit"
INDEX_FILE = "checkpoints.jsonl"
CHECKPOINT_EVERY = 10
"""``verify --all`` writes a checkpoint after every 10th verified batch of a school and after its last one:
a later ``verify <BatchID>`` then re-runs the batcher over at most 10 batches' inputs."""

TopicOffsets = dict[str, dict[int, int]]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, altered, of another format)."""


@dataclass(frozen=True)
class Checkpoint:
    """The batcher replay of one school right after one batch's close (see the module docstring)."""

    org_id: str
    batch_id: str
    closed_topic: str
    closed_partition: int
    closed_offset: int
    closed_ms: int | None
    state: Any  # sevisflow.processors.batcher.core.School
    offsets: TopicOffsets = field(default_factory=dict)
    anchors: dict[str, dict[int, str]] = field(default_factory=dict)
    reproduced: int = 0

    @property
    def label(self) -> str:
        return f"{self.batch_id} ({self.closed_topic}[{self.closed_partition}]@{self.closed_offset})"


# ----------------------------------------------------------------------------- encoding (pure)


def _state_fields(cls_or_state: Any) -> list[str]:
    """The fields that make the state: all but those excluded from comparison (derived caches, rebuilt)."""
    return [f.name for f in dataclasses.fields(cls_or_state) if f.compare]


def state_to_json(state: Any) -> dict[str, Any]:
    """Every field of the batcher's ``School`` (derived caches aside), as plain JSON values."""
    return {n: dict(v) if isinstance(v := getattr(state, n), Mapping) else v for n in _state_fields(state)}


def state_from_json(obj: Mapping[str, Any]) -> Any:
    from sevisflow.processors.batcher.core import School

    if not isinstance(obj, Mapping) or set(obj) != set(_state_fields(School)):
        raise CheckpointError("the batcher state in it does not have the fields of this version's batcher")
    return School(**obj)


def encode(cp: Checkpoint) -> bytes:
    """Deterministic bytes: sorted-key JSON, gzip without a time stamp. Raises :class:`CheckpointError` when
    the state does not come back identical from JSON (it would not resume the same replay)."""
    doc = {
        "format": FORMAT,
        "org_id": cp.org_id,
        "batch_id": cp.batch_id,
        "closed": {"topic": cp.closed_topic, "partition": cp.closed_partition, "offset": cp.closed_offset},
        "closed_ms": cp.closed_ms,
        "state": state_to_json(cp.state),
        "offsets": {t: {str(p): o for p, o in ps.items()} for t, ps in cp.offsets.items()},
        "anchors": {t: {str(p): h for p, h in ps.items()} for t, ps in cp.anchors.items()},
        "reproduced": cp.reproduced,
    }
    try:
        data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise CheckpointError(f"the batcher state is not plain JSON ({exc}): not written") from None
    if _loads(data)["state"] != doc["state"]:
        raise CheckpointError("the batcher state does not survive JSON unchanged: not written")
    return gzip.compress(data, compresslevel=1, mtime=0)


def _loads(data: bytes) -> Any:
    gc.disable()  # millions of small objects: the collector would run over them many times
    try:
        return orjson.loads(data)
    finally:
        gc.enable()


def decode(blob: bytes) -> Checkpoint:
    try:
        doc = _loads(gzip.decompress(blob))
    except (OSError, EOFError, zlib.error, orjson.JSONDecodeError) as exc:
        raise CheckpointError(f"not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint format {doc.get('format') if isinstance(doc, dict) else '?'}, not {FORMAT}")
    try:
        closed = doc["closed"]
        return Checkpoint(
            org_id=doc["org_id"],
            batch_id=doc["batch_id"],
            closed_topic=closed["topic"],
            closed_partition=int(closed["partition"]),
            closed_offset=int(closed["offset"]),
            closed_ms=doc.get("closed_ms"),
            state=state_from_json(doc["state"]),
            offsets={t: {int(p): int(o) for p, o in ps.items()} for t, ps in doc["offsets"].items()},
            anchors={t: {int(p): str(h) for p, h in ps.items()} for t, ps in doc["anchors"].items()},
            reproduced=int(doc.get("reproduced") or 0),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint incomplete ({type(exc).__name__}: {exc})") from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_anchors(cp: Checkpoint, found: Mapping[tuple[str, int, int], str | None]) -> str | None:
    """Why the log no longer holds what the checkpoint was made from (None: it does). ``found``: the value
    sha256 of the records read at ``(topic, partition, offset)``."""
    for topic, parts in sorted(cp.anchors.items()):
        for p, digest in sorted(parts.items()):
            off = cp.offsets.get(topic, {}).get(p)
            if off is None or off < 1:
                return f"checkpoint names a record of {topic}[{p}] without its offset"
            got = found.get((topic, p, off - 1), "absent")
            if got == "absent":
                return (
                    f"{topic}[{p}]@{off - 1}, the last record the checkpoint's replay applied, is no longer on "
                    "the log (retention, deleted records, or a re-created topic)"
                )
            if got != digest:
                return (
                    f"{topic}[{p}]@{off - 1} is not the record the checkpoint's replay applied (another sha256): "
                    "the topic was re-created or rewritten"
                )
    return None


# ----------------------------------------------------------------------------- the files


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(name: str) -> str:
    return _SAFE.sub(lambda m: f"%{ord(m.group()):02X}", name) or "%EMPTY"


class _Index(Ledger):
    """The checkpoint index: the audit ledger's append-under-lock and chain, at its own path."""

    def __init__(self, path: Path) -> None:
        self.path = path


@dataclass
class Found:
    """What :meth:`CheckpointStore.find` found: a checkpoint to resume from, and/or why one was not used."""

    checkpoint: Checkpoint | None = None
    problem: str | None = None  # a checkpoint that exists but cannot be trusted (reported, never used)
    sha256: str | None = None


class CheckpointStore:
    """``<outbox_dir>/audit/``: checkpoint files and their hash-chained index."""

    def __init__(self, outbox_dir: str | Path) -> None:
        self.root = Path(outbox_dir) / AUDIT_DIR
        self.index = _Index(self.root / INDEX_FILE)

    def path_of(self, org_id: str, batch_id: str) -> Path:
        return self.root / "checkpoints" / _safe(org_id) / f"{_safe(batch_id)}.json.gz"

    def lines(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The index's lines and the problems of its chain (empty when intact)."""
        entries = self.index.entries()
        problems, _ = check_chain(entries)
        return entries, [f"checkpoint index line {p.line}: {p.message}" for p in problems]

    def latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(org_id, batch_id) → its latest index line (a checkpoint written again replaces the earlier one)."""
        entries, _ = self.lines()
        return {(str(e.get("org_id")), str(e.get("batch_id"))): e for e in entries if e.get("kind") == "checkpoint"}

    def find(self, org_id: str, topic: str, partition: int, before_offset: int) -> Found:
        """The newest checkpoint of ``org_id`` whose closed event is on ``topic[partition]`` before
        ``before_offset``, its file checked against the index. Nothing usable: ``checkpoint`` None, and
        ``problem`` says why when a checkpoint exists but is not trusted."""
        entries, chain_problems = self.lines()
        if not entries:
            return Found()
        if chain_problems:
            return Found(
                problem=f"{self.index.path}: {chain_problems[0]} (the index was edited): no checkpoint is trusted"
            )
        best: dict[str, Any] | None = None
        for e in self.latest().values():
            if (
                e.get("org_id") == org_id
                and e.get("topic") == topic
                and e.get("partition") == partition
                and isinstance(e.get("offset"), int)
                and e["offset"] < before_offset
                and (best is None or e["offset"] > best["offset"])
            ):
                best = e
        if best is None:
            return Found()
        path = self.root / str(best.get("file"))
        where = f"checkpoint of batch {best.get('batch_id')} ({path})"
        try:
            blob = path.read_bytes()
        except OSError as exc:
            return Found(problem=f"{where} cannot be read ({type(exc).__name__}): it was deleted or moved")
        digest = sha256(blob)
        if digest != best.get("sha256"):
            return Found(
                problem=f"{where} does not hash to the sha256 its index line {best.get('seq')} recorded: it was "
                "altered or truncated"
            )
        try:
            cp = decode(blob)
        except CheckpointError as exc:
            return Found(problem=f"{where}: {exc}")
        if (cp.org_id, cp.batch_id, cp.closed_topic, cp.closed_partition, cp.closed_offset) != (
            org_id,
            best.get("batch_id"),
            topic,
            partition,
            best.get("offset"),
        ):
            return Found(problem=f"{where} names another batch or position than its index line")
        return Found(cp, None, digest)

    def write(self, cp: Checkpoint, by: str, blob: bytes | None = None) -> tuple[Path, str]:
        """Write the checkpoint file (0600, replaced atomically) and append its index line. Returns (path, sha256)."""
        blob = encode(cp) if blob is None else blob
        path = self.path_of(cp.org_id, cp.batch_id)
        for d in (self.root, path.parent.parent, path.parent):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        digest = sha256(blob)
        line = {
            "kind": "checkpoint",
            "org_id": cp.org_id,
            "batch_id": cp.batch_id,
            "topic": cp.closed_topic,
            "partition": cp.closed_partition,
            "offset": cp.closed_offset,
            "file": str(path.relative_to(self.root)),
            "sha256": digest,
            "by": by,
            "written_at_ms": int(time.time() * 1000),
        }
        self.index.seal(lambda _: [line])
        return path, digest


def reconcile(
    store: CheckpointStore, verified: Iterable[Checkpoint], every: int = CHECKPOINT_EVERY
) -> tuple[list[str], list[str]]:
    """``verify --all``: compare every recorded checkpoint with the one re-derived from an empty state, and
    write checkpoints after every ``every``-th verified batch of each school and after its last.

    ``verified``: the re-derived checkpoints of the batches that verified. Returns (problems, notes):
    a problem is a checkpoint altered on disk, one that differs from the re-derived one (forged, or made
    from another log), or an index whose chain is broken (moved aside as ``checkpoints.jsonl.broken-<ms>``);
    each is replaced by the re-derived checkpoint."""
    snaps = {(cp.org_id, cp.batch_id): cp for cp in verified}
    problems: list[str] = []
    notes: list[str] = []
    _, chain_problems = store.lines()
    if chain_problems:
        problems += [f"{store.index.path}: {p}" for p in chain_problems]
        aside = store.index.path.with_name(f"{INDEX_FILE}.broken-{int(time.time() * 1000)}")
        os.replace(store.index.path, aside)
        notes.append(f"checkpoint index with a broken chain moved to {aside}; a new one is started")
        latest: dict[tuple[str, str], dict[str, Any]] = {}
    else:
        latest = store.latest()
    want: dict[tuple[str, str], Checkpoint] = {}
    by_org: dict[str, list[Checkpoint]] = {}
    for cp in snaps.values():
        by_org.setdefault(cp.org_id, []).append(cp)
    for cps in by_org.values():
        cps.sort(key=lambda c: (c.closed_topic, c.closed_partition, c.closed_offset))
        for k, cp in enumerate(cps):
            if (k + 1) % every == 0 or k == len(cps) - 1:
                want[(cp.org_id, cp.batch_id)] = cp
    for key, line in sorted(latest.items()):
        path = store.root / str(line.get("file"))
        name = f"checkpoint of batch {key[1]} ({path})"
        rewrite = False
        if not path.is_file():
            notes.append(f"{name} is gone (deleted): written again")
            rewrite = True
        elif sha256(path.read_bytes()) != line.get("sha256"):
            problems.append(f"{name} does not hash to its index line {line.get('seq')}: it was altered or truncated")
            rewrite = True
        again = snaps.get(key)
        if again is not None:
            blob = encode(again)
            if sha256(blob) != line.get("sha256"):
                problems.append(
                    f"{name} (index line {line.get('seq')}) differs from the one re-derived from the log: it was "
                    "forged, or made from another log"
                )
                rewrite = True
            if rewrite:
                store.write(again, "verify --all", blob)
        want.pop(key, None)
    for cp in want.values():
        store.write(cp, "verify --all")
    written = len(want)
    if written:
        notes.append(f"{written} checkpoint(s) written under {store.root}")
    return problems, notes
