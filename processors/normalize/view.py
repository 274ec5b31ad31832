"""Apply row changes to canonical student views: the pure heart of the normalize stage.

:class:`Normalizer` works on a key/value state (a dict in tests, the transactional state store in
Kafka) and never looks at a clock. State keys:

==============  ==========================================================================
``v:<student>``  the student's canonical view (JSON)
``r:<row id>``   per source row: last applied position and which view parts it feeds
``l:<link>``     the student id the other tables point at → student key
``o:<link>``     row changes that arrived before their student row (replayed when it comes)
``ref:<n>:<k>``  reference rows (e.g. terms), joined into feeds by key
``t:<txId>``     row changes of a transaction whose END has not been applied yet
``q``            END markers in arrival order (the commit order) waiting for their rows
``m``            ``upto``: the position of the last applied transaction
==============  ==========================================================================

Ordering (DESIGN.md "Cross-table order"): with transaction metadata, a transaction's row changes
are buffered until its END has arrived *and* every row change it announced for the tables we read;
complete transactions are applied strictly in END order, each one's rows sorted by position, and
the affected views are published once per transaction. So the output does not depend on how the
per-table topics interleave. Without transaction metadata every row change is its own unit (in
arrival order per topic partition); a multi-table transaction can then show intermediate views.
Only row changes that carry Debezium's ``transaction`` block are buffered (the connector sets it
when ``provide.transaction.metadata`` is on, and then writes the END).

Snapshot rows (op ``r`` / ``source.snapshot`` first|true|last) all share one position and carry no
transaction block, and they arrive interleaved across every change topic and partition in no fixed
order. They are *held* (``s:``/``si:``/``s`` keys below; a re-delivered row replaces the earlier copy
of the same table + key) and applied as one unit when the snapshot is complete, sorted by
:meth:`Normalizer.snapshot_order` (references, the student table, then the other tables in mapping
order; primary key within a table): each affected student's view is published once, with the
lineage of all its snapshot rows, so a new admit gives one complete Create whose id does not depend
on arrival order. Who decides "complete": the Kafka stage (``hold_streamed=True``: streamed work
waits behind the snapshot in ``sp`` / the END queue, and the stage calls :meth:`release_snapshot`
once it has consumed everything produced before the snapshot's end); the pure pipeline
(``hold_streamed=False``) releases it just before the first streamed change is applied, or at the
end of the feed (:meth:`finish`).

==============  ==========================================================================
``s``            the held snapshot: ``k`` id chunks, ``n`` rows, ``last`` ("last" row seen),
                 ``ended`` (a streamed record seen after it)
``s:<row id>``   one held snapshot row (the last copy delivered)
``si:<n>``       the row ids of the held snapshot, in chunks of :data:`SNAPSHOT_CHUNK`
``sp``           streamed row changes applied on arrival, held behind an incomplete snapshot
==============  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from processors.normalize.canonical import SECTIONS, ValueProblem, convert, new_view
from processors.normalize.changes import RowChange, TxMarker
from processors.normalize.mapping import Feed, Mapping

US_SLOTS = ("us_physical", "us_mailing")
SNAPSHOT_CHUNK = 500   # row ids per ``si:<n>`` key: a changelog record stays small, writes stay O(rows)


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


@dataclass
class DeadItem:
    """A row change (or part of one) that could not be applied; becomes a dead letter."""

    code: str
    reason: str
    change: RowChange | None
    student_key: str | None = None
    field: str | None = None


@dataclass
class StudentUpdate:
    """A new version of one student's view, with the source changes that made it."""

    student_key: str
    view: dict[str, Any]
    lineage: list[dict[str, Any]]
    unit_id: str
    snapshot: bool


@dataclass
class Result:
    updates: list[StudentUpdate] = field(default_factory=list)
    dead: list[DeadItem] = field(default_factory=list)

    def extend(self, other: "Result") -> None:
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

    # ------------------------------------------------------------------ entry points

    def on_change(self, ch: RowChange) -> Result:
        if ch.table not in self.tables:
            if ch.snapshot and ch.snapshot_mark == "last" and self.snapshot_status() is not None:
                self._snap_flag("last")   # the snapshot's last row may be of a table we do not read
            return Result()
        if ch.snapshot and ch.op != "t" and ch.snapshot_mark != "incremental":
            self._hold_snapshot(ch)
            return Result()
        meta = self.kv.get("m") or {}
        upto = tuple(meta.get("upto", (-1, -1)))
        if not self.use_transactions or ch.snapshot or not ch.in_tx or ch.tx_id is None or ch.position <= upto:
            if self.snapshot_status() is not None:
                if self.hold_streamed:
                    self.kv.put("sp", [*(self.kv.get("sp") or []), ch.to_json()])
                    self._snap_flag("ended")
                    return Result()
                out = self._release_rows()
                out.extend(self._apply_unit([ch]))
                return out
            return self._apply_unit([ch])
        key = f"t:{ch.tx_id}"
        buf = list(self.kv.get(key) or [])
        buf.append(ch.to_json())
        self.kv.put(key, buf)
        return self._flush()

    def on_marker(self, marker: TxMarker) -> Result:
        if self.snapshot_status() is not None:
            self._snap_flag("ended")   # transaction markers only come from streaming, after the snapshot
        if marker.status != "END" or marker.tx_id is None or not self.use_transactions:
            return Result()
        counts = {t: n for t, n in marker.counts.items() if t in self.tables}
        q = self.kv.get("q") or []
        entry = {"tx": marker.tx_id, "counts": counts, "total": marker.event_count, "by_table": bool(marker.counts)}
        if marker.lsn is not None:
            entry["lsn"] = marker.lsn
        self.kv.put("q", [*q, entry])
        return self._flush()

    # ------------------------------------------------------------------ transactions

    def _flush(self) -> Result:
        out = Result()
        q = self.kv.get("q") or []
        done = 0
        while done < len(q):
            head = q[done]
            raw = self.kv.get(f"t:{head['tx']}") or []
            upto = tuple((self.kv.get("m") or {}).get("upto", (-1, -1)))
            # An END behind a transaction already applied means the transaction topic is not in commit
            # order (it must have one partition). Its rows that arrive late are applied on arrival (they
            # are behind ``upto``), so waiting for them would block every later transaction for good.
            late = head.get("lsn") is not None and head["lsn"] < upto[0]
            if not late:
                if head["by_table"]:
                    have: dict[str, int] = {}
                    for d in raw:
                        have[d["t"]] = have.get(d["t"], 0) + 1
                    complete = all(have.get(t, 0) >= n for t, n in head["counts"].items())
                else:
                    complete = len(raw) >= head["total"]
                if not complete:
                    break
            if self.snapshot_status() is not None:
                if self.hold_streamed:
                    break          # applied after the snapshot (release_snapshot)
                out.extend(self._release_rows())
            done += 1
            if raw:
                self.kv.put(f"t:{head['tx']}", None)
                buf = sorted((RowChange.from_json(d) for d in raw), key=lambda c: (c.position, c.table, c.offset))
                out.extend(self._apply_unit(buf))
                meta = dict(self.kv.get("m") or {})
                meta["upto"] = list(max(tuple(meta.get("upto", (-1, -1))), buf[-1].position))
                self.kv.put("m", meta)
        if done:
            self.kv.put("q", q[done:] or None)
        return out

    # ------------------------------------------------------------------ the initial snapshot

    def snapshot_status(self) -> dict[str, Any] | None:
        """The held snapshot's meta (``n`` rows, ``last``, ``ended``), None when nothing is held."""
        return self.kv.get("s")

    def snapshot_order(self, ch: RowChange) -> tuple[Any, ...]:
        """Where a snapshot row goes in the snapshot unit: independent of arrival order."""
        return (self._table_rank.get(ch.table, len(self._table_rank)), ch.table, ch.row_id)

    def _snap_flag(self, flag: str) -> None:
        meta = self.kv.get("s")
        if meta is not None and not meta.get(flag):
            self.kv.put("s", {**meta, flag: True})

    def _hold_snapshot(self, ch: RowChange) -> None:
        meta = dict(self.kv.get("s") or {"k": 0, "n": 0})
        rid = ch.row_id
        if self.kv.get(f"s:{rid}") is None:
            k = max(meta["k"] - 1, 0)
            chunk = list(self.kv.get(f"si:{k}") or [])
            if len(chunk) >= SNAPSHOT_CHUNK:
                k, chunk = k + 1, []
            chunk.append(rid)
            self.kv.put(f"si:{k}", chunk)
            meta["k"] = k + 1
            meta["n"] += 1
        self.kv.put(f"s:{rid}", ch.to_json())   # a re-delivered row (resumed snapshot): the last copy wins
        if ch.snapshot_mark == "last":
            meta["last"] = True
        self.kv.put("s", meta)

    def _release_rows(self) -> Result:
        """Apply the held snapshot rows as one unit (deterministic order) and forget them."""
        meta = self.kv.get("s")
        if meta is None:
            return Result()
        rows: list[RowChange] = []
        for k in range(meta["k"]):
            for rid in self.kv.get(f"si:{k}") or []:
                d = self.kv.get(f"s:{rid}")
                if d is not None:
                    rows.append(RowChange.from_json(d))
                    self.kv.put(f"s:{rid}", None)
            self.kv.put(f"si:{k}", None)
        self.kv.put("s", None)
        if not rows:
            return Result()
        rows.sort(key=self.snapshot_order)
        return self._apply_unit(rows)

    def release_snapshot(self) -> Result:
        """Apply the held snapshot, then the streamed work held behind it (the stage calls this once
        the snapshot is complete; :meth:`finish` at the end of a pure feed)."""
        out = self._release_rows()
        held = self.kv.get("sp") or []
        if held:
            self.kv.put("sp", None)
            for d in held:
                out.extend(self.on_change(RowChange.from_json(d)))
        if self.use_transactions:
            out.extend(self._flush())
        return out

    def finish(self) -> Result:
        """End of a pure feed: whatever snapshot is still held is complete."""
        return self.release_snapshot()

    # ------------------------------------------------------------------ applying

    def _apply_unit(self, changes: list[RowChange]) -> Result:
        res = Result()
        before: dict[str, Any] = {}
        lineage: dict[str, list[dict[str, Any]]] = {}
        for ch in changes:
            self._apply_change(ch, before, lineage, res)
        last = changes[-1]
        unit_id = f"{last.tx_id if last.tx_id is not None else 'n'}:{last.position[0]}:{last.position[1]}"
        if last.tx_id is None or last.snapshot:
            unit_id += ":" + last.row_id
        snapshot = all(c.snapshot for c in changes)
        for skey, old in before.items():
            view = self.kv.get(f"v:{skey}")
            if view is None or view == old:
                continue
            res.updates.append(StudentUpdate(skey, view, lineage[skey], unit_id, snapshot))
        return res

    def _view(self, skey: str, link: Any, before: dict[str, Any]) -> dict[str, Any]:
        view = self.kv.get(f"v:{skey}")
        if skey not in before:
            # copy on first write in a unit: published views are never mutated afterwards
            before[skey] = view
            view = orjson.loads(orjson.dumps(view)) if view is not None else None  # JSON data only: faster than deepcopy
            if view is not None:
                self.kv.put(f"v:{skey}", view)
        if view is None:
            view = new_view(skey, None if link is None else str(link))
        return view

    def _apply_change(self, ch: RowChange, before: dict[str, Any], lineage: dict[str, list[dict[str, Any]]],
                      res: Result) -> None:
        idx_key = f"r:{ch.row_id}"
        idx = self.kv.get(idx_key) or {}
        if idx and tuple(idx["p"]) >= ch.position:
            return  # already applied (at-least-once source) or older than what we have
        if ch.op == "t":
            res.dead.append(DeadItem("truncate", f"table {ch.table} was truncated; sevisflow does not apply "
                                     "truncates (re-snapshot the table)", ch))
            return
        ref = self.mapping.reference_of(ch.table)
        if ref is not None:
            row = ch.after if ch.after is not None else ch.before or {}
            if ref.key not in row:
                res.dead.append(DeadItem("mapping_missing_column", f"reference {ref.name}: table {ch.table} has no "
                                         f"column {ref.key!r} (fix the mapping file)", ch, field=ref.key))
                return
            self.kv.put(f"ref:{ref.name}:{row[ref.key]}", ch.after)
            self.kv.put(idx_key, {"p": list(ch.position)})
            if not self.mapping.feeds_of(ch.table):
                return
        old_contrib = [tuple(c) for c in idx.get("c", [])]
        if ch.op == "d":
            new_contrib: list[tuple[Any, ...]] = []
            values: dict[tuple[Any, ...], dict[str, Any]] = {}
        else:
            try:
                new_contrib, values = self._contributions(ch, res)
            except _Skip:
                self.kv.put(idx_key, {"p": list(ch.position), "c": [list(c) for c in old_contrib]})
                return
            if new_contrib is None:  # orphan, parked until its student row arrives
                return
        touched: set[str] = set()
        for c in old_contrib:
            if c not in new_contrib:
                self._remove(c, ch.row_id, before, touched)
        for c in new_contrib:
            self._set(c, values[c], ch, before, touched)
        self.kv.put(idx_key, {"p": list(ch.position), "c": [list(c) for c in new_contrib]})
        for skey in touched:
            lineage.setdefault(skey, []).append(ch.lineage())
        # the student row arrived: replay what waited for it
        if ch.table == self.mapping.student_table and ch.after is not None:
            link = ch.after.get(self.mapping.student_id)
            parked = self.kv.get(f"o:{link}")
            if parked:
                self.kv.put(f"o:{link}", None)
                for d in sorted(parked, key=lambda d: tuple(d["pos"])):
                    self._apply_change(RowChange.from_json(d), before, lineage, res)

    def _contributions(self, ch: RowChange, res: Result) -> tuple[Any, Any]:
        row = ch.after or {}
        contrib: list[tuple[Any, ...]] = []
        values: dict[tuple[Any, ...], dict[str, Any]] = {}
        feeds = self.mapping.feeds_of(ch.table)
        for feed in feeds:
            missing = sorted(feed.columns - row.keys())
            if missing:
                res.dead.append(DeadItem("mapping_missing_column",
                                         f"the mapping reads column {missing[0]!r} of {ch.table}, which the change "
                                         f"event does not have (fix {self.mapping.origin} or the capture)",
                                         ch, field=missing[0]))
                raise _Skip
        for fi, feed in enumerate(self.mapping.feeds):
            if feed.table != ch.table:
                continue
            skey = self._student_of(feed, row, ch, res)
            if skey is None:
                return None, None
            if any(row.get(c) != v for c, v in feed.where.items()):
                continue
            slot = self._slot(feed, row, ch, res, skey)
            vals = self._convert(feed, row, slot, ch, res, skey)
            c = (skey, feed.section, slot, fi)
            contrib.append(c)
            values[c] = vals
        return contrib, values

    def _student_of(self, feed: Feed, row: dict[str, Any], ch: RowChange, res: Result) -> str | None:
        m = self.mapping
        if feed.table == m.student_table and feed.link is None:
            skey = row.get(m.student_key)
            if skey is None or skey == "":
                res.dead.append(DeadItem("missing_student_key", f"{ch.table} row has no student key "
                                         f"({m.student_key})", ch, field=m.student_key))
                raise _Skip
            link = row.get(m.student_id)
            self.kv.put(f"l:{link}", str(skey))
            return str(skey)
        link = row.get(feed.link or "")
        if link is None:
            res.dead.append(DeadItem("missing_link", f"{ch.table} row does not say which student it belongs to "
                                     f"({feed.link} is null)", ch, field=feed.link))
            raise _Skip
        skey = self.kv.get(f"l:{link}")
        if skey is None:
            parked = list(self.kv.get(f"o:{link}") or [])
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
            res.dead.append(DeadItem("missing_field", f"{ch.table}.{feed.slot_column} is null", ch, skey,
                                     feed.slot_column))
            raise _Skip
        if feed.slots is not None:
            if str(raw) not in feed.slots:
                res.dead.append(DeadItem("bad_code", f"{ch.table}.{feed.slot_column}: value not listed in the "
                                         f"mapping's slots ({', '.join(feed.slots)})", ch, skey, feed.slot_column))
                raise _Skip
            return feed.slots[str(raw)]
        return str(raw)

    def _convert(self, feed: Feed, row: dict[str, Any], slot: str, ch: RowChange, res: Result,
                 skey: str) -> dict[str, Any]:
        sec = SECTIONS[feed.section]
        ref_row: dict[str, Any] | None = None
        if feed.lookup:
            ref_row = self.kv.get(f"ref:{feed.lookup.reference}:{row.get(feed.lookup.on)}")
        out: dict[str, Any] = {}
        problems: list[DeadItem] = []
        for spec in feed.fields:
            raw = (ref_row or {}).get(spec.column) if spec.from_lookup else row.get(spec.column)
            ft = sec.fields[spec.name]
            fname = f"{feed.section}.{spec.name}"
            try:
                if raw is None:
                    out[spec.name] = None
                elif ft.kind == "enum":
                    table = self.mapping.value_table(ft.values or "")
                    assert table is not None
                    found, val = table.lookup(raw)
                    if not found:
                        raise ValueProblem("bad_code", f"value not in the mapping's [values.{table.name}] table")
                    if isinstance(val, dict):
                        out[spec.name] = val.get("value")
                        for k, v in val.items():
                            if k != "value":
                                out[f"{spec.name}_{k}"] = v
                    else:
                        out[spec.name] = val
                else:
                    out[spec.name] = convert(ft, raw, spec.scale)
                    if feed.section == "address" and spec.name == "state" and slot in US_SLOTS \
                            and out[spec.name] is not None:
                        found, val = self.mapping.values["us_state"].lookup(out[spec.name])
                        if not found:
                            raise ValueProblem("bad_code", "not a US state name or code")
                        out[spec.name] = val
            except ValueProblem as p:
                problems.append(DeadItem(p.code, f"{ch.table}.{spec.column} → {fname}: {p.reason}", ch, skey, fname))
        if problems:
            res.dead.extend(problems)
            raise _Skip
        return out

    # ------------------------------------------------------------------ view edits

    def _set(self, c: tuple[Any, ...], vals: dict[str, Any], ch: RowChange, before: dict[str, Any],
             touched: set[str]) -> None:
        skey, section, slot, fi = c
        view = self._view(skey, None, before)
        sec = SECTIONS[section]
        if section == "student" and ch.table == self.mapping.student_table and self.mapping.feeds[fi].link is None:
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
        view = self.kv.get(f"v:{skey}")
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
        self.kv.put(f"v:{view['student_key']}", view)
