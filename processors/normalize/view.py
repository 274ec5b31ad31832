"""Apply row changes to canonical student views: the pure heart of the normalize stage.

:class:`Normalizer` works on a key/value state (a dict in tests, the transactional state store in
Kafka) and never looks at a clock. State keys:

==============  ==========================================================================
``v:<student>``  the student's canonical view (JSON)
``r:<row id>``   per source row: last applied position and which view parts it feeds
``l:<link>``     the student id the other tables point at → student key
``o:<link>``     row changes that arrived before their student row (replayed when it comes)
``ref:<n>:<k>``  reference rows (e.g. terms), joined into feeds by key
``lm:<link>``    the rows linked to the student through ``<link>`` (re-linked when the student's key changes)
``t:<txId>``     row changes of a transaction whose END has not been applied yet (a chunked list)
``q``            END markers in arrival order (the commit order) waiting for their rows (a chunked list)
``m``            ``upto``: the position of the last applied transaction
``b``            the start-up hold is over (stage mode, see below)
==============  ==========================================================================

Chunked lists (:class:`Chunked`): everything that grows with one SIS transaction or with the work
held behind a snapshot — a transaction's buffer, the END queue, the held streamed rows — is stored
as a small header ``<name>`` (item count, per-table counts, chunk range) and numbered chunks
``<name>:<i>`` of at most :data:`CHUNK_ITEMS` items and about :data:`CHUNK_BYTES` bytes. An append
rewrites only the last chunk, so no changelog record grows with the transaction (a 50,000-row
transaction is ~200 chunk records, each far below the message size limit) and the bytes written
per appended row stay constant (no re-encoding of the whole buffer).

Identity: a non-student row reaches its student through ``l:<link>`` and is listed in
``lm:<link>``. When the student row's key changes (an update of the key column, or a delete and
insert of the student row in one transaction — how a primary-key update is captured), every row in
``lm:<link>`` moves to the new key in the index and its view parts move to the new view, so later
changes of those rows are reported under the new key. When the student row is deleted (and not
re-inserted in the same transaction) ``l:<link>`` and ``lm:<link>`` are removed: a student who
later reuses the id starts empty and never receives the deleted student's rows. The new key's view
carries ``rekeyed_from`` (the old key), so sevis_events does not take it for a new student.

Ordering: with transaction metadata, a transaction's row changes
are buffered until its END has arrived *and* every row change it announced for the tables we read;
complete transactions are applied strictly in END order, each one's rows sorted by position, and
the affected views are published once per transaction. So the output does not depend on how the
per-table topics interleave. Without transaction metadata every row change is its own unit (in
arrival order per topic partition); a multi-table transaction can then show intermediate views.
Only row changes that carry Debezium's ``transaction`` block are buffered (the connector sets it
when ``provide.transaction.metadata`` is on, and then writes the END).

Snapshot rows (op ``r`` / ``source.snapshot`` first|true|last) all share one position and carry no
transaction block, and they arrive interleaved across every change topic and partition in no fixed
order. They are *held* (``s:``/``sg:``/``s`` keys below; a re-delivered row replaces the earlier copy
of the same table + key) and applied when the snapshot is complete, one student id at a time, sorted
by :meth:`Normalizer.snapshot_order` (references, the student table, then the other tables in mapping
order; primary key within a table): each affected student's view is published once, with the
lineage of all its snapshot rows, so a new admit gives one complete Create whose id does not depend
on arrival order. Who decides "complete": the Kafka stage (``hold_streamed=True``: streamed work
waits behind the snapshot in ``sp`` / the END queue, and the stage calls :meth:`release_step`, a
slice per Kafka transaction, once it has consumed everything produced before the snapshot's end); the pure pipeline
(``hold_streamed=False``) releases it just before the first streamed change is applied, or at the
end of the feed (:meth:`finish`).

Start-up (stage mode): until the first release (``b`` unset) the normalizer holds everything from
its first record on, snapshot rows or not, because it cannot know yet whether a snapshot is coming:
a consumer may read the transaction topic, or a partition's streamed rows, before any snapshot row.
The end of the snapshot is *seen* (``last`` / ``ended`` in ``s``) on a row marked ``last`` of any
table — mapped or not — or on any streamed record (a streamed row of any table, in a transaction or
not, or a transaction marker): the connector streams only after its snapshot. The stage then
releases once it has consumed every input partition up to the high watermarks read at that moment.

==============  ==========================================================================
``s``            the held snapshot: ``n`` rows, ``g`` groups, ``k`` ``sl`` chunks, ``last`` ("last" row
                 seen), ``ended`` (a streamed record seen after it), ``boot`` (the start-up hold),
                 ``r`` the release under way (``i`` next group of ``n``, ``u`` units of group ``i``
                 applied)
``s:<row id>``   one held snapshot row (the last copy delivered)
``sg:<group>``   the row ids of one group: the rows of one student id ("" = references, no student);
                 a list, chunked once it holds :data:`CHUNK_ITEMS` ids (a group of any size is many
                 small values)
``su:<group>``   a group larger than :data:`SNAPSHOT_UNIT_ROWS` being applied: its row ids in snapshot
                 order, taken from the front one unit at a time (chunked)
``sl:<n>``       the groups, first seen first, in chunks of :data:`SNAPSHOT_CHUNK`
``sr:<n>``       the release plan: the groups in the order they are applied (id order, "" first)
``sp``           streamed row changes applied on arrival, held behind an incomplete snapshot (chunked)

Applying the snapshot: one unit per group — the reference rows first, then each student id's rows
(its student row, then its other rows in :meth:`Normalizer.snapshot_order`) — so each student's view
is published once, with the lineage of all its snapshot rows, and the unit, its id and the events
derived from it do not depend on arrival order or on how the release is sliced. A group of more than
:data:`SNAPSHOT_UNIT_ROWS` rows (a big reference table, or rows naming a placeholder student id) is
applied as several units of that many rows, in the same order. The Kafka stage
applies a slice of groups per Kafka transaction (:meth:`Normalizer.release_step`): no transaction,
state value or poll interval grows with the school. A row that names another student than its
group's (a row linked to two students) is parked until that student's row is applied, as in streaming.
==============  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from sevisflow.processors.normalize.canonical import SECTIONS, ValueProblem, convert, new_view, rounds
from sevisflow.processors.normalize.changes import RowChange, TxMarker
from sevisflow.processors.normalize.mapping import Feed, Mapping

US_SLOTS = ("us_physical", "us_mailing")
SNAPSHOT_CHUNK = 500  # groups per ``sl:<n>``/``sr:<n>`` key: a changelog record stays small, writes stay O(rows)
SNAPSHOT_UNIT_ROWS = 5_000
"""The most held snapshot rows applied as one unit. A student's rows are one unit (one view version, one
Create); only a group larger than this — a reference table, or rows naming a placeholder student id — is
applied in several, in snapshot order. A real student has far fewer rows (a view section holds at most
:data:`MAX_ENTRIES_PER_SECTION` entries)."""
CHUNK_ITEMS = 256  # items per chunk of a chunked list (transaction buffer, END queue, held rows)
CHUNK_BYTES = 256 * 1024  # ... and about this many bytes of JSON: far below the changelog's message limit


APPLIED_TX_MEMORY = 256
"""How many applied transaction ids normalize remembers, to drop an END that arrives again (a connector
re-sends at most what it had not confirmed: one offset-flush interval, far fewer transactions than this)."""

MAX_ENTRIES_PER_SECTION = 200
"""The most entries a keyed section of one student's view holds (terms of enrollment, dependents,
authorisations, sites): far above any real student (decades of terms), and what keeps a view, one state
value re-encoded at every change, small. A row that would add one more is a ``too_many_rows`` dead letter.
Unbounded, a student given 5,000 enrollment rows made a 1.2 MB view at 1.8 ms per row, growing with every
row, and past the changelog's 8 MiB record limit normalize would stop for the whole school."""

MAX_PARKED_PER_STUDENT_ID = 500
"""The most rows kept waiting for a student row that has not arrived (``o:<link>``, one state value). Rows
that point at an id no student has (a placeholder id such as 0 in messy SIS data) would otherwise pile up
in one value until the changelog refuses it; past this, such a row is an ``orphan_limit`` dead letter."""

MAX_LINKED_ROWS_PER_STUDENT_ID = 5_000
"""The most rows linked to one student id (``lm:<link>``, one state value: the rows that follow the student
when its id changes). A real student has a few hundred at most (each keyed view section holds 200); rows of
an unkeyed table (addresses) are not bounded by the view, so a placeholder student that exists in the SIS
and collects every row nobody else owns would grow this value past the changelog's limit. Past this, a row
that would link one more is a ``too_many_rows`` dead letter."""


def view_key(student_key: str) -> str:
    """The state key of a student's view."""
    return f"v:{student_key}"


def copy_for_change(view: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``view`` that a unit may change without changing ``view``: the view and each of its sections
    (and ``src``) are copied; what a section holds is shared. Enough because normalize changes a view only
    there — it sets, pops and updates a section's items and a view's own keys, and replaces a keyed section's
    entry (``_set`` builds a new one) instead of changing it. A deep copy (an ``orjson`` round trip) cost ~8 %
    of a steady-state change (bench/README.md, "normalize in the steady state")."""
    return {k: dict(v) if type(v) is dict else v for k, v in view.items()}


class KV(Protocol):
    def get(self, key: str) -> Any: ...
    def put(self, key: str, value: Any) -> None: ...


class DictKV:
    """A plain-dict state for tests and benchmarks."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value


class Chunked:
    """A list stored as a small header ``name`` plus numbered chunks ``name:<i>``: appends touch the
    last chunk only, and no single state value grows with the list (see the module docstring).

    Header: ``h``/``e`` first live / next chunk number, ``o`` items already taken from chunk ``h``,
    ``n`` live items, ``b`` approximate JSON bytes of the last chunk, ``c`` item count per ``"t"``
    (the table of a buffered row change). A value stored by an older version as a plain list is
    read as one chunk and rewritten in this form on the next write.
    """

    def __init__(self, kv: KV, name: str) -> None:
        self.kv = kv
        self.name = name

    def header(self) -> dict[str, Any] | None:
        h = self.kv.get(self.name)
        if isinstance(h, list):  # stored by an older version: migrate in place
            items, h = h, None
            self.kv.put(self.name, None)
            for item in items:
                self.append(item)
            h = self.kv.get(self.name)
        header: dict[str, Any] | None = h
        return header

    def __len__(self) -> int:
        h = self.header()
        return h["n"] if h else 0

    def counts(self) -> dict[str, int]:
        h = self.header()
        return h["c"] if h else {}

    def append(self, item: Any) -> None:
        h = self.header()
        h = {"h": 0, "e": 0, "o": 0, "n": 0, "b": 0, "c": {}} if h is None else dict(h)
        size = len(orjson.dumps(item))
        last = h["e"] - 1
        chunk = self.kv.get(f"{self.name}:{last}") if last >= h["h"] else None
        if chunk is None or len(chunk) >= CHUNK_ITEMS or (chunk and h["b"] + size > CHUNK_BYTES):
            last, chunk, h["b"] = h["e"], [], 0
            h["e"] = last + 1
        chunk.append(item)  # in place: the KV hands out its own decoded copy
        self.kv.put(f"{self.name}:{last}", chunk)
        h["b"] += size
        h["n"] += 1
        t = item.get("t") if isinstance(item, dict) else None
        if isinstance(t, str):
            h["c"] = {**h["c"], t: h["c"].get(t, 0) + 1}
        self.kv.put(self.name, h)

    def first(self) -> Any:
        h = self.header()
        if not h or not h["n"]:
            return None
        return (self.kv.get(f"{self.name}:{h['h']}") or [])[h["o"]]

    def drop_first(self) -> None:
        h = self.header()
        if not h or not h["n"]:
            return
        h = dict(h)
        chunk = self.kv.get(f"{self.name}:{h['h']}") or []
        h["o"] += 1
        h["n"] -= 1
        t = chunk[h["o"] - 1].get("t") if isinstance(chunk[h["o"] - 1], dict) else None
        if isinstance(t, str) and t in h["c"]:
            h["c"] = {**h["c"], t: h["c"][t] - 1}
        if h["o"] >= len(chunk):
            self.kv.put(f"{self.name}:{h['h']}", None)
            h["h"] += 1
            h["o"] = 0
        if h["n"] == 0:
            self.clear()
            return
        self.kv.put(self.name, h)

    def items(self) -> list[Any]:
        h = self.header()
        if not h:
            return []
        out: list[Any] = []
        for i in range(h["h"], h["e"]):
            chunk = self.kv.get(f"{self.name}:{i}") or []
            out.extend(chunk[h["o"] :] if i == h["h"] else chunk)
        return out

    def clear(self) -> None:
        h = self.header()
        if h:
            for i in range(h["h"], h["e"]):
                self.kv.put(f"{self.name}:{i}", None)
        self.kv.put(self.name, None)


@dataclass
class DeadItem:
    """A row change (or part of one) that could not be applied; becomes a dead letter."""

    code: str
    reason: str
    change: RowChange | None
    student_key: str | None = None
    field: str | None = None


@dataclass(init=False)
class StudentUpdate:
    """A new version of one student's view, with the source changes that made it. (The ``__init__``s of this
    class and :class:`Result` are written out: mypyc compiles them, not a dataclass's generated one.)"""

    student_key: str
    view: dict[str, Any]
    lineage: list[dict[str, Any]]
    unit_id: str
    snapshot: bool

    def __init__(
        self, student_key: str, view: dict[str, Any], lineage: list[dict[str, Any]], unit_id: str, snapshot: bool
    ) -> None:
        self.student_key = student_key
        self.view = view
        self.lineage = lineage
        self.unit_id = unit_id
        self.snapshot = snapshot


@dataclass(init=False)
class Result:
    updates: list[StudentUpdate]
    dead: list[DeadItem]

    def __init__(self, updates: list[StudentUpdate] | None = None, dead: list[DeadItem] | None = None) -> None:
        self.updates = [] if updates is None else updates
        self.dead = [] if dead is None else dead

    def extend(self, other: Result) -> None:
        self.updates.extend(other.updates)
        self.dead.extend(other.dead)


class _Skip(Exception):
    pass


class Normalizer:
    """Turns row changes (and transaction markers) into student view updates and dead items."""

    def __init__(self, mapping: Mapping, kv: KV, use_transactions: bool = True, hold_streamed: bool = False) -> None:
        self.mapping = mapping
        self.kv = kv
        self.use_transactions = use_transactions
        self.hold_streamed = hold_streamed
        self.tables = set(mapping.tables())
        rank: dict[str, int] = {}
        for t in [r.table for r in mapping.references] + [mapping.student_table] + mapping.tables():
            rank.setdefault(t, len(rank))
        self._table_rank = rank
        self._unlinks: dict[str, str] = {}  # student ids deleted in the unit being applied
        self._moves: list[tuple[str, str, str]] = []  # (link, old key, new key) found by the current change

    # ------------------------------------------------------------------ entry points

    def on_change(self, ch: RowChange) -> Result:
        self._boot()
        streamed = not ch.snapshot or ch.snapshot_mark == "incremental"
        if ch.table not in self.tables:
            # a table we do not read still tells where the snapshot is: its "last" row may be the
            # snapshot's last, and any streamed row means the connector has finished the snapshot
            if self.snapshot_status() is not None:
                if streamed:
                    self._snap_flag("ended")
                elif ch.snapshot_mark == "last":
                    self._snap_flag("last")
            return Result()
        if ch.snapshot and ch.op != "t" and ch.snapshot_mark != "incremental":
            self._hold_snapshot(ch)
            return Result()
        meta = self.kv.get("m") or {}
        upto = tuple(meta.get("upto", (-1, -1)))
        if not self.use_transactions or ch.snapshot or not ch.in_tx or ch.tx_id is None or ch.position <= upto:
            if self.snapshot_status() is not None:
                if self.hold_streamed:
                    Chunked(self.kv, "sp").append(ch.to_json())
                    self._snap_flag("ended")
                    return Result()
                out = self._release_rows()
                out.extend(self._apply_unit([ch]))
                return out
            return self._apply_unit([ch])
        if self.snapshot_status() is not None:
            self._snap_flag("ended")  # a streamed transaction's row: the snapshot is over at the source
        Chunked(self.kv, f"t:{ch.tx_id}").append(ch.to_json())
        return self._flush()

    def on_marker(self, marker: TxMarker) -> Result:
        self._boot()
        if self.snapshot_status() is not None:
            self._snap_flag("ended")  # transaction markers only come from streaming, after the snapshot
        if marker.status != "END" or marker.tx_id is None or not self.use_transactions:
            return Result()
        if marker.tx_id in (self.kv.get("m") or {}).get("done", ()):
            return Result()  # an END re-sent after its transaction was applied (an at-least-once connector)
        counts = {t: n for t, n in marker.counts.items() if t in self.tables}
        entry = {"tx": marker.tx_id, "counts": counts, "total": marker.event_count, "by_table": bool(marker.counts)}
        if marker.lsn is not None:
            entry["lsn"] = marker.lsn
        q = Chunked(self.kv, "q")
        if q.first() is not None:
            q.append(entry)
            return self._flush()
        applied = self._apply_tx(entry)  # nothing queued before it (the usual case): applied now if it can be
        if applied is None:
            q.append(entry)  # it waits for its rows
            return Result()
        return applied

    # ------------------------------------------------------------------ transactions

    def _flush(self) -> Result:
        """Apply the queued transactions whose rows are all here, in END order; stop at the first that is not."""
        out = Result()
        q = Chunked(self.kv, "q")
        while True:
            head = q.first()
            if head is None:
                break
            applied = self._apply_tx(head)
            if applied is None:
                break
            q.drop_first()
            out.extend(applied)
        return out

    def _apply_tx(self, head: dict[str, Any]) -> Result | None:
        """Apply the transaction of END entry ``head`` if every row it counts is here (None: it must wait)."""
        buf = Chunked(self.kv, f"t:{head['tx']}")
        meta_now = self.kv.get("m") or {}
        if head["tx"] in meta_now.get("done", ()) and not len(buf):
            return Result()  # the same END twice in the queue: the first one applied the transaction
        upto = tuple(meta_now.get("upto", (-1, -1)))
        # An END behind a transaction already applied means the transaction topic is not in commit
        # order (it must have one partition). Its rows that arrive late are applied on arrival (they
        # are behind ``upto``), so waiting for them would block every later transaction for good.
        late = head.get("lsn") is not None and head["lsn"] < upto[0]
        if not late:
            if head["by_table"]:
                have = buf.counts()
                complete = all(have.get(t, 0) >= n for t, n in head["counts"].items())
            else:
                complete = len(buf) >= head["total"]
            if not complete:
                return None
        out = Result()
        if self.snapshot_status() is not None:
            if self.hold_streamed:
                return None  # applied after the snapshot (release_snapshot)
            out.extend(self._release_rows())
        raw = buf.items()
        if raw:
            buf.clear()
            rows = sorted((RowChange.from_json(d) for d in raw), key=lambda c: (c.position, c.table, c.offset))
            out.extend(self._apply_unit(rows))
        meta = dict(self.kv.get("m") or {})
        if raw:
            meta["upto"] = list(max(tuple(meta.get("upto", (-1, -1))), rows[-1].position))
        meta["done"] = [*meta.get("done", ())[-(APPLIED_TX_MEMORY - 1) :], head["tx"]]
        self.kv.put("m", meta)
        return out

    # ------------------------------------------------------------------ the initial snapshot

    def _boot(self) -> None:
        """Stage mode, first record ever: hold everything until the snapshot question is settled."""
        if self.hold_streamed and self.kv.get("b") is None and self.kv.get("s") is None:
            self.kv.put("s", {"k": 0, "n": 0, "boot": True})

    def holding(self) -> bool:
        """Whether a snapshot (or the start-up hold) is held now: only then do the rows of tables the
        mapping does not read matter (the stage skips them unparsed otherwise)."""
        self._boot()
        return self.kv.get("s") is not None

    def snapshot_status(self) -> dict[str, Any] | None:
        """The held snapshot's meta (``n`` rows, ``last``, ``ended``, ``boot``), None when nothing is held."""
        status: dict[str, Any] | None = self.kv.get("s")
        return status

    def snapshot_order(self, ch: RowChange) -> tuple[Any, ...]:
        """Where a snapshot row goes in the snapshot unit: independent of arrival order."""
        return (self._table_rank.get(ch.table, len(self._table_rank)), ch.table, ch.row_id)

    def _snap_flag(self, flag: str) -> None:
        meta = self.kv.get("s")
        if meta is not None and not meta.get(flag):
            self.kv.put("s", {**meta, flag: True})

    def _hold_snapshot(self, ch: RowChange) -> None:
        meta = self._grouped_meta()
        rid = ch.row_id
        group = self.snapshot_group(ch)
        held = self.kv.get(f"s:{rid}")
        # a re-delivered row (resumed snapshot): the last copy wins; one that now names another student
        # moves to that group (its entry in a chunked old group stays, and is passed over when applied)
        was = None if held is None else self.snapshot_group(RowChange.from_json(held))
        if was != group:
            self._join_group(meta, group, rid)
            if held is None:
                meta["n"] += 1
            elif isinstance(old := self.kv.get(f"sg:{was}"), list) and rid in old:
                old.remove(rid)
                self.kv.put(f"sg:{was}", old or None)
        self.kv.put(f"s:{rid}", ch.to_json())
        if ch.snapshot_mark == "last":
            meta["last"] = True
        self.kv.put("s", meta)

    def _join_group(self, meta: dict[str, Any], group: str, rid: str) -> None:
        """Add a held row to its group, listing the group if it is new. ``sg:<group>`` is a plain list while
        it holds fewer than :data:`CHUNK_ITEMS` ids (a student's rows: one value, as before) and a chunked
        list past that, so a group of any size is many small values."""
        key = f"sg:{group}"
        members = self.kv.get(key)
        if not members:
            self._list_group(meta, group)
            self.kv.put(key, [rid])
        elif isinstance(members, list) and len(members) < CHUNK_ITEMS:
            members.append(rid)  # in place: the KV hands out its own decoded copy
            self.kv.put(key, members)
        else:
            Chunked(self.kv, key).append(rid)  # a full plain list becomes the first chunk

    def _take_group(self, group: str) -> tuple[list[str], bool]:
        """The row ids held in a group, which is emptied (either form of ``sg:<group>``), and whether they
        are exact: a chunked group may list a row that moved to another group or was listed twice."""
        key = f"sg:{group}"
        members = self.kv.get(key)
        if members is None or isinstance(members, list):
            self.kv.put(key, None)
            return members or [], True
        chunked = Chunked(self.kv, key)
        rids: list[str] = chunked.items()
        chunked.clear()
        return rids, False

    def snapshot_group(self, ch: RowChange) -> str:
        """The student id a held snapshot row belongs to ("" for reference rows and rows naming no student,
        which are applied first). The snapshot is applied one group after the other, in id order."""
        if self.mapping.reference_of(ch.table) is not None:
            return ""
        row = ch.after or ch.before or {}
        links = []
        for feed in self.mapping.feeds_of(ch.table):
            value = row.get(self.mapping.student_id if feed.link is None else feed.link)
            if value is not None:
                links.append(str(value))
        return min(links, default="")

    def _list_group(self, meta: dict[str, Any], group: str) -> None:
        """Note a new group (``sl:<n>`` chunks, first seen first): the release plan is built from them."""
        k = max(meta["k"] - 1, 0)
        chunk = self.kv.get(f"sl:{k}") or []
        if len(chunk) >= SNAPSHOT_CHUNK:
            k, chunk = k + 1, []
        chunk.append(group)
        self.kv.put(f"sl:{k}", chunk)
        meta["k"] = k + 1
        meta["g"] = meta.get("g", 0) + 1

    def _grouped_meta(self) -> dict[str, Any]:
        """The held snapshot's meta, its index converted to groups if an older version held it (``si:<n>``)."""
        meta = dict(self.kv.get("s") or {"k": 0, "n": 0})
        if "g" in meta:
            return meta
        old_chunks, meta["k"], meta["g"], meta["n"] = meta["k"], 0, 0, 0
        for k in range(old_chunks):
            for rid in self.kv.get(f"si:{k}") or []:
                held = self.kv.get(f"s:{rid}")
                if held is None:
                    continue
                self._join_group(meta, self.snapshot_group(RowChange.from_json(held)), rid)
                meta["n"] += 1
            self.kv.put(f"si:{k}", None)
        return meta

    def releasing(self) -> bool:
        """Whether the held snapshot is being applied (stage mode: one slice per Kafka transaction)."""
        meta = self.kv.get("s")
        return meta is not None and "r" in meta

    def begin_release(self) -> None:
        """The snapshot is complete: fix the order its groups are applied in (``sr:<n>`` chunks)."""
        meta = self._grouped_meta()
        groups: list[str] = []
        for k in range(meta["k"]):
            groups.extend(self.kv.get(f"sl:{k}") or [])
            self.kv.put(f"sl:{k}", None)
        groups.sort()
        for i in range(0, len(groups), SNAPSHOT_CHUNK):
            self.kv.put(f"sr:{i // SNAPSHOT_CHUNK}", groups[i : i + SNAPSHOT_CHUNK])
        meta.update(k=0, r={"i": 0, "n": len(groups), "done": meta.get("r", {}).get("done", 0)})
        self.kv.put("s", meta)

    def _release_groups(self, max_rows: int | None) -> tuple[Result, bool]:
        """Apply the held snapshot's next groups, each as one unit (its rows in :meth:`snapshot_order`),
        until about ``max_rows`` rows are applied (at least one group; None = all); True once nothing is held."""
        out = Result()
        rows_applied = 0
        while True:
            meta = self.kv.get("s")
            if meta is None:
                return out, True
            if "r" not in meta:
                self.begin_release()
                meta = self.kv.get("s")
            plan = meta["r"]
            if plan["i"] >= plan["n"]:
                for i in range(0, plan["n"], SNAPSHOT_CHUNK):
                    self.kv.put(f"sr:{i // SNAPSHOT_CHUNK}", None)
                if meta.get("k"):  # groups held while this plan was applied (a snapshot re-sent): one more round
                    self.begin_release()
                    continue
                self.kv.put("s", None)
                if self.hold_streamed:
                    self.kv.put("b", True)
                return out, True
            if max_rows is not None and rows_applied >= max_rows:
                return out, False
            i = plan["i"]
            group = (self.kv.get(f"sr:{i // SNAPSHOT_CHUNK}") or [])[i % SNAPSHOT_CHUNK]
            rows, group_done = self._next_unit(group, plan)
            for ch in rows:
                self.kv.put(f"s:{ch.row_id}", None)
            step = {"i": i + 1, "done": plan["done"] + 1, "u": 0} if group_done else {"u": plan.get("u", 0) + 1}
            meta = self.kv.get("s")  # applying never touches "s", but re-read: it is the KV's copy
            self.kv.put("s", {**meta, "n": meta["n"] - len(rows), "r": {**plan, **step}})
            if rows:
                out.extend(self._apply_unit(rows))
                rows_applied += len(rows)

    def _next_unit(self, group: str, plan: dict[str, Any]) -> tuple[list[RowChange], bool]:
        """The next unit of a group's held rows, in :meth:`snapshot_order`, and whether it is the group's last.

        A group is one unit, unless it holds more than :data:`SNAPSHOT_UNIT_ROWS` rows (a reference table,
        or rows naming a placeholder student id in messy SIS data): then its rows are put in order once
        (``su:<group>``) and applied that many at a time, so no unit, transaction or poll grows with it.
        Entries whose row was applied already, or that now belongs to another group, are passed over."""
        queue = Chunked(self.kv, f"su:{group}")
        if not plan.get("u"):
            # emptied now: a row re-sent while the group's units are applied joins it anew, for a next round
            members, exact = self._take_group(group)
            if len(members) <= SNAPSHOT_UNIT_ROWS:
                rows = self._held_rows(group, members, exact)
                rows.sort(key=self.snapshot_order)
                return rows, True
            for _, rid in sorted((self.snapshot_order(ch), ch.row_id) for ch in self._held_rows(group, members)):
                queue.append(rid)
        rids: list[str] = []
        while len(rids) < SNAPSHOT_UNIT_ROWS and (head := queue.first()) is not None:
            rids.append(head)
            queue.drop_first()
        return self._held_rows(group, rids), not len(queue)

    def _held_rows(self, group: str, rids: list[str], exact: bool = False) -> list[RowChange]:
        """The held rows of ``rids`` that are still held and (unless ``exact``) still belong to ``group``, each once."""
        if exact:
            return [RowChange.from_json(held) for rid in rids if (held := self.kv.get(f"s:{rid}")) is not None]
        rows: dict[str, RowChange] = {}
        for rid in rids:
            held = self.kv.get(f"s:{rid}")
            if held is not None and rid not in rows:
                ch = RowChange.from_json(held)
                if self.snapshot_group(ch) == group:
                    rows[rid] = ch
        return list(rows.values())

    def _release_rows(self) -> Result:
        """Apply the whole held snapshot (pure mode: just before the first streamed change)."""
        return self._release_groups(None)[0]

    def release_step(self, max_rows: int | None = None) -> tuple[Result, bool]:
        """Apply the next slice of the held snapshot (about ``max_rows`` rows; None = all of it) and, once
        it is all applied, the streamed work held behind it. True when the release is complete.

        The groups — one per student id, in id order, after the reference rows — and so the units, views
        and event ids are the same however the release is sliced: the stage applies one slice per Kafka
        transaction, so no transaction (and no poll interval) grows with the school."""
        out, done = self._release_groups(max_rows)
        if not done:
            return out, False
        sp = Chunked(self.kv, "sp")
        held = sp.items()
        if held:
            sp.clear()
            for d in held:
                out.extend(self.on_change(RowChange.from_json(d)))
        if self.use_transactions:
            out.extend(self._flush())
        return out, True

    def release_snapshot(self) -> Result:
        """Apply the held snapshot, then the streamed work held behind it, all at once (:meth:`finish`)."""
        return self.release_step(None)[0]

    def finish(self) -> Result:
        """End of a pure feed: whatever snapshot is still held is complete."""
        return self.release_snapshot()

    # ------------------------------------------------------------------ applying

    def _apply_unit(self, changes: list[RowChange]) -> Result:
        res = Result()
        before: dict[str, Any] = {}
        lineage: dict[str, list[dict[str, Any]]] = {}
        self._unlinks = {}
        for ch in changes:
            self._apply_change(ch, before, lineage, res)
        for link, skey in self._unlinks.items():
            # a student row deleted (or moved to another id) and not back by the end of the unit: the
            # id belongs to nobody now, and a student who reuses it must not inherit these rows
            if self.kv.get(f"l:{link}") == skey:
                self.kv.put(f"l:{link}", None)
                self.kv.put(f"lm:{link}", None)
        self._unlinks = {}
        last = changes[-1]
        unit_id = f"{last.tx_id if last.tx_id is not None else 'n'}:{last.position[0]}:{last.position[1]}"
        if last.tx_id is None or last.snapshot:
            unit_id += ":" + last.row_id
        snapshot = all(c.snapshot for c in changes)
        for skey, old in before.items():
            view = self.kv.get(view_key(skey))
            if view is None or view == old:
                continue
            res.updates.append(StudentUpdate(skey, view, lineage[skey], unit_id, snapshot))
        return res

    def _view(self, skey: str, link: Any, before: dict[str, Any]) -> dict[str, Any]:
        view: dict[str, Any] | None = self.kv.get(view_key(skey))
        if skey not in before:
            # copy on first write in a unit: published views are never mutated afterwards
            before[skey] = view
            if view is not None:
                view = copy_for_change(view)
                self.kv.put(view_key(skey), view)
        if view is None:
            view = new_view(skey, None if link is None else str(link))
        return view

    def _apply_change(
        self, ch: RowChange, before: dict[str, Any], lineage: dict[str, list[dict[str, Any]]], res: Result
    ) -> None:
        idx_key = f"r:{ch.row_id}"
        idx = self.kv.get(idx_key) or {}
        if idx and tuple(idx["p"]) >= ch.position:
            return  # already applied (at-least-once source) or older than what we have
        if ch.op == "t":
            res.dead.append(
                DeadItem(
                    "truncate",
                    f"table {ch.table} was truncated; sevisflow does not apply truncates (re-snapshot the table)",
                    ch,
                )
            )
            return
        ref = self.mapping.reference_of(ch.table)
        if ref is not None:
            row = ch.after if ch.after is not None else ch.before or {}
            if ref.key not in row:
                res.dead.append(
                    DeadItem(
                        "mapping_missing_column",
                        f"reference {ref.name}: table {ch.table} has no column {ref.key!r} (fix the mapping file)",
                        ch,
                        field=ref.key,
                    )
                )
                return
            self.kv.put(f"ref:{ref.name}:{row[ref.key]}", ch.after)
            self.kv.put(idx_key, {"p": list(ch.position)})
            if not self.mapping.feeds_of(ch.table):
                return
        old_contrib = [tuple(c) for c in idx.get("c", [])]
        self._moves = []
        is_student_row = ch.table == self.mapping.student_table
        old_link = idx.get("l")
        if is_student_row and old_link is None and ch.before is not None:
            old_link = ch.before.get(self.mapping.student_id)
        new_contrib: list[tuple[Any, ...]] | None
        values: dict[tuple[Any, ...], dict[str, Any]]
        if ch.op == "d":
            new_contrib, values = [], {}
        else:
            try:
                self._check_linked(ch, idx, res)
                new_contrib, values = self._contributions(ch, res)
            except _Skip:
                entry = {**idx, "p": list(ch.position), "c": [list(c) for c in old_contrib]}
                self.kv.put(idx_key, entry)
                for link, old, _new in self._moves:  # the student row was not applied: nor is its new key
                    self.kv.put(f"l:{link}", old)
                self._moves = []
                return
            if new_contrib is None:  # orphan, parked until its student row arrives
                return
        touched: set[str] = set()
        for c in old_contrib:
            if c not in new_contrib:
                self._remove(c, ch.row_id, before, touched)
        for c in new_contrib:
            self._set(c, values[c], ch, before, touched)
        entry = {"p": list(ch.position), "c": [list(c) for c in new_contrib]}
        if is_student_row:
            new_link = None if ch.after is None else ch.after.get(self.mapping.student_id)
            if new_link is not None:
                entry["l"] = str(new_link)
            if old_link is not None and str(old_link) != str(new_link):
                old_skey = next((c[0] for c in old_contrib if self.mapping.feeds[c[3]].link is None), None)
                if old_skey is not None:
                    self._unlinks.setdefault(str(old_link), old_skey)
        self._track_links(ch, idx, entry)
        self.kv.put(idx_key, entry)
        self._relink_all(before, touched)
        for skey in touched:
            lineage.setdefault(skey, []).append(ch.lineage())
        # the student row arrived: replay what waited for it
        if ch.table == self.mapping.student_table and ch.after is not None:
            arrived = ch.after.get(self.mapping.student_id)
            parked = self.kv.get(f"o:{arrived}")
            if parked:
                self.kv.put(f"o:{arrived}", None)
                for d in sorted(parked, key=lambda d: tuple(d["pos"])):
                    self._apply_change(RowChange.from_json(d), before, lineage, res)

    # ------------------------------------------------------------------ identity

    def _track_links(self, ch: RowChange, idx: dict[str, Any], entry: dict[str, Any]) -> None:
        """Keep ``lm:<link>`` (the rows linked to a student id) in step with the row's link columns."""
        row = ch.after if ch.op != "d" else None
        new_links: set[str] = set()
        if row is not None:
            for feed in self.mapping.feeds_of(ch.table):
                if feed.link is not None and row.get(feed.link) is not None:
                    new_links.add(str(row[feed.link]))
        old_links = set(idx.get("k") or [])
        if new_links:
            entry["k"] = sorted(new_links)
        rid = ch.row_id
        for link in old_links - new_links:
            members = self.kv.get(f"lm:{link}")
            if members and rid in members:
                members.remove(rid)
                self.kv.put(f"lm:{link}", members or None)
        for link in new_links - old_links:
            members = self.kv.get(f"lm:{link}") or []
            if rid not in members:
                members.append(rid)
                self.kv.put(f"lm:{link}", members)

    def _relink_all(self, before: dict[str, Any], touched: set[str]) -> None:
        """Carry out the key changes the current change made (its lineage goes to both views)."""
        moves, self._moves = self._moves, []
        for link, old, new in moves:
            self._relink(link, old, new, before, touched)

    def _relink(self, link: str, old: str, new: str, before: dict[str, Any], touched: set[str]) -> None:
        """The student with id ``link`` changed key ``old`` → ``new``: its rows and their view parts follow."""
        for rid in list(self.kv.get(f"lm:{link}") or []):
            idx = self.kv.get(f"r:{rid}")
            if not idx or not any(c[0] == old for c in idx.get("c", [])):
                continue
            moved = []
            for c in idx["c"]:
                if c[0] == old:
                    self._move_part(tuple(c), new, rid, before)
                    c = [new, *c[1:]]
                moved.append(c)
            self.kv.put(f"r:{rid}", {**idx, "c": moved})
        if self.kv.get(view_key(old)) is not None:
            gone = self._view(old, None, before)
            gone["rekeyed_to"] = new  # not a removed student: it goes on under the new key
            self._finish(gone)
            touched.add(old)
        if self.kv.get(view_key(new)) is not None:
            view = self._view(new, None, before)
            view["rekeyed_from"] = old  # sevis_events must not take it for a new student (no 2nd Create)
            self._finish(view)
            touched.add(new)

    def _move_part(self, c: tuple[Any, ...], new: str, rid: str, before: dict[str, Any]) -> None:
        old, section, slot, fi = c
        if self.kv.get(view_key(old)) is None:
            return
        src = self._view(old, None, before)
        dst = self._view(new, None, before)
        src.setdefault(section, {})
        dst.setdefault(section, {})
        if SECTIONS[section].keyed:
            if src["src"].get(f"{section}/{slot}") != rid:
                return
            entry = src[section].pop(slot, None)
            src["src"].pop(f"{section}/{slot}", None)
            if entry is not None:
                dst[section][slot] = entry
                dst["src"][f"{section}/{slot}"] = rid
        else:
            if src["src"].get(f"{section}#{fi}") != rid:
                return
            for spec in self.mapping.feeds[fi].fields:
                for k in [k for k in src[section] if k == spec.name or k.startswith(spec.name + "_")]:
                    dst[section][k] = src[section].pop(k)
            dst["src"][f"{section}#{fi}"] = src["src"].pop(f"{section}#{fi}")
        self._finish(src)
        self._finish(dst)

    def _contributions(
        self, ch: RowChange, res: Result
    ) -> tuple[list[tuple[Any, ...]] | None, dict[tuple[Any, ...], dict[str, Any]]]:
        """The (student, section, slot, feed) entries a row feeds and their values (None: an orphan row)."""
        row = ch.after or {}
        contrib: list[tuple[Any, ...]] = []
        values: dict[tuple[Any, ...], dict[str, Any]] = {}
        indexed = self.mapping.indexed_feeds_of(ch.table)
        keys = row.keys()
        for _fi, feed in indexed:
            if not keys >= feed.columns:
                missing = sorted(c for c in feed.columns if c not in keys)  # (not columns - keys: a set)
                res.dead.append(
                    DeadItem(
                        "mapping_missing_column",
                        f"the mapping reads column {missing[0]!r} of {ch.table}, which the change "
                        f"event does not have (fix {self.mapping.origin} or the capture)",
                        ch,
                        field=missing[0],
                    )
                )
                raise _Skip
        for fi, feed in indexed:
            skey = self._student_of(feed, row, ch, res)
            if skey is None:
                return None, values
            if any(row.get(c) != v for c, v in feed.where.items()):
                continue
            slot = self._slot(feed, row, ch, res, skey)
            self._check_room(feed, slot, ch, res, skey)
            vals = self._convert(fi, feed, row, slot, ch, res, skey)
            c = (skey, feed.section, slot, fi)
            contrib.append(c)
            values[c] = vals
        return contrib, values

    def _student_of(self, feed: Feed, row: dict[str, Any], ch: RowChange, res: Result) -> str | None:
        m = self.mapping
        if feed.table == m.student_table and feed.link is None:
            skey = row.get(m.student_key)
            if skey is None or skey == "":
                res.dead.append(
                    DeadItem(
                        "missing_student_key",
                        f"{ch.table} row has no student key ({m.student_key})",
                        ch,
                        field=m.student_key,
                    )
                )
                raise _Skip
            link = row.get(m.student_id)
            prev = self.kv.get(f"l:{link}")
            if prev != str(skey):  # unchanged (most student-row changes): no state write, no changelog record
                self.kv.put(f"l:{link}", str(skey))
            self._unlinks.pop(str(link), None)  # deleted and back in the same unit: a key change
            if prev is not None and prev != str(skey):
                self._moves.append((str(link), prev, str(skey)))
            return str(skey)
        link = row.get(feed.link or "")
        if link is None:
            res.dead.append(
                DeadItem(
                    "missing_link",
                    f"{ch.table} row does not say which student it belongs to ({feed.link} is null)",
                    ch,
                    field=feed.link,
                )
            )
            raise _Skip
        skey = self.kv.get(f"l:{link}")
        if skey is None:
            parked = list(self.kv.get(f"o:{link}") or [])
            if len(parked) >= MAX_PARKED_PER_STUDENT_ID:
                res.dead.append(
                    DeadItem(
                        "orphan_limit",
                        f"{ch.table} row points at student id {str(link)[:40]!r} ({feed.link}), which no student "
                        f"row has, and {len(parked)} rows already wait for it (the most normalize keeps); this "
                        f"row is not kept: fix {feed.link} in the SIS (a placeholder id?) or load the student row "
                        f"first, then update the row again",
                        ch,
                        field=feed.link,
                    )
                )
                raise _Skip
            parked.append(ch.to_json())
            self.kv.put(f"o:{link}", parked)
            return None
        return str(skey)

    def _slot(self, feed: Feed, row: dict[str, Any], ch: RowChange, res: Result, skey: str) -> str:
        if feed.slot:
            return feed.slot
        if not feed.slot_column:
            return ""
        raw = row.get(feed.slot_column)
        if raw is None:
            res.dead.append(
                DeadItem("missing_field", f"{ch.table}.{feed.slot_column} is null", ch, skey, feed.slot_column)
            )
            raise _Skip
        if feed.slots is not None:
            if str(raw) not in feed.slots:
                res.dead.append(
                    DeadItem(
                        "bad_code",
                        f"{ch.table}.{feed.slot_column}: value not listed in the "
                        f"mapping's slots ({', '.join(feed.slots)})",
                        ch,
                        skey,
                        feed.slot_column,
                    )
                )
                raise _Skip
            return feed.slots[str(raw)]
        return str(raw)

    def _check_linked(self, ch: RowChange, idx: dict[str, Any], res: Result) -> None:
        """Refuse a row that would link one more row to a student id that has :data:`MAX_LINKED_ROWS_PER_STUDENT_ID`
        (only a row gaining a link reads the list: an update of a linked row costs nothing here)."""
        row = ch.after or {}
        known = idx.get("k") or ()
        for feed in self.mapping.feeds_of(ch.table):
            link = row.get(feed.link) if feed.link is not None else None
            if link is None or str(link) in known:
                continue
            members = self.kv.get(f"lm:{link}")
            if not members or len(members) < MAX_LINKED_ROWS_PER_STUDENT_ID or ch.row_id in members:
                continue
            skey = self.kv.get(f"l:{link}")
            res.dead.append(
                DeadItem(
                    "too_many_rows",
                    f"student {skey} already has {len(members)} SIS rows linked to it (the most normalize keeps); "
                    f"this {ch.table} row would add one more and is not applied: remove stale rows of this student "
                    f"in the SIS (or fix {feed.link} if it names the wrong student), then update this row again",
                    ch,
                    None if skey is None else str(skey),
                    feed.link,
                )
            )
            raise _Skip

    def _check_room(self, feed: Feed, slot: str, ch: RowChange, res: Result, skey: str) -> None:
        """Refuse a row that would add an entry to a full keyed section (:data:`MAX_ENTRIES_PER_SECTION`)."""
        if not SECTIONS[feed.section].keyed:
            return
        view = self.kv.get(view_key(skey))
        entries = (view or {}).get(feed.section) or {}
        if slot in entries or len(entries) < MAX_ENTRIES_PER_SECTION:
            return
        res.dead.append(
            DeadItem(
                "too_many_rows",
                f"student {skey} already has {len(entries)} {feed.section} entries in its view (the most "
                f"normalize keeps); this {ch.table} row would add one more and is not applied: remove stale "
                f"{ch.table} rows of this student in the SIS, then update this row again",
                ch,
                skey,
                feed.slot_column or None,
            )
        )
        raise _Skip

    def _convert(
        self, fi: int, feed: Feed, row: dict[str, Any], slot: str, ch: RowChange, res: Result, skey: str
    ) -> dict[str, Any]:
        ref_row: dict[str, Any] | None = None
        if feed.lookup:
            ref_row = self.kv.get(f"ref:{feed.lookup.reference}:{row.get(feed.lookup.on)}")
        out: dict[str, Any] = {}
        problems: list[DeadItem] = []
        us_slot = slot in US_SLOTS
        for step in self.mapping.field_plan(fi):
            name = step.name
            raw = (ref_row or {}).get(step.column) if step.from_lookup else row.get(step.column)
            try:
                if raw is None:
                    out[name] = None
                elif step.table is not None:
                    found, val = step.table.lookup(raw)
                    if not found:
                        raise ValueProblem("bad_code", f"value not in the mapping's [values.{step.table.name}] table")
                    if isinstance(val, dict):
                        out[name] = val.get("value")
                        for k, v in val.items():
                            if k != "value":
                                out[f"{name}_{k}"] = v
                    else:
                        out[name] = val
                else:
                    ft = step.ft
                    out[name] = convert(ft, raw, step.scale)
                    if ft.kind == "int" and rounds(ft, raw, step.scale):
                        # a note, not a refusal: the rounded value is used and the DSO sees both
                        res.dead.append(
                            DeadItem(
                                "value_rounded",
                                f"{ch.table}.{step.column} → {feed.section}.{name}: a fraction "
                                "in a whole-dollar field was rounded to the nearest dollar for "
                                "SEVIS; correct the SIS if the amount is wrong",
                                ch,
                                skey,
                                f"{feed.section}.{name}",
                            )
                        )
                    if step.us_state and us_slot and out[name] is not None:
                        found, val = self.mapping.values["us_state"].lookup(out[name])
                        if not found:
                            raise ValueProblem("bad_code", "not a US state name or code")
                        out[name] = val
            except ValueProblem as p:
                fname = f"{feed.section}.{name}"
                problems.append(DeadItem(p.code, f"{ch.table}.{step.column} → {fname}: {p.reason}", ch, skey, fname))
        if problems:
            res.dead.extend(problems)
            raise _Skip
        return out

    # ------------------------------------------------------------------ view edits

    def _set(
        self, c: tuple[Any, ...], vals: dict[str, Any], ch: RowChange, before: dict[str, Any], touched: set[str]
    ) -> None:
        skey, section, slot, fi = c
        view = self._view(skey, None, before)
        sec = SECTIONS[section]
        if section == "student" and ch.table == self.mapping.student_table and self.mapping.feeds[fi].link is None:
            if not view["exists"]:  # a student (re)appears under this key: no earlier key change applies
                view.pop("rekeyed_from", None)
                view.pop("rekeyed_to", None)
            view["exists"] = True
            view["link"] = str((ch.after or {}).get(self.mapping.student_id))
        view.setdefault(section, {})  # a view stored before this section existed
        if sec.keyed:
            entry = dict(view[section].get(slot) or {})
            entry.update(vals)
            if all(v is None for v in entry.values()):
                view[section].pop(slot, None)
                view["src"].pop(f"{section}/{slot}", None)
            else:
                view[section][slot] = entry
                view["src"][f"{section}/{slot}"] = ch.row_id
        else:
            view[section].update(vals)
            view["src"][f"{section}#{fi}"] = ch.row_id
        self._finish(view)
        touched.add(skey)

    def _remove(self, c: tuple[Any, ...], row_id: str, before: dict[str, Any], touched: set[str]) -> None:
        skey, section, slot, fi = c
        view = self.kv.get(view_key(skey))
        if view is None:
            return
        view = self._view(skey, None, before)
        sec = SECTIONS[section]
        view.setdefault(section, {})
        if sec.keyed:
            if view["src"].get(f"{section}/{slot}") == row_id:
                view[section].pop(slot, None)
                view["src"].pop(f"{section}/{slot}", None)
        elif view["src"].get(f"{section}#{fi}") == row_id:
            feed = self.mapping.feeds[fi]
            for spec in feed.fields:
                view[section].pop(spec.name, None)
                for k in [k for k in view[section] if k.startswith(spec.name + "_")]:
                    view[section].pop(k, None)
            view["src"].pop(f"{section}#{fi}", None)
            if section == "student" and feed.table == self.mapping.student_table and feed.link is None:
                view["exists"] = False
        self._finish(view)
        touched.add(skey)

    def _finish(self, view: dict[str, Any]) -> None:
        visa = view["student"].get("visa_type")
        view["international"] = bool(view["exists"] and visa in self.mapping.international_visas)
        if view["exists"] and visa in self.mapping.other_sevis_visas:
            view["not_reported_visa"] = visa
        else:
            view.pop("not_reported_visa", None)
        self.kv.put(view_key(view["student_key"]), view)
