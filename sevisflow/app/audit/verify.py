"""``verify``: prove an archived batch document by re-deriving it from the retained log.

For one batch, the checks (each ``ok``, ``failed`` with the first difference, or ``skipped``
with the reason), from the file back to the SIS:

1. ``archive``  — the outbox folder's document hashes to the manifest's ``sha256`` and the
   manifest names this batch;
2. ``render``   — the ``closed`` event on ``sevis.batches``, rendered with the XML sink's own
   pure renderer (:func:`sevisflow.sinks.xml.document.check_document`: the student document, or for an
   exchange program's batch the EV document) and the configured XSDs, gives the archived bytes (sha256
   equal); else the first differing byte, its line/column and element;
3. ``batching`` — the batcher's pure state machine (:func:`sevisflow.processors.batcher.core.apply`)
   re-run (from an empty state, or from a :class:`~sevisflow.app.audit.checkpoint.Checkpoint` recorded
   after an earlier verified batch) over the retained ``sevis.events``, ``sevis.batch.commands`` and ``sevis.results``
   of the school reproduces every ``sevis.batches`` event up to and including this batch's
   ``closed`` event, identical. The three input topics are separate logs, so their
   interleaving is not recorded; the replay follows each topic's order and at every step
   takes the input whose outputs are the next recorded ones (:func:`guided_batcher_replay`),
   which proves the recorded stream is an execution of the pure batcher over those inputs;
4. ``events``   — normalize + sevis_events (:class:`sevisflow.processors.sevis_events.pure.PurePipeline`)
   re-run over the retained change topics re-derive every SEVIS event the batch's records
   were made of, field for field;
5. ``sources``  — every lineage position of the batch's records still exists on its change
   topic, with the LSN and transaction id the lineage recorded (for an event a DSO reported with
   ``sevisflow student report``: its ``report`` command is still on ``sevis.batch.commands``).

``verify --all`` runs this for every batch of the outbox; checks that every closed batch on
``sevis.batches`` is in the outbox (or, invalid, in the quarantine), that every batch SEVIS
answered (``sevis.results``) is in ``uploaded/`` or ``processed/``, and the audit ledger
(:mod:`sevisflow.core.ledger`): its hash chain, the heads the sinks anchored on the ledger topic,
every sealed file (document, manifest, POST evidence, SEVIS's answers, transaction log, PDFs) and
state (a folder moved backwards), and that every outbox batch was sealed. It only reads: the
sinks seal. A check that cannot run is ``skipped`` and makes the run *incomplete* (not ok to an
auditor unless accepted with ``--allow-skipped``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sevisflow.app.audit.checkpoint import Checkpoint
from sevisflow.app.audit.decode import Decoded
from sevisflow.core.ledger import Ledger, check_chain
from sevisflow.core.serde import registry

EVENT_SCHEMA = "sevisflow.events.SevisEvent"
BATCH_SCHEMA = "sevisflow.batches.BatchEvent"
COMMAND_SCHEMA = "sevisflow.commands.BatchCommand"
RESULT_SCHEMA = "sevisflow.results.SevisResult"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Check:
    name: str
    status: str  # ok | failed | skipped
    message: str
    requested: bool = False  # skipped because the auditor asked (--no-sources), not because it could not run

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": self.status,
            "message": self.message,
            **({"requested": True} if self.requested else {}),
        }


@dataclass
class Verdict:
    batch_id: str
    checks: list[Check] = field(default_factory=list)
    location: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.status != "failed" for c in self.checks) and any(c.status == "ok" for c in self.checks)

    @property
    def complete(self) -> bool:
        """Every check ran, except those the auditor turned off (``--no-sources``)."""
        return all(c.status != "skipped" or c.requested for c in self.checks)

    def add(self, name: str, status: str, message: str, requested: bool = False) -> None:
        self.checks.append(Check(name, status, message, requested and status == "skipped"))

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "ok": self.ok,
            "location": self.location,
            "seconds": round(self.seconds, 4),
            "checks": [c.to_json() for c in self.checks],
        }


# ----------------------------------------------------------------------------- differences


def first_difference(expected: bytes, actual: bytes) -> str:
    """Where two documents first differ: byte offset, line:column and the element there (no values)."""
    n = min(len(expected), len(actual))
    i = next((k for k in range(n) if expected[k] != actual[k]), n)
    if i == n and len(expected) == len(actual):
        return "identical"
    line = actual.count(b"\n", 0, i) + 1
    col = i - (actual.rfind(b"\n", 0, i) + 1) + 1
    where = element_at(actual, line) or element_at(expected, line) or "?"
    if i == n:
        longer = "re-derived" if len(expected) > len(actual) else "archived"
        return (
            f"the {longer} document is longer: the first {n} bytes agree, then it goes on "
            f"({len(expected)} vs {len(actual)} bytes; line {line}, element {where})"
        )
    return (
        f"first difference at byte {i} (line {line}, column {col}) in element {where}: "
        f"re-derived has {expected[i : i + 1]!r}, archived has {actual[i : i + 1]!r} "
        f"(re-derived {len(expected)} bytes, archived {len(actual)} bytes)"
    )


def element_at(xml: bytes, line: int) -> str | None:
    """The XPath of the last element that starts at or before ``line`` (None when not parseable)."""
    try:
        from lxml import etree

        root = etree.fromstring(xml, parser=etree.XMLParser(resolve_entities=False, recover=True))
    except Exception:  # noqa: BLE001 - anything unparseable: no element to name
        return None
    if root is None:
        return None
    best = None
    for el in root.iter():
        if isinstance(el.tag, str) and el.sourceline is not None and el.sourceline <= line:
            best = el
    return root.getroottree().getpath(best) if best is not None else None


def first_json_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The JSON path where two values first differ (None when equal). Values are not shown."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                return f"{path}.{k}: only in the recorded value"
            if k not in b:
                return f"{path}.{k}: only in the re-derived value"
            d = first_json_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_json_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        if len(a) != len(b):
            return f"{path}: {len(a)} items re-derived, {len(b)} recorded"
        return None
    if isinstance(a, str) and isinstance(b, str) and a[:1] in "{[" and b[:1] in "{[":
        try:
            return first_json_difference(orjson.loads(a), orjson.loads(b), path + "(json)")
        except orjson.JSONDecodeError:
            pass
    return None if a == b else f"{path or '.'}: values differ"


# ----------------------------------------------------------------------------- batching (pure)


@dataclass
class BatcherReplay:
    """Outcome of :func:`guided_batcher_replay` for one school."""

    reproduced: int  # recorded sevis.batches events reproduced, in order (those before a checkpoint included)
    recorded: int  # recorded sevis.batches events of the school (those before a checkpoint included)
    closed: dict[str, dict[str, Any]]  # batch_id → reproduced closed event
    divergence: str | None  # why the replay stopped early
    snapshots: dict[str, Checkpoint] = field(default_factory=dict)  # batch_id → the replay right after its close
    resumed_from: Checkpoint | None = None  # the checkpoint it started from (None: from an empty state)


def _raw(d: Decoded, schema: str) -> dict[str, Any]:
    return registry().decode(d.raw or b"", schema)


def guided_batcher_replay(
    org_id: str,
    events: Iterable[Decoded],
    commands: Iterable[Decoded],
    results: Iterable[Decoded],
    batches: Iterable[Decoded],
    until_batch: str | None = None,
    start: Checkpoint | None = None,
    snapshots: bool = False,
    member_school: bool = False,
) -> BatcherReplay:
    """Re-run :func:`sevisflow.processors.batcher.core.apply` over the school's inputs and match the recorded output.

    Each input topic is taken in its own log order; at each step, of the three topics' next
    inputs the first (by log timestamp) whose published events equal the next recorded
    events is applied; when none publishes anything an input with no output is applied;
    otherwise the replay has diverged and says where. Stops after ``until_batch``'s closed
    event when given. Pure apart from the batcher it calls.

    ``start``: resume from a checkpoint (its state; records before its offsets are left out, whatever
    was read); None = from an empty state. ``snapshots``: record a :class:`Checkpoint` right after every
    reproduced closed event (its offsets: per partition, just after the last record of the school applied
    or matched, so they do not depend on how far the log was read). ``member_school``: ``org_id`` is a member school
    ([[schools]]), whose BatchIDs the batcher makes in the member form, as the batcher's settings say.
    """
    from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, ResultIn, School, apply

    begin: Mapping[str, Mapping[int, int]] = start.offsets if start is not None else {}

    def mine(ds: Iterable[Decoded], schema: str) -> list[tuple[int, dict[str, Any], Decoded]]:
        out = []
        for d in sorted(ds, key=lambda x: (x.partition, x.offset)):
            if d.raw is None or d.schema != schema or d.offset < begin.get(d.topic, {}).get(d.partition, 0):
                continue
            rec = _raw(d, schema)
            if rec.get("org_id") == org_id:
                out.append((d.timestamp_ms or 0, rec, d))
        return out

    queues: list[list[Any]] = [
        [(ts, EventIn(r, ts), d) for ts, r, d in mine(events, EVENT_SCHEMA)],
        [(ts, CommandIn(r, log_ms=ts, member_school=member_school), d) for ts, r, d in mine(commands, COMMAND_SCHEMA)],
        [(ts, ResultIn(r, ts), d) for ts, r, d in mine(results, RESULT_SCHEMA)],
    ]
    rec_d = mine(batches, BATCH_SCHEMA)
    recorded = [r for _, r, _ in rec_d]
    heads = [0, 0, 0]
    state = start.state if start is not None else School(org_id=org_id)
    before = start.reproduced if start is not None else 0
    pos = 0
    closed: dict[str, dict[str, Any]] = {}
    snaps: dict[str, Checkpoint] = {}
    # per topic/partition: just after the last record of the school applied (matched), and that record's sha256
    last: dict[tuple[str, int], tuple[int, str | None]] = {}
    if start is not None:
        for t, ps in start.offsets.items():
            for p, o in ps.items():
                last[(t, p)] = (o, start.anchors.get(t, {}).get(p))
    names = ("sevis.events", "sevis.batch.commands", "sevis.results")
    while any(heads[i] < len(queues[i]) for i in range(3)):
        if until_batch and until_batch in closed:
            break
        order = sorted((queues[i][heads[i]][0], i) for i in range(3) if heads[i] < len(queues[i]))
        silent = None
        chosen = None
        tried = []
        for _, i in order:
            inp = queues[i][heads[i]][1]
            nxt_ev = recorded[pos] if pos < len(recorded) else None
            if (
                i == 1
                and nxt_ev
                and nxt_ev["type"] == "command_rejected"
                and nxt_ev.get("command_id") == inp.command.get("command_id")
            ):
                # who may act and the batcher's clock are settings of the day, not in the log: a refusal the
                # batcher recorded is taken as recorded (a refusal sends nothing to SEVIS)
                inp = CommandIn(
                    inp.command, log_ms=inp.log_ms, refused=nxt_ev.get("reason"), member_school=member_school
                )
            new, outs = apply(state, inp)
            pubs = [o.event for o in outs if isinstance(o, Publish)]
            if pubs and pubs == recorded[pos : pos + len(pubs)]:
                chosen = (i, new, pubs)
                break
            if not pubs and silent is None:
                silent = (i, new, pubs)
            tried.append((i, pubs))
        chosen = chosen or silent
        if chosen is None:
            nxt = recorded[pos] if pos < len(recorded) else None
            want = (
                f"recorded event #{before + pos + 1} ({nxt['type']}, revision {nxt['revision']})"
                if nxt
                else "no further recorded event"
            )
            got = []
            for i, pubs in tried:
                d = first_json_difference(pubs[0], nxt) if nxt else None
                got.append(
                    f"the next {names[i]} input gives {pubs[0]['type']} revision {pubs[0]['revision']}"
                    + (f" (first difference at {d})" if d else "")
                )
            return BatcherReplay(
                before + pos,
                before + len(recorded),
                closed,
                f"cannot reproduce {want}: " + "; ".join(got),
                snaps,
                start,
            )
        i, state, pubs = chosen
        applied = queues[i][heads[i]][2]
        last[(applied.topic, applied.partition)] = (applied.offset + 1, applied.value_sha256)
        heads[i] += 1
        for _, _, m in rec_d[pos : pos + len(pubs)]:
            last[(m.topic, m.partition)] = (m.offset + 1, m.value_sha256)
        for k, ev in enumerate(pubs):
            if ev["type"] == "closed" and ev.get("batch_id"):
                closed[ev["batch_id"]] = ev
                if snapshots:
                    at = rec_d[pos + k][2]
                    snaps[ev["batch_id"]] = _snapshot(org_id, ev["batch_id"], at, state, last, before + pos + len(pubs))
        pos += len(pubs)
    return BatcherReplay(before + pos, before + len(recorded), closed, None, snaps, start)


def _snapshot(
    org_id: str, batch_id: str, at: Decoded, state: Any, last: Mapping[tuple[str, int], tuple[int, str | None]], n: int
) -> Checkpoint:
    offsets: dict[str, dict[int, int]] = {}
    anchors: dict[str, dict[int, str]] = {}
    for (t, p), (o, digest) in sorted(last.items()):
        offsets.setdefault(t, {})[p] = o
        if digest is not None:
            anchors.setdefault(t, {})[p] = digest
    return Checkpoint(org_id, batch_id, at.topic, at.partition, at.offset, at.timestamp_ms, state, offsets, anchors, n)


# ----------------------------------------------------------------------------- events (pure pipeline)


def stage_feed(
    changes: Iterable[Decoded], transactions: Iterable[Decoded] = (), input_topics: Iterable[str] | None = None
) -> list[Decoded]:
    """The records the normalize stage consumes, in one order it could have consumed them.

    The stage reads every mapped change topic *and* the transaction topic (its BEGIN/END
    markers decide when a transaction is complete and in which order transactions are
    applied; without them every streamed row change waits for an END forever). Kafka
    guarantees order only within a partition, so the feed keeps each partition's offset
    order and merges the partitions by log timestamp (ties by topic, partition): the order
    the records were written in, as a live consumer sees them. ``input_topics`` limits the
    change topics to the stage's inputs (the mapping's tables); None = all of them.
    """
    import heapq

    wanted = set(input_topics) if input_topics is not None else None
    parts: dict[tuple[str, int], list[Decoded]] = {}
    for d in changes:
        if wanted is None or d.topic in wanted:
            parts.setdefault((d.topic, d.partition), []).append(d)
    for d in transactions:
        parts.setdefault((d.topic, d.partition), []).append(d)
    heap: list[tuple[int, str, int, int]] = []
    for (topic, part), lst in parts.items():
        lst.sort(key=lambda x: x.offset)
        heap.append((lst[0].timestamp_ms or 0, topic, part, 0))
    heapq.heapify(heap)
    out: list[Decoded] = []
    while heap:
        _, topic, part, i = heapq.heappop(heap)
        lst = parts[(topic, part)]
        out.append(lst[i])
        if i + 1 < len(lst):
            heapq.heappush(heap, (lst[i + 1].timestamp_ms or 0, topic, part, i + 1))
    return out


def rederive_events(
    changes: Iterable[Decoded],
    mapping: Any,
    org_id: str,
    tx_topic: str | None,
    transactions: Iterable[Decoded] = (),
    input_topics: Iterable[str] | None = None,
    timezone: str = "UTC",
    ev_programs: Mapping[str, str] | None = None,
    schools: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """event_id → SevisEvent re-derived by normalize + sevis_events from the change records (Avro-canonical).

    ``transactions`` are the records of ``tx_topic`` (None when the connector writes no
    transaction metadata, as the stage then runs without it); see :func:`stage_feed`.
    """
    from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline

    # as sevis_events derives: the school's F/M events, and its exchange programs' EV events (``ev_programs``:
    # SIS program code → program number, from [[exchange_programs]]); member schools' F/M events under their
    # OrgIDs (``schools``: SIS school code → OrgID, from [[schools]])
    pipe = PurePipeline(
        mapping,
        org_id=org_id,
        tx_topic=tx_topic,
        timezone=timezone,
        ev_programs=dict(ev_programs or {}),
        schools=dict(schools or {}),
    )
    out = PureOutput()
    txs = [d for d in transactions if d.topic == tx_topic] if tx_topic else []
    for d in stage_feed(changes, txs, input_topics):
        pipe.feed_one(d.topic, _key_bytes(d), d.raw, out, d.partition, d.offset)
    pipe.finish(out)  # a snapshot with nothing streamed after it is applied at the end, as the stage does
    events = {}
    for e in out.events:
        canon = registry().decode(registry().encode(EVENT_SCHEMA, e), EVENT_SCHEMA)
        events[canon["event_id"]] = canon
    return events


def _key_bytes(d: Decoded) -> bytes | None:
    if d.raw_key is not None:
        return d.raw_key
    return orjson.dumps(d.key) if d.key is not None else None


# ----------------------------------------------------------------------------- the whole verification


@dataclass
class VerifyContext:
    """Everything verify reads, loaded once: decoded topics, outbox, XSD schema, optional pipeline pieces."""

    batches: list[Decoded]
    events: list[Decoded]
    commands: list[Decoded]
    results: list[Decoded]
    changes: list[Decoded]
    outbox: Any  # sevisflow.sinks.outbox.Outbox
    schema: Any | None  # sevisflow.sinks.xml.xsd.StudentSchema, None = no XSDs
    mapping: Any | None = None  # sevisflow.processors.normalize.mapping.Mapping, None = skip the events check
    tx_topic: str | None = None  # the transaction topic normalize reads (None: no transaction metadata)
    transactions: list[Decoded] = field(default_factory=list)  # its records
    input_topics: list[str] | None = None  # the change topics normalize reads (None: every change topic)
    timezone: str = "UTC"  # school.timezone: sevis_events dates an I-20 by the commit's local day
    ev_programs: dict[str, str] = field(default_factory=dict)  # SIS program code → program number (EV batches)
    schools: dict[str, str] = field(default_factory=dict)  # member schools: SIS school code → OrgID ([[schools]])
    main_org: str = ""  # school.org_id: with member schools, one run from it derives every school's F/M events
    org_scope: str | None = None  # verify <BatchID>: re-derive the events of this school only (None: all)
    skip_reasons: dict[str, str] = field(default_factory=dict)
    requested_skips: set[str] = field(default_factory=set)  # checks the auditor turned off (not failures)
    report_skips: dict[str, str] = field(default_factory=dict)  # topics that could not be read: what is not checked
    resume: Checkpoint | None = None  # the batcher re-run of its school starts from it (None: from empty)
    snapshots: bool = False  # record the batcher re-run after every close (checkpoints to write)
    _closed: dict[str, Decoded] | None = None
    _replays: dict[str, BatcherReplay] = field(default_factory=dict)
    _events: dict[str, dict[str, Any]] | None = None

    def closed_events(self) -> dict[str, Decoded]:
        if self._closed is None:
            self._closed = {}
            for d in self.batches:
                if d.schema == BATCH_SCHEMA and isinstance(d.value, dict) and d.value.get("type") == "closed":
                    self._closed.setdefault(d.value.get("batch_id") or "", d)
        return self._closed

    def replay_for(self, org_id: str) -> BatcherReplay:
        if org_id not in self._replays:
            start = self.resume if self.resume is not None and self.resume.org_id == org_id else None
            self._replays[org_id] = guided_batcher_replay(
                org_id,
                self.events,
                self.commands,
                self.results,
                self.batches,
                start=start,
                snapshots=self.snapshots,
                member_school=org_id in self.schools.values(),
            )
        return self._replays[org_id]

    def reported_commands(self) -> set[str]:
        """Ids of the retained ``report`` commands (DSO-reported events have no SIS change behind them)."""
        return {
            cid
            for d in self.commands
            if d.schema == COMMAND_SCHEMA
            and isinstance(d.value, dict)
            and d.value.get("kind") == "report"
            and isinstance(cid := d.value.get("command_id"), str)
        }

    def rederived_events(self) -> dict[str, dict[str, Any]]:
        if self._events is None:
            # one run per school: it derives the school's F/M events and its exchange programs' EV events
            programs, members = set(self.ev_programs.values()), set(self.schools.values())
            orgs = {str(d.value.get("org_id") or "") for d in self.events if isinstance(d.value, dict)} - programs
            orgs -= members  # a member school's events come from the main school's run (routed by school code)
            if members and self.main_org:
                orgs.add(self.main_org)
            scope = self.main_org if self.org_scope in members else self.org_scope
            if scope in orgs:
                orgs = {scope}
            self._events = {}
            for org in sorted(o for o in orgs if o):
                self._events.update(
                    rederive_events(
                        self.changes,
                        self.mapping,
                        org,
                        self.tx_topic,
                        self.transactions,
                        self.input_topics,
                        self.timezone,
                        self.ev_programs,
                        self.schools,
                    )
                )
        return self._events


@dataclass
class _Closed:
    """The batch's ``closed`` event as the checks read it: where it is on the log, its value, its records."""

    ref: str
    event: dict[str, Any]
    records: list[dict[str, Any]]


def verify_batch(batch_id: str, ctx: VerifyContext) -> Verdict:
    """Run the checks of the module docstring for one batch, each in its own function below."""
    t0 = time.perf_counter()
    v = Verdict(batch_id)
    archived = _check_archive(v, batch_id, ctx)
    found = ctx.closed_events().get(batch_id)
    if found is None:
        v.add(
            "render",
            "failed",
            "no 'closed' event for this BatchID on the batches topic (retention, or not produced by this pipeline)",
        )
        v.seconds = time.perf_counter() - t0
        return v
    event = _raw(found, BATCH_SCHEMA)
    closed = _Closed(found.ref, event, orjson.loads(event.get("records_json") or "[]"))
    v.add("render", *_check_render(ctx, closed, archived))
    v.add("batching", *_check_batching(ctx, batch_id, closed))
    v.add("events", *_check_events(ctx, closed))
    v.add("sources", *_check_sources(ctx, closed))
    for c in v.checks:
        c.requested = c.status == "skipped" and c.name in ctx.requested_skips
    v.seconds = time.perf_counter() - t0
    return v


def _check_archive(v: Verdict, batch_id: str, ctx: VerifyContext) -> bytes | None:
    """1. archive: the outbox document hashes to its manifest's sha256. Returns the archived bytes (if any)."""
    bd = ctx.outbox.find(batch_id)
    if bd is None:
        q = ctx.outbox.find_quarantined(batch_id)
        v.add(
            "archive",
            "failed",
            "not in the outbox" + (f" (quarantined at {q}: it never validated, so it was never uploaded)" if q else ""),
        )
        return None
    v.location = f"{bd.day}/{bd.state}"
    try:
        manifest = bd.manifest()
    except (OSError, ValueError) as exc:
        manifest = None
        v.add("archive", "failed", f"manifest.json missing or unreadable ({type(exc).__name__})")
    xml_path = bd.path / ((manifest or {}).get("file") or bd.xml_path.name)
    if not xml_path.exists():
        v.add("archive", "failed", f"document {xml_path.name} is missing from {bd.path}")
        return None
    archived: bytes = xml_path.read_bytes()
    if manifest is None:
        return archived
    digest = sha256(archived)
    if manifest.get("batch_id") != batch_id:
        v.add("archive", "failed", f"manifest names batch {manifest.get('batch_id')}, not {batch_id}")
    elif manifest.get("sha256") != digest:
        v.add(
            "archive",
            "failed",
            f"document sha256 {digest} does not match the manifest's "
            f"{manifest.get('sha256')}: the archived file was altered",
        )
    else:
        v.add("archive", "ok", f"sha256 {digest} matches the manifest")
    return archived


def _check_render(ctx: VerifyContext, closed: _Closed, archived: bytes | None) -> tuple[str, str]:
    """2. render: the closed event through the XML sink's own renderer gives the archived bytes."""
    if ctx.schema is None:
        return "skipped", ctx.skip_reasons.get("render", "no SEVIS XSDs configured")
    from sevisflow.sinks.xml.document import check_document
    from sevisflow.sinks.xml.render import ClosedBatch

    rendered = check_document(ClosedBatch.from_event(closed.event, closed.records), ctx.schema)[0].xml
    if archived is None:
        return "skipped", f"nothing archived to compare with (re-derived sha256 {sha256(rendered)})"
    if rendered == archived:
        return "ok", f"re-rendered from {closed.ref}: identical, sha256 {sha256(rendered)}"
    return "failed", (
        f"re-rendered from {closed.ref} (sha256 {sha256(rendered)}) differs from "
        f"the archive: {first_difference(rendered, archived)}"
    )


def _check_batching(ctx: VerifyContext, batch_id: str, closed: _Closed) -> tuple[str, str]:
    """3. batching: the pure batcher re-run over the school's retained inputs reproduces the closed event."""
    if "batching" in ctx.skip_reasons:
        return "skipped", ctx.skip_reasons["batching"]
    event, records = closed.event, closed.records
    rep = ctx.replay_for(event["org_id"])
    got = rep.closed.get(batch_id)
    if got is not None and got == event:
        n_ev = len({e for r in records for e in r.get("event_ids") or []})
        how = (
            f", resumed from the checkpoint after batch {rep.resumed_from.label}"
            if rep.resumed_from is not None
            else ", from an empty state"
        )
        return "ok", (
            f"the batcher re-run over the retained events/commands/results reproduces "
            f"the closed event ({len(records)} records from {n_ev} events; "
            f"{rep.reproduced} of {rep.recorded} batch events of {event['org_id']} reproduced{how})"
        )
    if got is not None:
        return "failed", f"re-derived closed event differs: {first_json_difference(got, event)}"
    return "failed", (
        f"the batcher re-run stopped after {rep.reproduced} of {rep.recorded} "
        f"recorded batch events: {rep.divergence or 'this batch was never closed'}"
    )


def _check_events(ctx: VerifyContext, closed: _Closed) -> tuple[str, str]:
    """4. events: every SIS-derived event of the batch is re-derived identically from the change topics."""
    if ctx.mapping is None or "events" in ctx.skip_reasons or not ctx.changes:
        return "skipped", ctx.skip_reasons.get(
            "events",
            "no mapping file: events not re-derived"
            if ctx.mapping is None
            else "no change topics retained: events not re-derived",
        )
    recorded: dict[str, dict[str, Any]] = {}
    for d in ctx.events:
        if d.schema == EVENT_SCHEMA and d.raw is not None:
            e = _raw(d, EVENT_SCHEMA)
            recorded.setdefault(e["event_id"], e)
    derived = ctx.rederived_events()
    wanted = [e for r in closed.records for e in r.get("event_ids") or []]
    reported = ctx.reported_commands()
    problems: list[str] = []
    dso = 0
    for eid in wanted:
        rec = recorded.get(eid)
        if rec is None and eid in reported:
            dso += 1  # reported by a DSO with `sevisflow student report`: the command is the source
        elif rec is None:
            problems.append(f"event {eid} is not on the events topic")
        elif rec.get("origin") == "dso":
            dso += 1  # added by a DSO with the CLI: no SIS change to re-derive it from
        elif eid not in derived:
            problems.append(f"event {eid} is not re-derived from the retained change topics")
        else:
            diff = first_json_difference(derived[eid], rec)
            if diff:
                problems.append(f"event {eid} re-derived differently at {diff}")
    if problems:
        return "failed", f"{len(problems)} of {len(wanted)} events: " + "; ".join(problems[:3])
    return "ok", (
        f"all {len(wanted) - dso} SIS-derived events re-derived identically from the "
        f"change topics" + (f" ({dso} DSO-added)" if dso else "")
    )


def _check_sources(ctx: VerifyContext, closed: _Closed) -> tuple[str, str]:
    """5. sources: every lineage position is still on its change topic with the recorded LSN and txId."""
    if not ctx.changes:
        return "skipped", ctx.skip_reasons.get("sources", "no change topics retained")
    index = {(d.topic, d.partition, d.offset): d for d in ctx.changes}
    missing: list[str] = []
    mismatch: list[str] = []
    n = 0
    reported = ctx.reported_commands()
    for r in closed.records:
        for p in r.get("lineage") or []:
            n += 1
            if p.get("command_id"):  # a DSO's report: the command must still be on the commands topic
                if p["command_id"] not in reported:
                    missing.append(f"command {p['command_id']}")
                continue
            d = index.get((p.get("topic"), p.get("partition"), p.get("offset")))
            if d is None:
                missing.append(f"{p.get('topic')}[{p.get('partition')}]@{p.get('offset')}")
                continue
            src = (d.value or {}).get("source") or {} if isinstance(d.value, dict) else {}
            if (p.get("lsn") is not None and src.get("lsn") != p.get("lsn")) or (
                p.get("tx_id") is not None and src.get("txId") != p.get("tx_id")
            ):
                mismatch.append(d.ref)
    if missing or mismatch:
        return "failed", (
            f"{len(missing)} lineage position(s) not retained ({', '.join(missing[:3])}), "
            f"{len(mismatch)} with another LSN/txId ({', '.join(mismatch[:3])})"
        )
    return "ok", f"all {n} source positions found on the change topics with their LSN/txId"


@dataclass
class AllReport:
    verdicts: list[Verdict]
    missing: list[str]  # closed on the topic, in neither outbox nor quarantine
    chain_problems: list[str]  # the ledger: chain, anchors, sealed files and states
    head: str
    answered: list[str] = field(default_factory=list)  # SEVIS has it, but the folder is not where it must be
    skipped: list[str] = field(default_factory=list)  # whole-outbox checks that could not run, with the reason
    anchored: tuple[int, str] | None = None  # the furthest head anchored on the ledger topic
    unanchored: int = 0  # ledger lines after the anchored head (a sink between sealing and anchoring)
    expected_head_found: bool | None = None
    checkpoint_problems: list[str] = field(default_factory=list)  # verify's own checkpoints altered or forged
    checkpoint_notes: list[str] = field(default_factory=list)  # checkpoints written, deleted ones written again

    @property
    def ok(self) -> bool:
        """Nothing failed (checks that could not run aside: see :attr:`complete`)."""
        return (
            all(v.ok for v in self.verdicts)
            and not self.missing
            and not self.chain_problems
            and not self.answered
            and not self.checkpoint_problems
            and self.expected_head_found is not False
        )

    @property
    def complete(self) -> bool:
        """Every check ran (a check the auditor turned off, e.g. ``--no-sources``, does not count)."""
        return not self.skipped and all(v.complete for v in self.verdicts)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "complete": self.complete,
            "batches": [v.to_json() for v in self.verdicts],
            "missing": self.missing,
            "answered_problems": self.answered,
            "skipped": self.skipped,
            "ledger": {
                "head": self.head,
                "problems": self.chain_problems,
                "anchored": {"seq": self.anchored[0], "hash": self.anchored[1]} if self.anchored else None,
                "unanchored_lines": self.unanchored,
                "expected_head_found": self.expected_head_found,
            },
            "checkpoints": {"problems": self.checkpoint_problems, "notes": self.checkpoint_notes},
        }


def answered_batches(results: Iterable[Decoded]) -> dict[str, str]:
    """batch_id → where SEVIS's first answer for it is kept (``sevis.results[p]@o``)."""
    out: dict[str, str] = {}
    for d in results:
        if d.schema == RESULT_SCHEMA and isinstance(d.value, dict) and d.value.get("batch_id"):
            out.setdefault(d.value["batch_id"], d.ref)
    return out


def _ledger_problems(entries: list[dict[str, Any]], ob: Any, by_id: Mapping[str, Any]) -> list[str]:
    """Every sealed file and state against the outbox; every outbox batch against the ledger."""
    from sevisflow.core.ledger import STATE_RANK, evidence_files, file_sha256, sealed_by_batch

    out: list[str] = []
    sealed = sealed_by_batch(entries)
    for bid, s in sealed.items():
        lines = ", ".join(str(n) for n in s["lines"][:3])
        bd = ob.find(bid)
        if bd is None:
            where = (
                "is in the quarantine now: a batch the XML sink filed as valid was moved there"
                if ob.find_quarantined(bid) is not None
                else "is no longer in the outbox: its folder was deleted or moved out"
            )
            out.append(f"sealed batch {bid} (ledger line {lines}) {where}")
            continue
        a = s["archive"]
        if a is not None:
            mpath, xpath = bd.path / "manifest.json", bd.path / (a.get("file") or bd.xml_path.name)
            if not mpath.exists() or file_sha256(mpath) != a.get("manifest_sha256"):
                out.append(
                    f"sealed batch {bid}: manifest.json differs from the one sealed on ledger line {a.get('seq')}"
                )
            if not xpath.exists() or file_sha256(xpath) != a.get("xml_sha256"):
                out.append(
                    f"sealed batch {bid}: the document differs from the one sealed on ledger line {a.get('seq')}"
                )
        else:
            out.append(f"batch {bid}: its evidence is sealed (ledger line {lines}) but its document never was")
        for rel, digest in sorted(s["files"].items()):
            p = bd.path / rel
            if not p.is_file():
                out.append(f"sealed batch {bid}: {rel} is gone (sealed on the ledger)")
            elif file_sha256(p) != digest:
                out.append(f"sealed batch {bid}: {rel} differs from the copy sealed on the ledger")
        if s["state"] and STATE_RANK.get(bd.state, 0) < STATE_RANK[s["state"]]:
            out.append(
                f"batch {bid} was sealed in {s['state']}/ but its folder is in {bd.day}/{bd.state}/: it was "
                "moved backwards (the SEVIS sink refuses to post it again)"
            )
        extra = sorted(set(evidence_files(bd.path, bd.xml_path.name)) - set(s["files"]))
        if extra:
            out.append(
                f"batch {bid}: {', '.join(extra[:3])}{' …' if len(extra) > 3 else ''} not sealed (added by "
                "hand, or the SEVIS sink stopped before sealing it: it seals leftovers when it starts)"
            )
    for bid in sorted(set(by_id) - set(sealed)):
        out.append(
            f"batch {bid} is in the outbox ({by_id[bid].day}/{by_id[bid].state}) but was never sealed: the XML "
            "sink seals every batch it files, so this folder was put there by hand (or before sealing existed)"
        )
    return out


def verify_all(
    ctx: VerifyContext,
    ledger: Ledger,
    expect_head: str | None = None,
    progress: Callable[[Verdict], None] | None = None,
    anchors: Mapping[str, Mapping[str, Any]] | None = None,
    anchored_as: str | None = None,
) -> AllReport:
    """Every outbox batch, every closed batch, every batch SEVIS answered, and the ledger against its anchors.

    Read-only: the sinks seal (see :mod:`sevisflow.core.ledger`). ``anchors`` are the heads read from
    the ledger topic (None when it could not be read: that check is then reported as skipped);
    ``anchored_as`` the path the sinks wrote the ledger at, when this is a copy elsewhere."""
    from sevisflow.core.ledger import anchored_head, anchors_for, check_anchors
    from sevisflow.sinks.outbox import STATES

    ob = ctx.outbox
    in_outbox = [bd for st in STATES for bd in ob.batches(st)]
    by_id: dict[str, Any] = {}
    for bd in in_outbox:
        try:
            bid = bd.manifest().get("batch_id") or bd.name
        except (OSError, ValueError):
            bid = bd.name
        by_id[bid] = bd
    ids = sorted(set(by_id) | set(ctx.closed_events()))
    verdicts = []
    for bid in ids:
        v = verify_batch(bid, ctx)
        verdicts.append(v)
        if progress:
            progress(v)
    missing = [bid for bid in ctx.closed_events() if bid not in by_id and ob.find_quarantined(bid) is None]
    quarantined = [v.batch_id for v in verdicts if ob.find(v.batch_id) is None and ob.find_quarantined(v.batch_id)]
    # quarantined batches are never uploaded: no archive to prove; but they must really be invalid (below)
    verdicts = [v for v in verdicts if v.batch_id not in quarantined]
    skipped = [f"{name}: {why}" for name, why in sorted(ctx.report_skips.items())]

    # every batch SEVIS answered must be in uploaded/ or processed/ (a crash may leave it in uploaded/)
    answered: list[str] = []
    for bid, ref in sorted(answered_batches(ctx.results).items()):
        bd = ob.find(bid)
        if bd is not None and bd.state in ("uploaded", "processed"):
            continue
        where = (
            f"back in {bd.day}/{bd.state}/"
            if bd is not None
            else "in the quarantine (never uploadable)"
            if ob.find_quarantined(bid) is not None
            else "missing from the outbox"
        )
        answered.append(f"batch {bid}: SEVIS answered it ({ref}) but its folder is {where}")
    if ctx.schema is not None:
        from sevisflow.sinks.xml.document import check_document
        from sevisflow.sinks.xml.render import ClosedBatch

        for bid in quarantined:
            closed = ctx.closed_events().get(bid)
            if closed is None:
                continue
            event = _raw(closed, BATCH_SCHEMA)
            if check_document(
                ClosedBatch.from_event(event, orjson.loads(event.get("records_json") or "[]")), ctx.schema
            )[0].ok:
                answered.append(
                    f"batch {bid} is in the quarantine but its document validates against the XSDs: "
                    "the XML sink quarantines only invalid batches, so its folder was moved there"
                )
    elif quarantined:
        skipped.append(
            f"quarantine: {len(quarantined)} quarantined batch(es) not re-validated "
            f"({ctx.skip_reasons.get('render', 'no SEVIS XSDs')})"
        )

    entries = ledger.entries()
    problems, head = check_chain(entries)
    chain = [f"ledger line {p.line} ({p.batch_id}): {p.message}" for p in problems]
    anchored = None
    unanchored = 0
    if anchors is None:
        skipped.append(
            "anchor: the ledger topic could not be read, so a truncated or replaced ledger would not "
            "show" + (f" ({ctx.skip_reasons['anchor']})" if "anchor" in ctx.skip_reasons else "")
        )
    else:
        mine = anchors_for(anchors, Path(anchored_as) if anchored_as else ledger.path)
        if not mine and anchors:
            others = sorted({str(a.get("ledger")) for a in anchors.values() if a.get("ledger")})
            skipped.append(
                f"anchor: the ledger topic anchors ledger(s) at {', '.join(others[:3])}, not at "
                f"{ledger.path}: if this outbox is a copy, pass --anchored-as <the original ledger path>"
            )
        anchors = mine
        chain += check_anchors(entries, anchors)
        anchored = anchored_head(anchors)
        unanchored = max(0, len(entries) - anchored[0])
    chain += _ledger_problems(entries, ob, by_id)
    found = None
    if expect_head:
        found = any(e.get("hash") == expect_head for e in entries)
        if not found:
            chain.append(
                f"the expected ledger head {expect_head[:16]}… is not in the ledger: "
                "the ledger was truncated or replaced"
            )
    return AllReport(verdicts, sorted(missing), chain, head, answered, skipped, anchored, unanchored, found)


def summarize_checks(v: Verdict) -> Mapping[str, str]:
    return {c.name: c.status for c in v.checks}
