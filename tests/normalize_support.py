"""A school whose one SIS transaction updates 20,000 rows, shared by the unit and integration tests of
normalize's chunked state (a plain module, not a test module).

``N_STUDENTS`` F-1 students already in SEVIS, each registered (REGISTERED) for ``N_TERMS`` terms. The
big transaction updates every enrollment row: the current term's become ENROLLED — one SEVIS
Registration per student — and the others change credit hours, which SEVIS does not hear about.

Why 20,000 rows: what the tests prove is that a transaction whose buffer does not fit in one
changelog record (the state topic's ``max.message.bytes``, 8 MiB) still flows through. normalize
buffers about 540 bytes per enrollment row, so the smallest such transaction is about 15,500 rows;
20,000 rows buffer about 10.8 MB, 1.3 times the limit. Both tests measure the buffer they built and
assert that it exceeds that limit (:data:`STATE_MESSAGE_LIMIT`), so a smaller school cannot pass unseen.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson

from sevisflow.core.config import Settings
from sevisflow.core.topics import state_topic_spec
from sevisflow.processors.normalize.debezium import Record, SisFeed
from tests.scenarios import PKS, TABLES, base_rows

N_STUDENTS, N_TERMS = 400, 50
STATE_MESSAGE_LIMIT = int(state_topic_spec(Settings(), "normalize").config["max.message.bytes"])
"""The largest record normalize's state changelog takes (8 MiB)."""
SNAPSHOT_LSN = 900_000
CONFIRMED = datetime(2040, 1, 25, 15, 0, tzinfo=UTC)


def term_id(i: int) -> str:
    return f"{2000 + i // 2}{'SP' if i % 2 == 0 else 'FA'}"


CURRENT = term_id(N_TERMS - 1)


def term_row(i: int) -> dict[str, Any]:
    start = date(2000 + i // 2, 1 if i % 2 == 0 else 8, 20)
    end = date(start.year, 5 if i % 2 == 0 else 12, 15)
    nxt = date(start.year if i % 2 == 0 else start.year + 1, 8 if i % 2 == 0 else 1, 20)
    return {"term_id": term_id(i), "name": f"Term {i}", "start_date": start, "end_date": end, "next_term_start": nxt}


def student_rows(n: int) -> dict[str, Any]:
    """Rows of student ``n`` by reference-schema table name; ``enrollment`` is a list (one per term)."""
    rows = base_rows(sevis_id=f"N{n:010d}")
    pid = 1000 + n
    for r in rows.values():
        if "person_id" in r:
            r["person_id"] = pid
    rows["person"]["school_id"] = f"S{pid:08d}"
    rows["person"]["email"] = f"s{pid}@example.edu"
    rows["us"]["address_id"], rows["foreign"]["address_id"] = pid * 10 + 1, pid * 10 + 2
    rows["program"]["program_id"] = pid
    rows["program"]["expected_end_date"] = date(2040, 5, 15)
    del rows["term"]
    rows["enrollment"] = [
        {
            "enrollment_id": pid * 100 + t,
            "person_id": pid,
            "term_id": term_id(t),
            "status": "REGISTERED",
            "credit_hours": Decimal("12.0"),
            "full_time": True,
            "confirmed_at": None,
        }
        for t in range(N_TERMS)
    ]
    return rows


def school_tables() -> dict[str, list[dict[str, Any]]]:
    """The whole school by table (for ``sevisflow.deploy.sis.load.load_school``)."""
    out: dict[str, list[dict[str, Any]]] = {
        "term": [term_row(i) for i in range(N_TERMS)],
        "person": [],
        "immigration": [],
        "address": [],
        "program": [],
        "finance": [],
        "enrollment": [],
    }
    for n in range(N_STUDENTS):
        rows = student_rows(n)
        for name in ("person", "immigration", "program", "finance"):
            out[name].append(rows[name])
        out["address"] += [rows["us"], rows["foreign"]]
        out["enrollment"] += rows["enrollment"]
    return out


def updated(e: dict[str, Any]) -> dict[str, Any]:
    """An enrollment row after the big transaction."""
    if e["term_id"] == CURRENT:
        return {**e, "status": "ENROLLED", "confirmed_at": CONFIRMED}
    return {**e, "credit_hours": Decimal("12.5")}


def big_school(prefix: str = "sis", students: int = N_STUDENTS) -> tuple[SisFeed, list[dict[str, Any]]]:
    """The school as streamed commits (one per student); returns the feed and every enrollment row. The
    enrollment rows themselves are not fed before the big transaction: normalize applies an update of a
    row it has not seen like any other, and the test stays short (the PostgreSQL test has them all)."""
    feed = SisFeed(prefix=prefix, primary_keys=PKS)
    feed.tx(*[("c", "public.term", None, term_row(i)) for i in range(N_TERMS)])
    enrollments = []
    for n in range(students):
        rows = student_rows(n)
        feed.tx(*[("c", TABLES[name], None, r) for name, r in rows.items() if name != "enrollment"])
        enrollments.extend(rows["enrollment"])
    return feed, enrollments


def big_transaction(feed: SisFeed, enrollments: list[dict[str, Any]]) -> None:
    """One commit updating every enrollment row (see :func:`updated`)."""
    feed.tx(*[("u", "public.enrollment", e, updated(e)) for e in enrollments])


BIG_TRANSACTION_SQL = (
    "UPDATE public.enrollment SET status = CASE WHEN term_id = %(current)s THEN 'ENROLLED' ELSE status END, "
    "confirmed_at = CASE WHEN term_id = %(current)s THEN %(confirmed)s ELSE confirmed_at END, "
    "credit_hours = CASE WHEN term_id = %(current)s THEN credit_hours ELSE 12.5 END"
)


# ---------------------------------------------------------------------------- a one-student snapshot


def snapshot_records(marks: str, unmapped_last: bool, prefix: str = "sis") -> list[Record]:
    """A one-student snapshot as Debezium writes it: op r, one LSN, no transaction block; marks
    "2" (first/true/last) or "3" (Debezium 3.x: first, first/last_in_data_collection, last)."""
    feed = SisFeed(prefix=prefix, primary_keys=PKS)
    rows = base_rows()
    order = [
        ("term", rows["term"]),
        ("person", rows["person"]),
        ("immigration", rows["immigration"]),
        ("us", rows["us"]),
        ("foreign", rows["foreign"]),
        ("program", rows["program"]),
        ("finance", rows["finance"]),
        ("enrollment", rows["enrollment"]),
    ]
    for name, row in order:
        feed.tx(("r", TABLES[name], None, row), snapshot=True)
    if unmapped_last:  # a captured table the mapping does not read, snapshotted last
        for i in range(3):
            feed.tx(("r", "public.audit_log", None, {"log_id": i, "what": "login"}), snapshot=True)
    out = []
    n = len(feed.records)
    for i, r in enumerate(feed.records):
        value = orjson.loads(r.value)
        src = value["source"]
        table = src["table"]
        prev_t = orjson.loads(feed.records[i - 1].value)["source"]["table"] if i else None
        next_t = orjson.loads(feed.records[i + 1].value)["source"]["table"] if i + 1 < n else None
        if i == 0:
            mark = "first"
        elif i == n - 1:
            mark = "last"
        elif marks == "3" and table != prev_t:
            mark = "first_in_data_collection"
        elif marks == "3" and table != next_t:
            mark = "last_in_data_collection"
        else:
            mark = "true"
        src.update(
            lsn=SNAPSHOT_LSN, txId=None, snapshot=mark, sequence=orjson.dumps([None, str(SNAPSHOT_LSN)]).decode()
        )
        out.append(Record(r.topic, r.key, orjson.dumps(value)))
    return out


def streamed_after_snapshot(prefix: str = "sis") -> list[Record]:
    """Streamed after the snapshot: a program change (Extension) and an e-mail change, each with its
    BEGIN/END on the transaction topic."""
    feed = SisFeed(prefix=prefix, primary_keys=PKS, lsn=SNAPSHOT_LSN + 1000, last_commit=SNAPSHOT_LSN + 1000)
    rows = base_rows()
    p = rows["program"]
    feed.tx(("u", "public.program", p, {**p, "expected_end_date": date(2027, 12, 15)}))
    feed.tx(("u", "public.person", rows["person"], {**rows["person"], "email": "zoe@new.example"}))
    return feed.records


# ---------------------------------------------------------------------------- a generated school's snapshot


def as_debezium_snapshot(records: list[Record], lsn: int = SNAPSHOT_LSN) -> list[Record]:
    """What a real snapshot looks like: one LSN, no transaction id, "first" … "true" … "last"."""
    out = []
    for i, r in enumerate(records):
        value = orjson.loads(r.value)
        value["source"].update(
            lsn=lsn,
            txId=None,
            sequence=orjson.dumps([None, str(lsn)]).decode(),
            snapshot="first" if i == 0 else "last" if i == len(records) - 1 else "true",
        )
        out.append(Record(r.topic, r.key, orjson.dumps(value)))
    return out


def generated_school_feed(
    prefix: str, students: int, activity: int, today: date, seed: int = 7
) -> tuple[list[Record], list[Record]]:
    """The reference generator's school (half international) as the connector's snapshot, then
    ``activity`` of its SIS transactions streamed after it: (snapshot records, streamed records)."""
    from sevisflow.deploy.sis.activity import generate_activity
    from sevisflow.deploy.sis.generator import generate_school
    from sevisflow.deploy.sis.model import PRIMARY_KEYS, TABLE_ORDER, World
    from tests.school_replay import feed_ops

    pks = {f"public.{t}": cols for t, cols in PRIMARY_KEYS.items()}
    school = generate_school(students, 0.5, seed, today)
    snap = SisFeed(prefix=prefix, primary_keys=pks)
    for table in TABLE_ORDER:
        for row in school[table]:
            snap.tx(("r", f"public.{table}", None, row), snapshot=True)
    world = World(school)
    txs = generate_activity(school, activity, seed, today)
    streamed = SisFeed(prefix=prefix, primary_keys=pks, lsn=SNAPSHOT_LSN + 1000, last_commit=SNAPSHOT_LSN + 1000)
    for tx in txs:
        streamed.ts_ms = int(tx.at.timestamp() * 1000) - 1000
        streamed.tx(*feed_ops(world, tx))
    return as_debezium_snapshot(snap.records), streamed.records
