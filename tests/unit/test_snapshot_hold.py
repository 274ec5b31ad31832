"""normalize holds the initial snapshot and applies it as one deterministic unit.

Snapshot rows (op ``r``, source.snapshot first/true/last) all share one LSN, carry no transaction
block and reach normalize interleaved across every change topic and partition in no fixed order.
Applied one by one on arrival, a new admit's Create was derived as soon as the record first became
complete — its id and lineage followed the arrival order, and a dependent or US address snapshotted
later was never sent. Now the snapshot is held until it is complete, sorted, and each student's view
is published once: same views and event ids for every interleaving, and the Create is complete.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from datetime import date
from typing import Any

import orjson
import pytest

from sevisflow.deploy.sis.activity import generate_activity
from sevisflow.deploy.sis.generator import generate_school
from sevisflow.deploy.sis.model import PRIMARY_KEYS, TABLE_ORDER
from sevisflow.processors.normalize import view as view_module
from sevisflow.processors.normalize.debezium import Record, SisFeed
from sevisflow.processors.normalize.mapping import load_mapping
from sevisflow.processors.normalize.view import MAX_PARKED_PER_STUDENT_ID, Chunked, DictKV, Normalizer
from sevisflow.processors.sevis_events.pure import PureOutput, PurePipeline
from tests.helpers import REPO
from tests.normalize_support import as_debezium_snapshot

MAPPING = load_mapping(REPO / "deploy/sis/mapping.toml")
TODAY = date(2026, 10, 5)
PKS = {f"public.{t}": cols for t, cols in PRIMARY_KEYS.items()}
SNAPSHOT_LSN = 2_000_000


def _school() -> tuple[dict[str, list[dict[str, Any]]], str]:
    """A small reference school, one of whose new admits also has a US address and a spouse."""
    school = generate_school(60, 0.5, 7, TODAY)
    feed = SisFeed(primary_keys=PKS)
    for table in TABLE_ORDER:
        for row in school[table]:
            feed.tx(("r", f"public.{table}", None, row), snapshot=True)
    creates = sorted(e["student_key"] for e in PurePipeline(MAPPING).feed(feed.records).events if e["kind"] == "Create")
    assert creates, "the school must have new admits without a SEVIS ID"
    skey = creates[0]
    pid = next(p["person_id"] for p in school["person"] if p["school_id"] == skey)
    school["address"].append(
        {
            "address_id": 90_001,
            "person_id": pid,
            "kind": "US_PHYSICAL",
            "line1": "12 College Avenue",
            "line2": None,
            "city": "Springfield",
            "state": "Illinois",
            "postal_code": "62701",
            "country": "US",
        }
    )
    spouse = (
        dict(school["dependent"][0])
        if school["dependent"]
        else {
            "first_name": "Cheikh",
            "last_name": "Ndiaye",
            "birth_date": date(1996, 12, 14),
            "gender": "M",
            "birth_country": "SN",
            "citizenship_country": "SN",
            "relationship": "SPOUSE",
            "visa_type": "F-2",
            "status": "ACTIVE",
        }
    )
    spouse.update(dependent_id=90_001, person_id=pid)
    school["dependent"].append(spouse)
    return school, skey


def _as_debezium_snapshot(records: list[Record]) -> list[Record]:
    return as_debezium_snapshot(records, SNAPSHOT_LSN)


def _snapshot(school: dict[str, list[dict[str, Any]]], late: tuple[str, ...] = ()) -> list[Record]:
    """The snapshot in connector order (table by table); rows of the ``late`` tables' extra rows last."""
    feed = SisFeed(primary_keys=PKS)
    tail = []
    for table in TABLE_ORDER:
        for row in school[table]:
            if table in late and any(v == 90_001 for k, v in row.items() if k.endswith("_id")):
                tail.append((table, row))
                continue
            feed.tx(("r", f"public.{table}", None, row), snapshot=True)
    for table, row in tail:
        feed.tx(("r", f"public.{table}", None, row), snapshot=True)
    return _as_debezium_snapshot(feed.records)


def _partitioned(records: list[Record]) -> dict[tuple[str, int], list[tuple[int, Record]]]:
    parts: dict[tuple[str, int], list[tuple[int, Record]]] = {}
    for r in records:
        n = 1 if r.topic.endswith(".transaction") else 3
        lst = parts.setdefault((r.topic, zlib.crc32(r.key or b"") % n), [])
        lst.append((len(lst), r))
    return parts


def _feed(pipe: PurePipeline, records: list[Record], seed: int | None) -> PureOutput:
    """Feed as a consumer of 3 partitions per topic would: each partition in order, partitions
    interleaved at random (``seed``) or one after the other (None)."""
    parts = _partitioned(records)
    out = PureOutput()
    rng = random.Random(seed)
    while parts:
        k = rng.choice(sorted(parts)) if seed is not None else sorted(parts)[0]
        off, rec = parts[k].pop(0)
        if not parts[k]:
            del parts[k]
        pipe.feed_one(rec.topic, rec.key, rec.value, out, k[1], off)
    pipe.finish(out)
    return out


def _summary(out: PureOutput) -> tuple[Any, ...]:
    views = sorted(
        (
            u.student_key,
            orjson.dumps(u.view, option=orjson.OPT_SORT_KEYS),
            u.unit_id,
            u.snapshot,
            orjson.dumps(u.lineage, option=orjson.OPT_SORT_KEYS),
        )
        for u in out.views
    )
    events = sorted(
        (
            e["event_id"],
            e["kind"],
            e["student_key"],
            e["payload_json"],
            orjson.dumps(e["lineage"], option=orjson.OPT_SORT_KEYS),
        )
        for e in out.events
    )
    return views, events, sorted((d.code, d.student_key or "") for d in out.dead)


@pytest.fixture(scope="module")
def school() -> tuple[dict[str, list[dict[str, Any]]], str]:
    return _school()


def test_the_snapshot_gives_the_same_views_and_event_ids_however_it_interleaves(school):
    data, _ = school
    records = _snapshot(data)
    reference = _summary(_feed(PurePipeline(MAPPING), records, None))
    assert reference[1], "the snapshot must produce Creates"
    assert {k for _, k, *_ in reference[1]} == {"Create"}
    for seed in range(6):
        assert _summary(_feed(PurePipeline(MAPPING), records, seed)) == reference, f"interleaving {seed}"
    # the order the connector read the tables in does not matter either
    shuffled = list(records)
    random.Random(99).shuffle(shuffled)
    got = _summary(_feed(PurePipeline(MAPPING), _as_debezium_snapshot(shuffled), 3))[1]
    assert [e[:4] for e in got] == [e[:4] for e in reference[1]]  # lineage offsets differ, ids do not


def test_each_student_gets_one_view_with_the_lineage_of_all_its_snapshot_rows(school):
    data, skey = school
    out = _feed(PurePipeline(MAPPING), _snapshot(data), 1)
    per_student = Counter(u.student_key for u in out.views)
    assert per_student and set(per_student.values()) == {1}
    assert all(u.snapshot for u in out.views)
    view = next(u for u in out.views if u.student_key == skey)
    tables = Counter(ln["table"] for ln in view.lineage)
    assert tables["public.dependent"] == 1 and tables["public.address"] == 2 and tables["public.person"] == 1


def test_the_create_includes_a_dependent_and_us_address_snapshotted_after_the_record_was_ready(school):
    data, skey = school
    out = _feed(PurePipeline(MAPPING), _snapshot(data, late=("address", "dependent")), None)
    creates = [e for e in out.events if e["student_key"] == skey]
    assert [e["kind"] for e in creates] == ["Create"]
    payload = orjson.loads(creates[0]["payload_json"])
    assert payload["USAddress"]["City"] == "Springfield"
    assert len(payload["CreateDependent"]["Dependent"]) == 1
    lineage_tables = {ln["table"] for ln in creates[0]["lineage"]}
    assert {"public.dependent", "public.address", "public.person", "public.program"} <= lineage_tables


def test_rows_re_sent_by_a_resumed_snapshot_count_once(school):
    data, _ = school
    records = _snapshot(data)
    reference = _summary(_feed(PurePipeline(MAPPING), records, 5))
    resent = records[: len(records) // 2] + records[len(records) // 3 :]  # a resume re-sends from its checkpoint
    again = _summary(_feed(PurePipeline(MAPPING), resent, 5))
    strip = lambda s: [(i, k, sk, p) for i, k, sk, p, _ in s[1]]  # noqa: E731 - offsets differ, ids must not
    assert strip(again) == strip(reference)
    assert len(again[0]) == len(reference[0])


def test_the_stage_holds_streamed_transactions_until_the_snapshot_is_released(school):
    """The Kafka stage's mode: nothing comes out before release_snapshot(), then the snapshot unit and
    the streamed transactions in order — the same as the pure pipeline."""
    data, _ = school
    activity = generate_activity(data, 15, 7, TODAY)
    from sevisflow.deploy.sis.model import World
    from tests.school_replay import feed_ops

    world, feed = World(data), SisFeed(primary_keys=PKS, lsn=SNAPSHOT_LSN + 1000)
    for tx in activity:
        feed.ts_ms = int(tx.at.timestamp() * 1000) - 1000
        feed.tx(*feed_ops(world, tx))
    records = _snapshot(data) + feed.records

    pure = PurePipeline(MAPPING)
    expected = _summary(_feed(pure, records, None))

    staged = PurePipeline(MAPPING)
    staged.normalizer = Normalizer(MAPPING, staged.kv, use_transactions=True, hold_streamed=True)
    out = PureOutput()
    parts = _partitioned(records)
    rng = random.Random(4)
    while parts:
        k = rng.choice(sorted(parts))
        off, rec = parts[k].pop(0)
        if not parts[k]:
            del parts[k]
        staged.feed_one(rec.topic, rec.key, rec.value, out, k[1], off)
    assert not out.views and not out.events, "everything waits for the snapshot"
    assert staged.normalizer.snapshot_status()["last"] and staged.normalizer.snapshot_status()["ended"]
    staged._take(staged.normalizer.release_snapshot(), out)
    assert staged.normalizer.snapshot_status() is None and not staged.kv.get("q") and not staged.kv.get("sp")
    assert not [k for k in staged.kv.data if k.startswith(("s:", "si:", "sg:", "sl:", "sr:", "t:"))]
    assert _summary(out)[1] == expected[1]


def _held(records: list[Record], kv: DictKV | UnitRecorder | None = None) -> PurePipeline:
    """The Kafka stage's mode with the whole snapshot (and whatever follows it) held, not yet released."""
    pipe = PurePipeline(MAPPING)
    if kv is not None:
        pipe.kv = kv
    pipe.normalizer = Normalizer(MAPPING, pipe.kv, use_transactions=True, hold_streamed=True)
    out = PureOutput()
    for off, rec in enumerate(records):
        pipe.feed_one(rec.topic, rec.key, rec.value, out, 0, off)
    assert not out.views
    return pipe


def _group_ids(kv: DictKV, key: str) -> list[str]:
    """A held group's row ids, a plain list or chunked."""
    value = kv.get(key)
    return Chunked(kv, key).items() if isinstance(value, dict) else list(value or [])


class UnitRecorder:
    """A DictKV that also notes the units a release applies: each unit drops its rows from the held
    snapshot (``s:<row id>`` → None), then moves the release plan (``s``), then is applied. (Noted in
    the state, not by wrapping ``Normalizer._apply_unit``: the compiled Normalizer's methods are fixed.)"""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.log: list[str | None] = []  # row ids taken, None at each move of the plan

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        if key.startswith("s:") and value is None:
            self.log.append(key[2:])
        elif key == "s":
            self.log.append(None)
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def units(self) -> list[list[str]]:
        out: list[list[str]] = [[]]
        for rid in self.log:
            if rid is None:
                out.append([])
            else:
                out[-1].append(rid)
        return [u for u in out if u]


def _release_in_slices(pipe: PurePipeline, max_rows: int | None) -> tuple[PureOutput, list[int]]:
    """Release one slice at a time, as the stage does once per Kafka transaction; rows applied per slice."""
    out = PureOutput()
    sizes = []
    pipe.normalizer.begin_release()
    while True:
        before = pipe.normalizer.snapshot_status()
        res, done = pipe.normalizer.release_step(max_rows)
        after = pipe.normalizer.snapshot_status()
        sizes.append(before["n"] - (after["n"] if after else 0))
        pipe._take(res, out)
        if done:
            return out, sizes


def test_a_snapshot_released_in_slices_gives_the_same_views_events_and_state_as_at_once(school):
    """The stage applies a slice of students per Kafka transaction, so a 100,000-student school's first
    start is many bounded transactions instead of one that outlives max.poll.interval.ms. Slicing must
    not show: same views, unit ids, lineage, event ids and final state, whatever the slice size."""
    data, _ = school
    activity = generate_activity(data, 15, 7, TODAY)
    from sevisflow.deploy.sis.model import World
    from tests.school_replay import feed_ops

    world, feed = World(data), SisFeed(primary_keys=PKS, lsn=SNAPSHOT_LSN + 1000)
    for tx in activity:
        feed.ts_ms = int(tx.at.timestamp() * 1000) - 1000
        feed.tx(*feed_ops(world, tx))
    records = _snapshot(data) + feed.records
    rows = sum(1 for r in records if b'"snapshot":"' in r.value and b'"snapshot":"false"' not in r.value)

    whole = _held(records)
    largest = max(len(_group_ids(whole.kv, k)) for k in whole.kv.data if k.startswith("sg:") and k.count(":") == 1)
    expected, sizes = _release_in_slices(whole, None)
    assert sizes == [rows] and expected.events
    for max_rows in (1, 7, 50):
        sliced = _held(records)
        got, sizes = _release_in_slices(sliced, max_rows)
        assert _summary(got) == _summary(expected), f"slices of {max_rows} rows"
        assert sliced.kv.data == whole.kv.data, f"slices of {max_rows} rows: the state differs"
        assert sum(sizes) == rows and len(sizes) > rows // (max_rows + 20)
        # a slice stops at the first whole student past max_rows; the reference rows (terms) are one group
        # of their own, applied first
        refs = sum(1 for r in records if any(r.topic.endswith("." + ref.table) for ref in MAPPING.references))
        assert refs and sizes[0] >= refs and max(sizes[1:]) < max_rows + largest, sizes


def test_each_student_is_one_unit_whose_id_names_its_own_last_row(school):
    data, _ = school
    out, _ = _release_in_slices(_held(_snapshot(data)), 10)
    assert len({u.unit_id for u in out.views}) == len(out.views), "one unit per student"
    assert Counter(u.student_key for u in out.views).most_common(1)[0][1] == 1


def test_a_snapshot_held_by_the_previous_version_is_released_the_same(school):
    """State written before groups existed (one ``si:<n>`` list of row ids) is converted on release."""
    data, _ = school
    records = _snapshot(data)
    expected, _ = _release_in_slices(_held(records), None)
    old = _held(records)
    kv = old.kv.data
    groups = [g for k in sorted(k for k in kv if k.startswith("sl:")) for g in kv[k]]
    rids = [rid for g in groups for rid in _group_ids(old.kv, f"sg:{g}")]
    for key in [k for k in kv if k.startswith(("sg:", "sl:"))]:
        del kv[key]
    for i in range(0, len(rids), 500):
        kv[f"si:{i // 500}"] = rids[i : i + 500]
    meta = kv["s"]
    kv["s"] = {"k": (len(rids) + 499) // 500, "n": len(rids), **{f: meta[f] for f in ("last", "ended") if f in meta}}
    got, _ = _release_in_slices(old, 25)
    assert _summary(got) == _summary(expected)
    assert not [k for k in kv if k.startswith(("s:", "si:", "sg:", "sl:", "sr:"))]


def test_groups_held_as_plain_lists_by_the_previous_version_are_released_the_same(school):
    """Before big groups were chunked, ``sg:<group>`` was one list of row ids however long: such state is
    read and released."""
    data, _ = school
    records = _with_crowded_groups(data, 300, 300)
    expected, _ = _release_in_slices(_held(records), None)
    old = _held(records)
    kv = old.kv.data
    headers = [k for k, v in kv.items() if k.startswith("sg:") and isinstance(v, dict)]
    assert len(headers) == 2, "the reference group and the placeholder id's group are chunked"
    plain = {k: _group_ids(old.kv, k) for k in kv if k.startswith("sg:") and k.count(":") == 1}
    for key in [k for k in kv if k.startswith("sg:")]:
        del kv[key]
    kv.update(plain)
    got, _ = _release_in_slices(old, 25)
    assert _summary(got) == _summary(expected)
    assert not [k for k in kv if k.startswith(("s:", "sg:", "su:", "sl:", "sr:"))]


def _with_crowded_groups(school: dict[str, list[dict[str, Any]]], terms: int, placeholder_rows: int) -> list[Record]:
    """The snapshot plus ``terms`` more rows of the reference table (one group, "") and ``placeholder_rows``
    addresses naming person id 0, which no student has (one group, "0"): messy SIS data."""
    data = {t: list(rows) for t, rows in school.items()}
    proto_term, proto_address = data["term"][0], data["address"][0]
    for i in range(terms):
        data["term"].append({**proto_term, "term_id": f"X{i:05d}"})
    for i in range(placeholder_rows):
        data["address"].append({**proto_address, "address_id": 700_000 + i, "person_id": 0})
    return _snapshot(data)


def test_no_held_value_grows_with_the_rows_of_one_group(school):
    """Every state value is a changelog record (8 MiB at most, re-encoded when it changes). A group's row
    ids were one list: a reference table or a placeholder student id with ~200,000 rows would outgrow it
    and stop normalize for the whole school. Now a group is a chunked list: no value grows with it."""
    data, _ = school
    pipe = _held(_with_crowded_groups(data, 3000, 3000))
    sizes = {k: len(orjson.dumps(v)) for k, v in pipe.kv.data.items()}
    group_ids = {g: Chunked(pipe.kv, f"sg:{g}").items() for g in ("", "0")}
    assert len(group_ids[""]) > 3000 and len(group_ids["0"]) == 3000
    assert all(len(orjson.dumps(ids)) > 100_000 for ids in group_ids.values()), "the premise: big groups"
    assert max(sizes.values()) < 16 * 1024, max(sizes.items(), key=lambda kv: kv[1])


def test_a_group_too_big_for_one_unit_is_applied_in_units_with_the_same_result(school, monkeypatch):
    """A group of more than SNAPSHOT_UNIT_ROWS rows is applied that many at a time, in snapshot order:
    no transaction or poll grows with it, and nothing visible changes — views, events and dead letters
    are those of one unit, however the release is sliced."""
    data, _ = school
    records = _with_crowded_groups(data, 230, MAX_PARKED_PER_STUDENT_ID + 120)
    one_unit, _ = _release_in_slices(_held(records), None)
    assert [d.code for d in one_unit.dead].count("orphan_limit") == 120

    monkeypatch.setattr(view_module, "SNAPSHOT_UNIT_ROWS", 100)
    recorder = UnitRecorder()
    whole = _held(records, recorder)
    got, _ = _release_in_slices(whole, None)
    units = recorder.units()
    assert _summary(got) == _summary(one_unit)
    assert max(len(u) for u in units) == 100
    crowded = [u for u in units if len(u) == 100]
    assert len(crowded) >= 2 + 5, "the reference group and the placeholder id's group each took several units"
    in_order = [rid for u in units for rid in u]
    assert len(in_order) == len(set(in_order)), "no row applied twice"
    assert not [k for k in whole.kv.data if k.startswith(("s:", "sg:", "su:", "sl:", "sr:"))]
    for max_rows in (1, 7, 250):
        sliced = _held(records)
        out, sizes = _release_in_slices(sliced, max_rows)
        assert _summary(out) == _summary(one_unit), f"slices of {max_rows} rows"
        assert sliced.kv.data == whole.kv.data, f"slices of {max_rows} rows: the state differs"
        assert max(sizes) <= max(max_rows, 100) + 100, sizes


def test_a_snapshot_re_sent_while_a_big_group_is_half_applied_is_applied_once(school, monkeypatch):
    """A connector restarted mid-snapshot re-sends it while normalize is inside a group's units: rows of
    that group still queued take their new copy, rows already applied come back in a next round."""
    monkeypatch.setattr(view_module, "SNAPSHOT_UNIT_ROWS", 100)
    data, _ = school
    records = _with_crowded_groups(data, 450, 0)
    expected, _ = _release_in_slices(_held(records), None)
    pipe = _held(records)
    pipe.normalizer.begin_release()
    out = PureOutput()
    res, done = pipe.normalizer.release_step(1)  # the first unit of the reference group
    pipe._take(res, out)
    assert not done and pipe.kv.get("s")["r"]["u"] == 1 and len(Chunked(pipe.kv, "su:")) > 0
    for off, rec in enumerate(records):
        pipe.feed_one(rec.topic, rec.key, rec.value, out, 1, off)
    while not done:
        res, done = pipe.normalizer.release_step(50)
        pipe._take(res, out)
    assert pipe.normalizer.snapshot_status() is None
    assert not [k for k in pipe.kv.data if k.startswith(("s:", "sg:", "su:", "sl:", "sr:"))]
    assert {u.student_key for u in out.views} == {u.student_key for u in expected.views}


@pytest.mark.parametrize("from_group", ["a student's", "a chunked placeholder id's"])
def test_a_row_re_sent_under_another_student_id_is_applied_to_that_student_only(school, from_group):
    """A resumed snapshot re-sends a row that changed meanwhile: the last copy wins, in its new group —
    whether it left a student's group (a plain list, the entry removed) or a chunked group (the entry
    stays there and is passed over)."""
    data, _ = school
    with_us_address = {a["person_id"] for a in data["address"] if a["kind"] == "US_PHYSICAL"}
    other = next(p for p in data["person"] if p["person_id"] not in with_us_address)
    if from_group == "a student's":
        records = _snapshot(data)
        address = next(a for a in data["address"] if a["kind"] == "US_PHYSICAL")
    else:
        records = _with_crowded_groups(data, 0, 300)
        address = {**next(a for a in data["address"] if a["kind"] == "US_PHYSICAL"), "address_id": 700_005}
    was = _held(records)
    feed = SisFeed(primary_keys=PKS)
    moved_row = {**address, "person_id": other["person_id"], "line1": "1 Moved Row Street"}
    feed.tx(("r", "public.address", None, moved_row), snapshot=True)
    pipe = _held(records + _as_debezium_snapshot(feed.records))
    assert pipe.normalizer.snapshot_status()["n"] == was.normalizer.snapshot_status()["n"], "the row counts once"
    out, _ = _release_in_slices(pipe, 40)
    holders = [
        u.student_key
        for u in out.views
        if any(x.get("line1") == "1 Moved Row Street" for x in u.view["address"].values())
    ]
    assert holders == [other["school_id"]]
    assert not [k for k in pipe.kv.data if k.startswith(("s:", "sg:", "su:", "sl:", "sr:"))]
    if from_group != "a student's":
        assert [d.code for d in out.dead] == [], "299 rows wait for id 0, below the bound"
        assert len(pipe.kv.get("o:0")) == 299


def test_rows_held_while_a_release_is_under_way_are_applied_too(school):
    """A snapshot re-sent (a connector restarted mid-snapshot) while normalize applies the held one:
    rows of students still waiting join their group, rows of students already applied get a next round."""
    data, _ = school
    records = _snapshot(data)
    pipe = _held(records)
    pipe.normalizer.begin_release()
    out = PureOutput()
    res, done = pipe.normalizer.release_step(30)
    pipe._take(res, out)
    assert not done
    for off, rec in enumerate(records):  # the whole snapshot again
        pipe.feed_one(rec.topic, rec.key, rec.value, out, 1, off)
    while not done:
        res, done = pipe.normalizer.release_step(30)
        pipe._take(res, out)
    assert pipe.normalizer.snapshot_status() is None
    assert not [k for k in pipe.kv.data if k.startswith(("s:", "sg:", "sl:", "sr:"))]
    students = {u.student_key for u in _release_in_slices(_held(records), None)[0].views}
    assert {u.student_key for u in out.views} == students


def test_without_a_snapshot_only_the_start_up_hold_applies(school):
    """snapshot.mode never: no snapshot rows. The stage's mode holds its first records until the stage
    has released them (it cannot know at once that no snapshot is coming); after that first release
    every transaction is applied at once."""
    data, _ = school
    kv = DictKV()
    feed = SisFeed(primary_keys=PKS)
    person, other = data["person"][0], data["person"][1]
    feed.tx(("c", "public.person", None, person))
    pipe = PurePipeline(MAPPING)
    pipe.normalizer = Normalizer(MAPPING, kv, hold_streamed=True)
    pipe.kv = kv
    out = PureOutput()
    for r in feed.records:
        pipe.feed_one(r.topic, r.key, r.value, out)
    assert out.views == [] and pipe.normalizer.snapshot_status() == {"k": 0, "n": 0, "boot": True, "ended": True}
    pipe._take(pipe.normalizer.release_snapshot(), out)
    assert pipe.normalizer.snapshot_status() is None and [u.student_key for u in out.views] == [person["school_id"]]
    feed.records.clear()
    feed.tx(("c", "public.person", None, other))
    for r in feed.records:
        pipe.feed_one(r.topic, r.key, r.value, out)
    assert pipe.normalizer.snapshot_status() is None
    assert [u.student_key for u in out.views] == [person["school_id"], other["school_id"]]
