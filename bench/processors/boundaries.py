"""What each Avro/JSON boundary of normalize and sevis_events costs per record, and per row change (issue 16).

``python -m bench.processors.boundaries [--students N] [--repeat R] [--json-out PATH]`` — pure CPU, no Kafka.

The records are the real ones of ``python -m bench.processors``' workload: a generated school history in
Debezium JSON (:class:`SisFeed`, :func:`testkit.school.school_history`) through :class:`PurePipeline`,
which gives the student views and SEVIS events; the published StudentView bytes come from normalize's own
``NormalizeStage.outputs`` and the event bytes from the registry, as the stages write them. normalize's
state values are caught as its ``StoreKV`` writes them: every key put since the last flush, JSON-encoded
once per flush, a flush per source transaction (the Kafka stage flushes once per Kafka transaction of up
to 2,000 records, which merges more rewrites, so the count here is an upper bound).

Per boundary: bytes per record, µs to encode and to decode one record (the mean over all records of a
pass, median of R passes), and how many of them one row change causes — so each shows as a share of the
pure per-row-change cost that ``bench.processors`` reports (mapping, views, derivation; no I/O). Timing
only: whether a format should change is argued in bench/README.md, "Avro/JSON boundaries".
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import fastavro
import orjson

from bench.processors.__main__ import MAPPING, pure
from sevisflow.core.serde import registry
from sevisflow.processors.normalize.changes import RowChange, parse_change, parse_tx_marker
from sevisflow.processors.normalize.debezium import Record, SisFeed
from sevisflow.processors.normalize.stage import NormalizeStage, NormalizeStore
from sevisflow.processors.normalize.view import DictKV, Result
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
from testkit.school import ORG, school_history
from testkit.settings import make_settings

STUDENT_SCHEMA = "sevisflow.students.StudentView"
EVENT_SCHEMA = "sevisflow.events.SevisEvent"
KAFKA_BATCH = 2000  # records per Kafka transaction in normalize's loop (build_loop's batch_size)
EMBEDDED = ("payload_json", "before_json", "after_json")


class FlushingKV:
    """A DictKV that keeps what normalize's StoreKV writes to the changelog: each key put since the last
    :meth:`flush`, JSON-encoded once (tombstones are not JSON and are left out). It wraps a DictKV rather
    than subclassing it: DictKV is compiled (setup.py), and a Python class cannot inherit from it."""

    def __init__(self) -> None:
        self.kv = DictKV()
        self.data = self.kv.data
        self.dirty: set[str] = set()
        self.batch_dirty: set[str] = set()
        self.written: list[bytes] = []
        self.batch_writes = 0  # what a flush per Kafka transaction of KAFKA_BATCH records would write

    def get(self, key: str) -> Any:
        return self.kv.get(key)

    def put(self, key: str, value: Any) -> None:
        self.kv.put(key, value)
        self.dirty.add(key)
        self.batch_dirty.add(key)

    def flush(self) -> None:
        self.written.extend(orjson.dumps(self.data[k]) for k in self.dirty if k in self.data)
        self.dirty.clear()

    def end_batch(self) -> None:
        self.batch_writes += sum(1 for k in self.batch_dirty if k in self.data)
        self.batch_dirty.clear()


@dataclass
class Samples:
    """The records at every boundary, from one run of the workload."""

    students: int
    changes: list[Record]  # row changes as the connector writes them (no wrapper, as SisFeed's default)
    wrapped: list[Record]  # the same history with the JsonConverter's {"schema", "payload"} wrapper
    markers: list[Record]  # transaction BEGIN/END records
    views: list[dict[str, Any]]  # each student version's view, as the Normalizer made it
    student_values: list[bytes]  # the StudentView records as normalize publishes them
    events: list[dict[str, Any]]  # SEVIS event records as derive makes them
    state_values: list[bytes]  # normalize's changelog values
    prev_view_reads: int  # versions whose student had a previous view (sevis_events loads it from its state)
    state_batch_writes: int
    counts: dict[str, int] = field(default_factory=dict)


def collect(students: int) -> Samples:
    """Run the workload once (untimed) and keep the records at each boundary."""
    feed = SisFeed(primary_keys={"public.term": ("term_id",)})
    school_history(feed, students)
    wrapped_feed = SisFeed(primary_keys={"public.term": ("term_id",)}, schema_wrapper=True)
    school_history(wrapped_feed, students)

    pipe = PurePipeline(MAPPING, org_id=ORG)
    kv = FlushingKV()
    pipe.kv = pipe.normalizer.kv = kv  # nothing was written yet: the Normalizer starts on this store
    out = PureOutput()
    for i, r in enumerate(feed.records, 1):
        pipe.feed_one(r.topic, r.key, r.value, out)
        marker = parse_tx_marker(r.value) if r.topic == feed.tx_topic else None
        if marker is not None and marker.status == "END":
            kv.flush()  # the end of a source transaction
        if i % KAFKA_BATCH == 0:
            kv.end_batch()
    pipe.finish(out)
    kv.flush()
    kv.end_batch()

    stage = NormalizeStage(make_settings(school={"org_id": ORG}), MAPPING, NormalizeStore())
    student_values = [o.value for o in stage.outputs(Result(updates=out.views), None) if o.value is not None]
    seen: set[str] = set()
    prev_reads = 0
    for u in out.views:
        prev_reads += u.student_key in seen
        seen.add(u.student_key)

    def is_change(r: Record) -> bool:
        return r.value is not None and not r.topic.endswith(".transaction")

    changes = [r for r in feed.records if is_change(r)]
    return Samples(
        students=students,
        changes=changes,
        wrapped=[r for r in wrapped_feed.records if is_change(r)],
        markers=[r for r in feed.records if r.topic == feed.tx_topic and r.value is not None],
        views=[u.view for u in out.views],
        student_values=student_values,
        events=out.events,
        state_values=kv.written,
        prev_view_reads=prev_reads,
        state_batch_writes=kv.batch_writes,
        counts={
            "row_changes": len(changes),
            "tx_markers": sum(1 for r in feed.records if r.topic == feed.tx_topic),
            "student_versions": len(out.views),
            "events": len(out.events),
            "state_writes": len(kv.written),
        },
    )


def per_record_us(fn: Callable[[Any], Any], items: Sequence[Any], repeat: int) -> float:
    """µs per call of ``fn`` over ``items``: the mean of one pass, median of ``repeat`` passes (after a warm-up)."""
    for x in items[:200]:
        fn(x)
    runs = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        runs.append((time.perf_counter() - t0) / len(items) * 1e6)
    return statistics.median(runs)


def _mean_bytes(blobs: Sequence[bytes]) -> float:
    return sum(map(len, blobs)) / len(blobs)


def _decoded(values: Sequence[bytes], schema: str) -> list[dict[str, Any]]:
    return [registry().decode(v, schema) for v in values]


def _embedded_json(e: dict[str, Any]) -> list[bytes]:
    return [e[k].encode() for k in EMBEDDED if e.get(k)]


def _dump_embedded(parsed: list[tuple[Any, ...]]) -> None:
    """payload_json plain, before/after with sorted keys: as derive writes them."""
    for value, sort in parsed:
        orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort else None)


def _load_all(blobs: list[bytes]) -> None:
    for b in blobs:
        orjson.loads(b)


def _as_one_document(rec: dict[str, Any], embedded: Sequence[str]) -> dict[str, Any]:
    """The record as one JSON document, its embedded JSON strings as nested values (``view_json`` → ``view``)."""
    doc = {k: v for k, v in rec.items() if k not in embedded}
    for k in embedded:
        doc[k.removesuffix("_json")] = orjson.loads(rec[k]) if rec.get(k) else None
    return doc


def _where(ch: RowChange | None) -> tuple[Any, ...]:
    return (None,) if ch is None else (ch.table, ch.op, ch.key, ch.position, ch.tx_id, sorted(ch.after or {}))


def round_trips(s: Samples) -> dict[str, bool]:
    """Each boundary's decode gives back what was encoded (checked on every sample, untimed)."""
    reg = registry()
    students = _decoded(s.student_values, STUDENT_SCHEMA)
    event_values = [reg.encode(EVENT_SCHEMA, e) for e in s.events]
    return {
        "change": all(
            orjson.dumps(orjson.loads(r.value or b"")) == r.value
            and parse_change(r.key, orjson.dumps(orjson.loads(r.value or b"")), r.topic)
            == parse_change(r.key, r.value, r.topic)
            for r in s.changes
        ),
        "change_wrapped": all(  # the wrapper's schema turns dates into ISO text, so compare what locates the row
            _where(parse_change(r.key, r.value, r.topic)) == _where(parse_change(c.key, c.value, c.topic))
            for r, c in zip(s.wrapped, s.changes, strict=True)
        ),
        "tx_marker": all(orjson.dumps(orjson.loads(r.value or b"")) == r.value for r in s.markers),
        "student_avro": all(
            reg.encode(STUDENT_SCHEMA, d) == v for d, v in zip(students, s.student_values, strict=True)
        ),
        "view_json": all(
            orjson.loads(d["view_json"]) == view and orjson.dumps(view).decode() == d["view_json"]
            for d, view in zip(students, s.views, strict=True)
        ),
        "student_one_json": all(
            orjson.loads(orjson.dumps(_as_one_document(d, ["view_json"]))) == _as_one_document(d, ["view_json"])
            for d in students
        ),
        "event_avro": all(
            {**reg.decode(v, EVENT_SCHEMA), **e} == reg.decode(v, EVENT_SCHEMA)
            for v, e in zip(event_values, s.events, strict=True)
        ),
        "event_embedded_json": all(
            orjson.dumps(orjson.loads(e["payload_json"])).decode() == e["payload_json"] for e in s.events
        ),
        "state": all(orjson.dumps(orjson.loads(b)) == b for b in s.state_values),
        "avro_codec_writes_fastavros_bytes": all(
            _fastavro_bytes(schema, d) == v[10:]
            for schema, records, values in (
                (STUDENT_SCHEMA, students, s.student_values),
                (EVENT_SCHEMA, s.events, event_values),
            )
            for d, v in zip(records, values, strict=True)
        ),
    }


def _fastavro_bytes(schema: str, record: dict[str, Any]) -> bytes:
    """``record`` as fastavro writes it with the registry's options (the body, without the single-object header)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, registry().schema(schema), record, strict_allow_default=True)
    return buf.getvalue()


def _row(
    name: str,
    items: int,
    nbytes: float,
    enc_us: float | None,
    dec_us: float | None,
    enc_per_rc: float,
    dec_per_rc: float,
    note: str,
    alternative: bool = False,
    in_pure: tuple[bool, bool] = (False, False),
    outside: str = "",
) -> dict[str, Any]:
    """One boundary; ``in_pure`` says whether its (encode, decode) already runs inside the pure figure, and
    ``outside`` names who pays what is not (the connector, or the stages around the pure work)."""
    enc_rc, dec_rc = (enc_us or 0.0) * enc_per_rc, (dec_us or 0.0) * dec_per_rc
    return {
        "boundary": name,
        "records": items,
        "bytes_per_record": nbytes,
        "encode_us": enc_us,
        "decode_us": dec_us,
        "encodes_per_row_change": enc_per_rc,
        "decodes_per_row_change": dec_per_rc,
        "us_per_row_change": enc_rc + dec_rc,
        "us_in_pure": enc_rc * in_pure[0] + dec_rc * in_pure[1],
        "us_in_connector": (enc_rc * (not in_pure[0]) + dec_rc * (not in_pure[1])) if outside == "connector" else 0.0,
        "alternative": alternative,
        "note": note,
    }


def _without_lineage(
    label: str, schema: str, records: list[dict[str, Any]], per_rc: float, repeat: int
) -> dict[str, Any]:
    """The same Avro records with ``lineage`` emptied: how much of the Avro cost the lineage array is."""
    reg = registry()
    bare = [{**r, "lineage": []} for r in records]
    values = [reg.encode(schema, r) for r in bare]
    return _row(
        f"{label} Avro with lineage emptied",
        len(bare),
        _mean_bytes(values),
        per_record_us(partial(reg.encode, schema), bare, repeat),
        per_record_us(partial(reg.decode, reader=schema), values, repeat),
        per_rc,
        per_rc,
        f"the row above without its lineage array (mean {sum(len(r['lineage']) for r in records) / len(records):.1f} entries)",
        alternative=True,
    )


def _fastavro_alone(
    label: str, schema: str, records: list[dict[str, Any]], values: list[bytes], per_rc: float, repeat: int
) -> dict[str, Any]:
    """The same Avro records through fastavro alone, as the registry wrote and read them before its compiled
    codec (sevisflow/core/avro_codec.py): the two measured side by side in one run."""
    parsed = registry().schema(schema)
    return _row(
        f"{label} Avro through fastavro alone (before the codec)",
        len(records),
        _mean_bytes(values),
        per_record_us(partial(_fastavro_bytes, schema), records, repeat),
        per_record_us(lambda v: fastavro.schemaless_reader(io.BytesIO(v[10:]), parsed, None), values, repeat),
        per_rc,
        per_rc,
        "the row above as fastavro writes and reads it (the same bytes)",
        alternative=True,
    )


def measure(s: Samples, repeat: int) -> list[dict[str, Any]]:
    """Time every boundary on the samples; rows in pipeline order, alternatives marked."""
    reg = registry()
    rc = s.counts["row_changes"]
    views_rc = len(s.views) / rc
    events_rc = len(s.events) / rc
    students = _decoded(s.student_values, STUDENT_SCHEMA)
    event_values = [reg.encode(EVENT_SCHEMA, e) for e in s.events]
    events = _decoded(event_values, EVENT_SCHEMA)
    rows = []

    change_objs = [orjson.loads(r.value or b"") for r in s.changes]
    rows.append(
        _row(
            "Debezium change JSON → parse_change",
            len(s.changes),
            _mean_bytes([(r.key or b"") + (r.value or b"") for r in s.changes]),
            per_record_us(orjson.dumps, change_objs, repeat),
            per_record_us(lambda r: parse_change(r.key, r.value, r.topic), s.changes, repeat),
            1.0,
            1.0,
            "encode: orjson.dumps of the envelope (the connector's Python path); decode: parse_change, key + value",
            in_pure=(False, True),
            outside="connector",
        )
    )
    rows.append(
        _row(
            "  of which orjson.loads (key + value)",
            len(s.changes),
            _mean_bytes([(r.key or b"") + (r.value or b"") for r in s.changes]),
            None,
            per_record_us(lambda r: (orjson.loads(r.key or b"null"), orjson.loads(r.value or b"")), s.changes, repeat),
            0.0,
            1.0,
            "part of the row above",
            alternative=True,
        )
    )
    wrapped_objs = [orjson.loads(r.value or b"") for r in s.wrapped]
    rows.append(
        _row(
            "Debezium JSON with schemas.enable wrapper",
            len(s.wrapped),
            _mean_bytes([(r.key or b"") + (r.value or b"") for r in s.wrapped]),
            per_record_us(orjson.dumps, wrapped_objs, repeat),
            per_record_us(lambda r: parse_change(r.key, r.value, r.topic), s.wrapped, repeat),
            1.0,
            1.0,
            "the JsonConverter's {schema, payload} form instead of the plain envelope",
            alternative=True,
        )
    )
    marker_objs = [orjson.loads(r.value or b"") for r in s.markers]
    rows.append(
        _row(
            "transaction marker JSON → parse_tx_marker",
            len(s.markers),
            _mean_bytes([(r.key or b"") + (r.value or b"") for r in s.markers]),
            per_record_us(orjson.dumps, marker_objs, repeat),
            per_record_us(parse_tx_marker, [r.value for r in s.markers], repeat),
            len(s.markers) / rc,
            len(s.markers) / rc,
            "BEGIN and END per source transaction",
            in_pure=(False, True),
            outside="connector",
        )
    )
    rows.append(
        _row(
            "normalize state values (orjson)",
            len(s.state_values),
            _mean_bytes(s.state_values),
            per_record_us(orjson.dumps, [orjson.loads(b) for b in s.state_values], repeat),
            per_record_us(orjson.loads, s.state_values, repeat),
            len(s.state_values) / rc,
            0.0,
            "one encode per changed key per flush; decoded only on restore (or a RocksDB cache miss)",
        )
    )
    rows.append(
        _row(
            "StudentView Avro (view_json as a string)",
            len(students),
            _mean_bytes(s.student_values),
            per_record_us(partial(reg.encode, STUDENT_SCHEMA), students, repeat),
            per_record_us(partial(reg.decode, reader=STUDENT_SCHEMA), s.student_values, repeat),
            views_rc,
            views_rc,
            "registry encode in normalize, decode in sevis_events",
        )
    )
    rows.append(_fastavro_alone("StudentView", STUDENT_SCHEMA, students, s.student_values, views_rc, repeat))
    rows.append(_without_lineage("StudentView", STUDENT_SCHEMA, students, views_rc, repeat))
    view_bytes = [d["view_json"].encode() for d in students]
    rows.append(
        _row(
            "StudentView view_json (orjson)",
            len(s.views),
            _mean_bytes(view_bytes),
            per_record_us(lambda v: orjson.dumps(v).decode(), s.views, repeat),
            per_record_us(orjson.loads, [d["view_json"] for d in students], repeat),
            views_rc,
            (len(s.views) + s.prev_view_reads) / rc,
            "decoded twice per version in sevis_events: the new view, and the previous one from its state",
        )
    )
    docs = [_as_one_document(d, ["view_json"]) for d in students]
    doc_bytes = [orjson.dumps(d) for d in docs]
    rows.append(
        _row(
            "StudentView as one JSON document (alternative)",
            len(docs),
            _mean_bytes(doc_bytes),
            per_record_us(orjson.dumps, docs, repeat),
            per_record_us(orjson.loads, doc_bytes, repeat),
            views_rc,
            views_rc,
            "JSON throughout: replaces both rows above (the previous-view read stays)",
            alternative=True,
        )
    )
    rows.append(
        _row(
            "SevisEvent Avro (payload etc. as strings)",
            len(events),
            _mean_bytes(event_values),
            per_record_us(partial(reg.encode, EVENT_SCHEMA), s.events, repeat),
            per_record_us(partial(reg.decode, reader=EVENT_SCHEMA), event_values, repeat),
            events_rc,
            events_rc,
            "registry encode in sevis_events, decode in the batcher",
        )
    )
    rows.append(_fastavro_alone("SevisEvent", EVENT_SCHEMA, s.events, event_values, events_rc, repeat))
    rows.append(_without_lineage("SevisEvent", EVENT_SCHEMA, s.events, events_rc, repeat))
    embedded = [_embedded_json(e) for e in s.events]
    parsed = [[(orjson.loads(e[k]), k != "payload_json") for k in EMBEDDED if e.get(k)] for e in s.events]
    rows.append(
        _row(
            "SevisEvent payload/before/after JSON (orjson)",
            len(s.events),
            sum(sum(map(len, b)) for b in embedded) / len(embedded),
            per_record_us(_dump_embedded, parsed, repeat),
            per_record_us(_load_all, embedded, repeat),
            events_rc,
            events_rc,
            "made in derive; the batcher parses all three per event",
            in_pure=(True, False),
        )
    )
    event_docs = [_as_one_document(e, EMBEDDED) for e in events]
    event_doc_bytes = [orjson.dumps(d) for d in event_docs]
    rows.append(
        _row(
            "SevisEvent as one JSON document (alternative)",
            len(event_docs),
            _mean_bytes(event_doc_bytes),
            per_record_us(orjson.dumps, event_docs, repeat),
            per_record_us(orjson.loads, event_doc_bytes, repeat),
            events_rc,
            events_rc,
            "JSON throughout: replaces both rows above",
            alternative=True,
        )
    )
    return rows


def run(students: int, repeat: int) -> dict[str, Any]:
    """Collect the samples, time every boundary and the pure pipeline; everything the report shows."""
    s = collect(students)
    rows = measure(s, repeat)
    pure_runs = [pure(students) for _ in range(repeat)]
    pure_us = statistics.median(1e6 / p["row_changes_per_s"] for p in pure_runs)
    for r in rows:
        r["share_of_pure"] = r["us_per_row_change"] / pure_us
    chosen = [r for r in rows if not r["alternative"]]
    return {
        "students": students,
        "repeat": repeat,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "orjson": orjson.__version__,
        "fastavro": fastavro.__version__,
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "counts": {
            **s.counts,
            "prev_view_reads": s.prev_view_reads,
            "state_writes_per_kafka_batch": s.state_batch_writes,
        },
        "pure_us_per_row_change": pure_us,
        "pure_runs_s": [p["seconds"] for p in pure_runs],
        "rows": rows,
        "chosen_us_per_row_change": sum(r["us_per_row_change"] for r in chosen),
        "chosen_share_of_pure": sum(r["share_of_pure"] for r in chosen),
        "chosen_us_in_pure": sum(r["us_in_pure"] for r in chosen),
        "chosen_us_in_connector": sum(r["us_in_connector"] for r in chosen),
        "chosen_us_added_by_stages": sum(
            r["us_per_row_change"] - r["us_in_pure"] - r["us_in_connector"] for r in chosen
        ),
        "round_trips": round_trips(s),
    }


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def table(res: dict[str, Any]) -> str:
    """The result as a Markdown table (readable in a terminal, pasted as is into bench/README.md)."""
    lines = [
        "| boundary | bytes/rec | encode µs | decode µs | enc / dec per row change | µs per row change | share of pure |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        name = f"*{r['boundary'].strip()}*" if r["alternative"] else r["boundary"]
        lines.append(
            f"| {name} | {r['bytes_per_record']:,.0f} | {_fmt(r['encode_us'])} | {_fmt(r['decode_us'])} "
            f"| {r['encodes_per_row_change']:.2f} / {r['decodes_per_row_change']:.2f} "
            f"| {r['us_per_row_change']:.2f} | {r['share_of_pure']:.1%} |"
        )
    lines.append(
        f"| **all boundaries as built** (not italic) | | | | | **{res['chosen_us_per_row_change']:.2f}** "
        f"| **{res['chosen_share_of_pure']:.1%}** |"
    )
    c = res["counts"]
    lines.append("")
    lines.append(
        f"{res['students']:,} students: {c['row_changes']:,} row changes, {c['tx_markers']:,} transaction markers, "
        f"{c['student_versions']:,} student versions, {c['events']:,} events, {c['state_writes']:,} state writes "
        f"({c['state_writes_per_kafka_batch']:,} with a flush per {KAFKA_BATCH:,}-record Kafka transaction). "
        f"Pure normalize + sevis_events: {res['pure_us_per_row_change']:.1f} µs per row change "
        f"(median of {res['repeat']}). Medians of {res['repeat']} passes; italic rows are parts or alternatives."
    )
    added = res["chosen_us_added_by_stages"]
    lines.append("")
    lines.append(
        f"Of the {res['chosen_us_per_row_change']:.1f} µs per row change as built: {res['chosen_us_in_pure']:.1f} µs "
        f"already inside the pure figure (parse_change, parse_tx_marker, derive's JSON strings), "
        f"{res['chosen_us_in_connector']:.1f} µs in the connector (its encodes), {added:.1f} µs added by the "
        f"stages around the pure work (Avro, view_json, state) = {added / res['pure_us_per_row_change']:.1%} of pure."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.processors.boundaries")
    ap.add_argument("--students", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json-out", type=Path, help="write the full result (rows, counts, round trips) here")
    args = ap.parse_args(argv)
    res = run(args.students, args.repeat)
    print(table(res))
    bad = [k for k, ok in res["round_trips"].items() if not ok]
    if bad:
        print(f"round trip FAILED for: {', '.join(bad)}", file=sys.stderr)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
