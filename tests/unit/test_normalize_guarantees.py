"""normalize's guarantees at its edges, on the pure core (the Kafka stage runs the same Normalizer):

* one SIS transaction of 20,000 rows, whose buffer is larger than the changelog's message size: every
  state value stays far below that size, the bytes written per appended row stay constant (no
  re-encoding of the whole buffer), and the transaction yields exactly the events it should;
* the initial snapshot is released whatever order the inputs are read in and whatever table is
  snapshotted last (a table the mapping does not read included), with Debezium 3.x snapshot marks;
* identity: a student's rows follow a key change; a deleted student's id, reused, starts empty;
* the I-20 issue-date fallback is the commit's date in the school's time zone.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from sevisflow.processors.normalize.debezium import Record, SisFeed
from sevisflow.processors.normalize.stage import NormalizeStore
from sevisflow.processors.normalize.view import CHUNK_BYTES, Chunked, DictKV, Normalizer
from sevisflow.processors.sevis_events.derive import Context, derive
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
from tests.normalize_support import (
    N_STUDENTS,
    N_TERMS,
    STATE_MESSAGE_LIMIT,
    big_school,
    big_transaction,
    snapshot_records,
    streamed_after_snapshot,
)
from tests.scenarios import MAPPING, PKS, TABLES, School, base_rows

# ---------------------------------------------------------------------------- one 20,000-row transaction


class MeteredStore(NormalizeStore):
    """The stage's state store; records what each Kafka transaction would write to the changelog."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.largest_key = b""
        self.written = 0
        self.peak: dict[bytes, int] = {}  # the largest value each key ever had

    def commit_like_the_loop(self) -> None:
        for kv in self.staged().values():
            for k, v in kv.items():
                if v is not None:
                    self.written += len(v)
                    self.peak[k] = max(self.peak.get(k, 0), len(v))
                    if len(v) > self.largest:
                        self.largest, self.largest_key = len(v), k
        self.commit()


def run_stage_mode(pipe: PurePipeline, records: list[Record], store: MeteredStore, batch: int = 2000) -> PureOutput:
    """Feed records as the Kafka stage does: its Normalizer on its state store, one 'Kafka transaction'
    (flush + commit of the staged state) every ``batch`` records."""
    out = PureOutput()
    for i, r in enumerate(records):
        pipe.feed_one(r.topic, r.key, r.value, out, 0, i)
        st = pipe.normalizer.snapshot_status()
        if st is not None and st.get("ended"):
            pipe._take(pipe.normalizer.release_snapshot(), out)  # what the stage does once caught up
        if i % batch == batch - 1:
            store.commit_like_the_loop()
    store.commit_like_the_loop()
    return out


def stage_pipe(store: MeteredStore) -> PurePipeline:
    pipe = PurePipeline(MAPPING)
    pipe.normalizer = Normalizer(MAPPING, store.kv, use_transactions=True, hold_streamed=True)
    return pipe


@pytest.fixture(scope="module")
def big() -> dict[str, Any]:
    feed, enrollments = big_school()
    seed = list(feed.records)
    feed.records.clear()
    big_transaction(feed, enrollments)
    tx_records = list(feed.records)
    store = MeteredStore()
    pipe = stage_pipe(store)
    run_stage_mode(pipe, seed, store)
    pure = PurePipeline(MAPPING)
    pure.feed(seed)
    expected = pure.feed(tx_records)
    # the rows first and the END last, as the connector writes them; and the END read first, as a
    # consumer of the transaction topic may
    end = [r for r in tx_records if r.topic == feed.tx_topic]
    rows = [r for r in tx_records if r.topic != feed.tx_topic]
    return {
        "state": dict(store.committed_partition(0)),
        "views": dict(pipe.last_view),
        "expected": expected,
        "tx": tx_records,
        "end_first": end + rows,
        "rows": len(rows),
    }


@pytest.mark.parametrize("order", ["end_first"])  # the END read before its 20,000 rows: the harder order
def test_a_transaction_larger_than_a_changelog_record_is_chunked_linear_and_gives_the_right_events(big, order):
    assert big["rows"] == N_STUDENTS * N_TERMS == 20_000
    store = MeteredStore()
    store.load_partition(0, dict(big["state"]))  # the school, as the stage left it
    pipe = stage_pipe(store)
    pipe.last_view = dict(big["views"])
    out = run_stage_mode(pipe, big[order], store, batch=800)  # 25 Kafka transactions, as the stage commits

    # the right events: one Registration per student for the current term, nothing else
    assert Counter(e["kind"] for e in out.events) == {"Registration": N_STUDENTS}
    assert {e["student_key"] for e in out.events} == {f"S{1000 + n:08d}" for n in range(N_STUDENTS)}
    assert {orjson.loads(e["after_json"])["registration"]["status"] for e in out.events} == {"enrolled"}
    assert len({e["event_id"] for e in out.events}) == N_STUDENTS and not out.dead and not out.issues
    # ...and the same as the pure pipeline derives from the same records
    assert sorted(e["event_id"] for e in out.events) == sorted(e["event_id"] for e in big["expected"].events)

    # the premise: the transaction's buffer (its chunks at their fullest) would not fit in one record
    buffered = sum(n for k, n in store.peak.items() if k.startswith(b"t:"))
    assert buffered > STATE_MESSAGE_LIMIT, (buffered, STATE_MESSAGE_LIMIT)
    # no state value near the message size limit (8 MiB): the buffer, queue and views are chunked
    assert store.largest <= CHUNK_BYTES + 64 * 1024, (store.largest_key, store.largest)
    # linear: what the transaction's Kafka transactions write is a small multiple of the rows' own
    # size (the old single-value buffer rewrote the whole buffer at each of the 25 commits: ~13 x)
    row_bytes = sum(len(r.value or b"") for r in big[order])
    assert store.written < 4 * row_bytes, (store.written, row_bytes)
    # nothing of the transaction is left behind
    assert not [k for k, _ in store.items(0) if k.startswith((b"t:", b"q"))]


def test_the_chunked_list_keeps_order_counts_and_reads_an_old_plain_list():
    kv = DictKV()
    lst = Chunked(kv, "t:9")
    items = [{"t": "public.a" if i % 3 else "public.b", "i": i, "pad": "x" * 700} for i in range(2000)]
    for it in items:
        lst.append(it)
    assert lst.items() == items and len(lst) == 2000
    assert lst.counts() == {"public.a": 1333, "public.b": 667}
    assert max(len(orjson.dumps(v)) for v in kv.data.values()) <= CHUNK_BYTES + 1024
    assert len([k for k in kv.data if k.startswith("t:9:")]) > 2000 * 700 // CHUNK_BYTES
    for _ in range(700):
        lst.drop_first()
    assert lst.first() == items[700] and lst.items() == items[700:] and len(lst) == 1300
    lst.clear()
    assert kv.data == {}
    kv.put("q", [{"tx": 1}, {"tx": 2}])  # an END queue written by an older version
    q = Chunked(kv, "q")
    q.append({"tx": 3})
    assert q.items() == [{"tx": 1}, {"tx": 2}, {"tx": 3}] and isinstance(kv.get("q"), dict)


# ---------------------------------------------------------------------------- releasing the snapshot

ORDERS = {
    # as produced: the snapshot, then streaming
    "snapshot_first": lambda snap, st: snap + st,
    # the transaction topic (and the streamed rows) read before any snapshot row
    "stream_first": lambda snap, st: (
        [r for r in st if r.topic.endswith(".transaction")]
        + [r for r in st if not r.topic.endswith(".transaction")]
        + snap
    ),
    # the transaction topic first, then the snapshot, then the streamed rows
    "markers_first": lambda snap, st: (
        [r for r in st if r.topic.endswith(".transaction")]
        + snap
        + [r for r in st if not r.topic.endswith(".transaction")]
    ),
}


def _stage_mode(records: list[Record]) -> tuple[PurePipeline, PureOutput, list[int]]:
    """Feed in the given read order in the stage's mode; nothing may come out before the release.
    Returns where the snapshot's end became known (indices)."""
    pipe = PurePipeline(MAPPING)
    pipe.normalizer = Normalizer(MAPPING, pipe.kv, use_transactions=True, hold_streamed=True)
    out = PureOutput()
    seen = []
    for i, r in enumerate(records):
        pipe.feed_one(r.topic, r.key, r.value, out, 0, i)
        st = pipe.normalizer.snapshot_status()
        if st and (st.get("last") or st.get("ended")):
            seen.append(i)
    assert not out.views and not out.events, "everything waits until the snapshot is released"
    return pipe, out, seen


def _events(out: PureOutput) -> list[tuple[str, str, str]]:
    return sorted((e["event_id"], e["kind"], e["payload_json"]) for e in out.events)


@pytest.mark.parametrize("marks", ["2", "3"])
@pytest.mark.parametrize("unmapped_last", [False, True])
@pytest.mark.parametrize("order", sorted(ORDERS))
def test_the_snapshot_is_released_whatever_the_read_order_and_the_last_table(order, unmapped_last, marks):
    snap, streamed = snapshot_records(marks, unmapped_last), streamed_after_snapshot()
    expected = PurePipeline(MAPPING).feed(snap + streamed)
    assert [e["kind"] for e in expected.events] == ["Program.Extension", "PersonalInfo"]

    pipe, out, seen = _stage_mode(ORDERS[order](snap, streamed))
    assert seen, "the end of the snapshot must be seen"
    pipe._take(pipe.normalizer.release_snapshot(), out)
    assert _events(out) == _events(expected)
    assert [u.snapshot for u in out.views][:1] == [True]  # the snapshot unit comes first
    assert pipe.normalizer.snapshot_status() is None and pipe.kv.get("b") is True
    assert not [k for k in pipe.kv.data if k.startswith(("s:", "si:", "t:", "sp", "q"))]


@pytest.mark.parametrize("marks", ["2", "3"])
def test_an_unmapped_table_snapshotted_last_ends_the_snapshot_with_nothing_streamed(marks):
    """The SIS is idle after the snapshot: the only sign of its end is the "last" row of a table the
    mapping does not read. (Debezium 3.x's last_in_data_collection of a mapped table is not the end.)"""
    snap = snapshot_records(marks, unmapped_last=True)
    mapped = [r for r in snap if "audit_log" not in r.topic]
    pipe, _, seen = _stage_mode(mapped)
    assert seen == [], "a mapped table's last row (in its collection) does not end the snapshot"
    pipe, out, seen = _stage_mode(snap)
    assert seen == [len(snap) - 1]
    pipe._take(pipe.normalizer.release_snapshot(), out)
    assert [(u.student_key, u.snapshot) for u in out.views] == [("S00000007", True)]


def test_with_no_snapshot_the_start_up_hold_ends_with_the_first_streamed_record():
    """snapshot.mode=never: the first records are streamed; the stage holds them only until it has
    caught up with the watermarks read then (here: at once), and never holds again."""
    feed = SisFeed(primary_keys=PKS)
    rows = base_rows()
    feed.tx(*[("c", TABLES[n], None, r) for n, r in rows.items()])
    feed.tx(("u", "public.person", rows["person"], {**rows["person"], "email": "zoe@new.example"}))
    streamed = feed.records
    pipe, out, seen = _stage_mode(streamed[:1])  # a BEGIN: the snapshot question is settled
    assert seen == [0]
    pipe._take(pipe.normalizer.release_snapshot(), out)
    for i, r in enumerate(streamed[1:]):
        pipe.feed_one(r.topic, r.key, r.value, out, 0, i + 1)
    assert pipe.normalizer.snapshot_status() is None
    assert [u.student_key for u in out.views] == ["S00000007", "S00000007"]


# ---------------------------------------------------------------------------- identity


def test_after_a_student_key_change_a_termination_is_reported_under_the_new_key():
    school = School()
    assert [e["kind"] for e in school.seed_out.events] == []  # in SEVIS already: the baseline
    renamed = school.tx(("u", "person", {"school_id": "S00000099"}))
    assert renamed.events == [] and not renamed.issues
    new = next(u.view for u in renamed.views if u.student_key == "S00000099")
    old = next(u.view for u in renamed.views if u.student_key == "S00000007")
    assert new["international"] and new["student"]["sevis_id"] == "N0001234567"
    assert new["program"]["status"] == "active" and set(new["address"]) == {"us_physical", "foreign"}
    assert new["registration"] and new["finance"]
    assert not old["exists"] and not old["international"] and old["program"] == {} and old["address"] == {}
    out = school.tx(("u", "program", {"status": "DISMISSED"}))
    assert [(e["kind"], e["student_key"]) for e in out.events] == [("Status.Terminate", "S00000099")]


def test_a_student_row_deleted_and_inserted_in_one_commit_with_a_new_key_keeps_its_rows():
    """How a primary-key update is captured: a delete and an insert of the student row, one commit."""
    school = School()
    old = school.rows["person"]
    new = {**old, "school_id": "S00000123"}
    school.feed.tx(("d", "public.person", old, None), ("c", "public.person", None, new))
    school.pipe.feed(school.feed)
    school.feed.records.clear()
    school.rows["person"] = new
    out = school.tx(("u", "program", {"status": "DISMISSED"}))
    assert [(e["kind"], e["student_key"]) for e in out.events] == [("Status.Terminate", "S00000123")]


def test_a_deleted_students_id_reused_by_a_new_student_brings_none_of_the_old_rows():
    school = School()
    school.tx(("d", "person", {}))  # deleted; its other rows stay (no cascade)
    assert school.pipe.kv.get("l:7") is None and school.pipe.kv.get("lm:7") is None
    newcomer = {**base_rows()["person"], "school_id": "S00000555", "first_name": "Ana", "last_name": "Lima"}
    out = school.tx(("c", "person", newcomer))
    view = next(u.view for u in out.views if u.student_key == "S00000555")
    assert view["exists"] and view["student"]["first_name"] == "Ana"
    assert view["program"] == {} and view["address"] == {} and view["registration"] == {}
    assert view["finance"] == {} and view["student"].get("sevis_id") is None and not view["international"]
    old = school.pipe.kv.get("v:S00000007")
    assert not old["exists"] and old["program"]["status"] == "active"  # the old rows stay where they were
    # a row the SIS now links to the newcomer (it references the reused id) does follow the newcomer
    imm = {**base_rows()["immigration"], "sevis_id": None, "sevis_status": None, "visa_type": "F-1"}
    out = school.tx(("u", "immigration", imm))
    assert {u.student_key for u in out.views} >= {"S00000555"}
    assert school.pipe.kv.get("v:S00000555")["student"]["visa_type"] == "01"


# ---------------------------------------------------------------------------- I-20 issue date


def test_the_i20_issue_date_fallback_is_the_commits_date_in_the_schools_time_zone():
    school = School(sevis_id=None, status="ADMITTED")
    view = school.pipe.kv.get("v:S00000007")
    assert view["student"].get("i20_issue_date") is None
    # 2026-01-02 03:30 UTC is still 1 January in Chicago (21:30), already 2 January in UTC
    at = int(datetime(2026, 1, 2, 3, 30, tzinfo=UTC).timestamp() * 1000)

    def iss(tz: str) -> str:
        d = derive(None, view, Context("ABC214F12345000", "u1", [], at, False, tz))
        create = next(e for e in d.events if e["kind"] == "Create")
        return orjson.loads(create["payload_json"])["EducationalInfo"]["IssDate"]

    assert iss("America/Chicago") == "2026-01-01"
    assert iss("UTC") == "2026-01-02"
    assert iss("Asia/Tokyo") == "2026-01-02"
    # the pure pipeline (and so `sevisflow verify`) passes the same zone through
    pipe = PurePipeline(MAPPING, timezone="America/Chicago")
    out = PureOutput()
    from sevisflow.processors.normalize.view import StudentUpdate

    pipe.apply_view(StudentUpdate("S00000007", view, [{"commit_ts_ms": at}], "u1", False), out)
    assert orjson.loads(out.events[0]["payload_json"])["EducationalInfo"]["IssDate"] == "2026-01-01"


def test_a_key_change_before_sevis_returned_an_id_is_a_dso_item_not_a_second_create():
    school = School(sevis_id=None, status="ACTIVE")
    assert [e["kind"] for e in school.seed_out.events] == ["Create"]
    out = school.tx(("u", "person", {"school_id": "S00000099"}))
    assert out.events == []
    assert [(k, i.code) for k, i in out.issues] == [("S00000099", "student_key_changed")]
    later = school.tx(("u", "person", {"email": "zoe@elsewhere.example"}))
    assert [e["kind"] for e in later.events if e["kind"] == "Create"] == []


class _Msg:
    """A consumed record, as the events stage's handler sees it (pure-logic test of the handler)."""

    def __init__(self, key: bytes, value: bytes) -> None:
        self._key, self._value = key, value

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "sevisflow.students"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


@pytest.mark.parametrize("tz,day", [("America/Chicago", "2026-01-01"), ("Europe/Berlin", "2026-01-02")])
def test_the_events_stage_dates_the_i20_in_the_configured_school_time_zone(tz, day):
    from sevisflow.core.kafka_io import StateStore
    from sevisflow.core.serde import registry
    from sevisflow.processors.sevis_events.stage import EVENT_SCHEMA, STUDENT_SCHEMA, EventsStage
    from tests.helpers import make_settings

    school = School(sevis_id=None, status="ADMITTED")
    view = school.pipe.kv.get("v:S00000007")
    at = int(datetime(2026, 1, 2, 3, 30, tzinfo=UTC).timestamp() * 1000)
    rec = {
        "student_key": "S00000007",
        "exists": True,
        "international": True,
        "sevis_id": None,
        "view_json": orjson.dumps(view).decode(),
        "unit_id": "u1",
        "snapshot": False,
        "commit_ts_ms": at,
        "lineage": [],
        "processor_version": "test",
    }
    settings = make_settings(school={"timezone": tz})
    outs = EventsStage(settings).handle(_Msg(b"S00000007", registry().encode(STUDENT_SCHEMA, rec)), StateStore())
    events = [registry().decode(o.value, EVENT_SCHEMA) for o in outs if o.topic == settings.topics.events]
    create = next(e for e in events if e["kind"] == "Create")
    assert orjson.loads(create["payload_json"])["EducationalInfo"]["IssDate"] == day


def test_a_key_change_in_a_student_row_that_is_refused_moves_nothing():
    """A student row with a bad value is a dead letter and is not applied; its new key is not either."""
    school = School()
    out = school.tx(("u", "person", {"school_id": "S00000099", "birth_date": "31/02/2002"}))
    assert [d.code for d in out.dead] == ["bad_date"] and out.views == []
    assert school.pipe.kv.get("l:7") == "S00000007"
    out = school.tx(("u", "program", {"status": "DISMISSED"}))
    assert [(e["kind"], e["student_key"]) for e in out.events] == [("Status.Terminate", "S00000007")]


def test_a_key_given_up_in_a_key_change_and_reused_later_is_a_plain_new_student():
    school = School()
    school.tx(("u", "person", {"school_id": "S00000099"}))
    assert school.pipe.kv.get("v:S00000007")["rekeyed_to"] == "S00000099"
    other = {**base_rows()["person"], "person_id": 8, "school_id": "S00000007", "first_name": "Ana"}
    school.tx(("c", "person:other", other))
    view = school.pipe.kv.get("v:S00000007")
    assert view["exists"] and "rekeyed_to" not in view and "rekeyed_from" not in view
    assert view["program"] == {} and view["student"]["first_name"] == "Ana"


def test_the_key_change_is_in_both_views_lineage_once():
    school = School()
    out = school.tx(("u", "person", {"school_id": "S00000099"}))
    assert sorted(u.student_key for u in out.views) == ["S00000007", "S00000099"]
    assert all([ln["table"] for ln in u.lineage] == ["public.person"] for u in out.views)
