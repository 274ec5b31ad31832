"""normalize keeps every state value small, whatever one student's rows look like.

A student's view and the rows waiting for a student row are single state values, re-encoded at every
change and each one changelog record (8 MiB at most). Before the bounds, a student given 5,000 enrollment
rows made a 1.2 MB view at 2 ms per row, growing with every row, and rows pointing at a placeholder student
id piled up in one value: past the limit normalize would stop for the whole school. These tests feed such
input and prove the dead letters, the bound, and that everything else keeps flowing.
"""

from __future__ import annotations

import orjson

from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.normalize.view import (
    MAX_ENTRIES_PER_SECTION,
    MAX_LINKED_ROWS_PER_STUDENT_ID,
    MAX_PARKED_PER_STUDENT_ID,
)
from sevisflow.processors.sevis_events.pure import PurePipeline
from tests.scenarios import MAPPING, PKS, TABLES, base_rows


def _enrollments(feed: SisFeed, rows: dict, first: int, count: int) -> list[dict]:
    """``count`` enrollment rows of the student, each in its own term and SIS transaction."""
    made = []
    for i in range(first, first + count):
        term = {**rows["term"], "term_id": f"T{i:05d}"}
        enrollment = {**rows["enrollment"], "enrollment_id": 10_000 + i, "term_id": term["term_id"]}
        feed.tx(("c", "public.term", None, term), ("c", "public.enrollment", None, enrollment))
        made.append(enrollment)
    return made


def test_a_student_with_too_many_enrollment_rows_gets_dead_letters_and_a_bounded_view():
    feed, pipe = SisFeed(primary_keys=PKS), PurePipeline(MAPPING)
    rows = base_rows()
    feed.tx(*[("c", TABLES[n], None, r) for n, r in rows.items()])
    made = _enrollments(feed, rows, 0, MAX_ENTRIES_PER_SECTION + 30)  # the base row is one more
    out = pipe.feed(feed.records)
    feed.records.clear()
    view = out.views[-1].view
    assert len(view["registration"]) == MAX_ENTRIES_PER_SECTION
    refused = [d for d in out.dead if d.code == "too_many_rows"]
    assert len(refused) == 31
    assert all(d.student_key == view["student_key"] and d.change.table == "public.enrollment" for d in refused)
    assert "remove stale public.enrollment rows of this student in the SIS" in refused[0].reason
    size_at_bound = len(orjson.dumps(view))
    assert size_at_bound < 256 * 1024

    # a row already in the view still changes it; a refused row stays out
    kept, dropped = made[0], made[-1]
    feed.tx(("u", "public.enrollment", kept, {**kept, "status": "WITHDRAWN"}))
    feed.tx(("u", "public.enrollment", dropped, {**dropped, "credit_hours": 6}))
    out = pipe.feed(feed.records)
    feed.records.clear()
    view = out.views[-1].view
    assert view["registration"][kept["term_id"]]["status"] == "withdrawn"
    assert dropped["term_id"] not in view["registration"]
    assert [d.code for d in out.dead] == ["too_many_rows"]

    # once the SIS removes a stale row there is room again: the refused row applies when it next changes
    feed.tx(("d", "public.enrollment", made[1], None))
    feed.tx(("u", "public.enrollment", {**dropped, "credit_hours": 6}, {**dropped, "credit_hours": 9}))
    out = pipe.feed(feed.records)
    view = out.views[-1].view
    assert made[1]["term_id"] not in view["registration"] and dropped["term_id"] in view["registration"]
    assert len(view["registration"]) == MAX_ENTRIES_PER_SECTION and out.dead == []


def test_rows_waiting_for_a_student_id_nobody_has_are_bounded_and_others_flow():
    feed, pipe = SisFeed(primary_keys=PKS), PurePipeline(MAPPING)
    rows = base_rows()
    extra = 10
    for i in range(MAX_PARKED_PER_STUDENT_ID + extra):  # a placeholder id 0 in messy SIS data
        address = {**rows["us"], "address_id": 50_000 + i, "person_id": 0}
        feed.tx(("c", "public.address", None, address))
    feed.tx(*[("c", TABLES[n], None, r) for n, r in rows.items()])  # a real student meanwhile
    out = pipe.feed(feed.records)
    refused = [d for d in out.dead if d.code == "orphan_limit"]
    assert len(refused) == extra and refused[0].field == "person_id"
    assert "which no student row has" in refused[0].reason
    assert len(pipe.kv.data["o:0"]) == MAX_PARKED_PER_STUDENT_ID
    # the real student is not held up by them
    assert out.views and out.views[-1].view["student_key"] == rows["person"]["school_id"]


def test_a_student_collecting_rows_of_an_unkeyed_table_is_bounded_and_others_flow():
    """Addresses are slots, not a keyed section: the view does not bound how many rows name one student.
    Every such row was listed under the student's id (``lm:<id>``, one state value, 40 bytes a row): a
    placeholder student that exists in the SIS and collects ~200,000 rows would outgrow a Kafka record."""
    feed, pipe = SisFeed(primary_keys=PKS), PurePipeline(MAPPING)
    rows = base_rows()
    feed.tx(*[("c", TABLES[n], None, r) for n, r in rows.items()])
    pipe.feed(feed.records)
    feed.records.clear()
    linked_before = len(pipe.kv.data[f"lm:{rows['person']['person_id']}"])  # its own rows of the linked tables
    extra = 25
    made = []
    for i in range(MAX_LINKED_ROWS_PER_STUDENT_ID - linked_before + extra):
        made.append({**rows["us"], "address_id": 50_000 + i})
        feed.tx(("c", "public.address", None, made[-1]))
    other = {**rows["person"], "person_id": 8, "school_id": "S00000008", "email": "other@example.edu"}
    feed.tx(("c", "public.person", None, other))
    out = pipe.feed(feed.records)
    feed.records.clear()
    link = rows["person"]["person_id"]
    assert len(pipe.kv.data[f"lm:{link}"]) == MAX_LINKED_ROWS_PER_STUDENT_ID
    assert len(orjson.dumps(pipe.kv.data[f"lm:{link}"])) < 256 * 1024
    refused = [d for d in out.dead if d.code == "too_many_rows"]
    assert len(refused) == extra
    assert all(d.student_key == rows["person"]["school_id"] and d.field == "person_id" for d in refused)
    assert "SIS rows linked to it" in refused[0].reason and "remove stale rows" in refused[0].reason
    assert out.views[-1].student_key == "S00000008", "another student is not held up"

    # a linked row still changes; once a row is deleted there is room for a refused one when it next changes
    kept, dropped = made[0], made[-1]
    feed.tx(("d", "public.address", kept, None))
    feed.tx(("u", "public.address", dropped, {**dropped, "city": "Urbana"}))
    out = pipe.feed(feed.records)
    assert out.dead == []
    members = pipe.kv.data[f"lm:{link}"]
    assert len(members) == MAX_LINKED_ROWS_PER_STUDENT_ID
    assert any(str(dropped["address_id"]) in m for m in members)
    assert not any(f'"address_id":{kept["address_id"]}}}' in m for m in members)
