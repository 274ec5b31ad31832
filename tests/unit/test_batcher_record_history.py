"""An open record changed over and over (a runaway SIS job) keeps a bounded history.

Without the bound every replacement appended to the record's ``event_ids``, ``lineage`` and ``replaced``
lists, and each replacement rewrote the whole record to the state changelog and to sevis.batches: 10,000
changes of one student made a 3.3 MB record and 14 ms per event, and past the changelog's 8 MiB record
limit the batcher stopped for every school on its partition. These tests prove the bound, what it keeps
(the latest changes, the counts, the reporting clock), and that the DSO's screens and the audit say so.
"""

from __future__ import annotations

import orjson

from sevisflow.app.cli import review
from sevisflow.app.labels import Labels
from sevisflow.core.worklist.deadlines import first_change_ms
from sevisflow.processors.batcher.core import RECORD_HISTORY, CommandIn, EventIn, Publish, School, apply
from testkit.batcher import BASE_MS, ORG, command, event
from tests.helpers import XSD_DIR

DSO = "DSOUSER001"


def email_change(n: int) -> EventIn:
    """Change ``n`` of student S1's e-mail (each one a new address: never back to what SEVIS has)."""
    e = event(
        "S1",
        n=n,
        payload={"@printForm": "false", "Email": f"s1.{n}@example.edu"},
        before={"email": f"s1.{n - 1}@example.edu"},
        after={"email": f"s1.{n}@example.edu"},
    )
    return EventIn(e, BASE_MS + n * 1000)


def changed(times: int) -> tuple[School, list[Publish]]:
    state, published = School(ORG), []
    for n in range(1, times + 1):
        state, outs = apply(state, email_change(n))
        published += [o for o in outs if isinstance(o, Publish)]
    return state, published


def test_a_record_changed_a_thousand_times_keeps_the_latest_history_and_counts_the_rest():
    state, published = changed(1000)
    (rec,) = state.records.values()
    assert len(rec["event_ids"]) == RECORD_HISTORY and rec["event_ids"][-1] == "ev-S1-PersonalInfo-1000"
    assert len(rec["replaced"]) == RECORD_HISTORY and rec["replaced"][-1]["by_event_id"] == "ev-S1-PersonalInfo-1000"
    assert len(rec["lineage"]) == RECORD_HISTORY and rec["lineage"][-1]["offset"] == 1000
    trimmed = rec["history_trimmed"]
    assert trimmed["event_ids"] + len(rec["event_ids"]) == 1000  # every merged event counted once
    assert trimmed["replaced"] + len(rec["replaced"]) == 999
    # what SEVIS gets is the latest change; the "before" is still what SEVIS had before the first one
    assert rec["payload"]["Email"] == "s1.1000@example.edu"
    assert rec["before"] == {"email": "s1.0@example.edu"} and rec["after"] == {"email": "s1.1000@example.edu"}
    # the reporting clock runs from the first change, though the record no longer lists it
    assert first_change_ms(rec) == BASE_MS + 1000
    # and every replacement is still on sevis.batches with its own event: nothing of the history is lost
    replaced = [p.event for p in published if p.event["type"] == "record_replaced"]
    assert len(replaced) == 999
    assert {orjson.loads(p["record_json"])["event_ids"][-1] for p in replaced} == {
        f"ev-S1-PersonalInfo-{n}" for n in range(2, 1001)
    }


def test_the_record_stops_growing_once_its_history_is_full():
    full = RECORD_HISTORY + 1  # every list full
    state, published = changed(full)
    size_at_bound = len(orjson.dumps(state.records["S1:PersonalInfo"]))
    last_output = len(published[-1].event["record_json"])
    for n in range(full + 1, 3 * full + 1):
        state, outs = apply(state, email_change(n))
    rec = state.records["S1:PersonalInfo"]
    # the same number of entries, only the numbers in them got longer
    assert len(orjson.dumps(rec)) <= size_at_bound * 1.05
    (out,) = [o for o in outs if isinstance(o, Publish) and o.event["type"] == "record_replaced"]
    assert len(out.event["record_json"]) <= last_output * 1.05
    assert len(orjson.dumps(rec)) < 64 * 1024  # far below the 8 MiB a changelog record may have


def test_a_trimmed_record_closes_with_its_counts():
    state, _ = changed(RECORD_HISTORY + 50)
    state, outs = apply(state, CommandIn(command("close", "c1", dso_user_id=DSO)))
    (closed,) = [o.event for o in outs if isinstance(o, Publish) and o.event["type"] == "closed"]
    (rec,) = orjson.loads(closed["records_json"])
    assert rec["payload"]["Email"] == f"s1.{RECORD_HISTORY + 50}@example.edu"
    assert rec["history_trimmed"]["event_ids"] == 50 and len(rec["event_ids"]) == RECORD_HISTORY


def test_a_record_within_the_bound_has_no_trimmed_history():
    state, _ = changed(RECORD_HISTORY)
    rec = state.records["S1:PersonalInfo"]
    assert "history_trimmed" not in rec and len(rec["event_ids"]) == RECORD_HISTORY


def test_the_dso_sees_every_change_counted_and_where_the_older_ones_are():
    state, _ = changed(RECORD_HISTORY + 20)
    rec = dict(state.records["S1:PersonalInfo"], status="open")
    labels = Labels(XSD_DIR)
    short = "\n".join(review.record_lines(rec, labels, "UTC"))
    assert f"({RECORD_HISTORY + 20} SIS changes merged)" in short
    assert f"replaces {RECORD_HISTORY + 19} earlier changes of the same kind" in short
    full = "\n".join(review.record_lines(rec, labels, "UTC", verbose=True))
    assert "history: the record lists its latest changes only; 20 earlier events and 19 earlier replacements" in full
    assert "sevisflow audit student S1" in full


def test_a_refused_trimmed_record_merged_with_a_newer_open_one_keeps_both_counts_and_the_first_clock():
    state, _ = changed(RECORD_HISTORY + 10)
    state, outs = apply(state, CommandIn(command("close", "c1", dso_user_id=DSO)))
    (closed,) = [o.event for o in outs if isinstance(o, Publish) and o.event["type"] == "closed"]
    start = RECORD_HISTORY + 11
    for n in range(start, start + RECORD_HISTORY + 5):  # newer changes while SEVIS has the batch
        state, _ = apply(state, email_change(n))
    assert state.records["S1:PersonalInfo"]["history_trimmed"]["event_ids"] == 5
    requeue = command("requeue", "q1", batch_id=closed["batch_id"], reason="S0013", at_ms=BASE_MS + 10**7)
    state, outs = apply(state, CommandIn(requeue))
    rec = state.records["S1:PersonalInfo"]
    assert rec["payload"]["Email"] == f"s1.{start + RECORD_HISTORY + 4}@example.edu"  # the newer open change wins
    total = 2 * RECORD_HISTORY + 15
    assert rec["history_trimmed"]["event_ids"] + len(rec["event_ids"]) == total
    assert len(rec["event_ids"]) == RECORD_HISTORY
    assert first_change_ms(rec) == BASE_MS + 1000  # the refused record's first change still starts the clock


def test_a_replay_of_a_hot_records_events_merges_the_older_ones_again_and_ends_at_the_same_payload():
    """The cost of the bound (docs/ARCHITECTURE.md): an event older than the newest ``RECORD_HISTORY`` ids is not
        recognised
    as merged already. Replayed in order, the record goes through the same values and ends where it was."""
    total = 2 * RECORD_HISTORY
    state, _ = changed(total)
    before_replay = state.records["S1:PersonalInfo"]
    replayed = []
    for n in range(1, total + 1):
        state, outs = apply(state, email_change(n))
        replayed += [o.event["type"] for o in outs if isinstance(o, Publish)]
    rec = state.records["S1:PersonalInfo"]
    assert replayed.count("record_replaced") == total  # each re-merged: none of them was among the newest ids
    assert rec["payload"] == before_replay["payload"] and rec["after"] == before_replay["after"]
    assert rec["before"] == before_replay["before"]


def _hot(student: str, kind: str, n: int, payload: dict[str, object]) -> EventIn:
    """Change ``n`` of a record, as big as real events make it: a 32-character event id and two source
    changes with full-length topic names and Debezium sequences in its lineage."""
    e = event(student, kind, n=n, payload=payload, sevis_id=None if kind == "Create" else "N0000000001")
    e["event_id"] = f"{abs(hash((student, kind, n))):032d}"[:32]
    e["lineage"] = [
        {
            "topic": f"sevisflow.sis.public.{table}",
            "partition": 2,
            "offset": 1_000_000 + n,
            "table": f"public.{table}",
            "lsn": 98_765_432_100 + n,
            "sequence": f'["{98_765_432_000 + n}","{98_765_432_100 + n}"]',
            "tx_id": 7_654_321 + n,
            "commit_ts_ms": BASE_MS + n * 1000,
        }
        for table in ("person_address", "enrollment_program")
    ]
    return EventIn(e, BASE_MS + n * 1000)


def test_a_closed_document_of_500_hot_records_still_fits_one_kafka_record():
    """The whole closed document is one state value (the closed batch) and one ``closed`` event: with every
    record of a full document changed past its bound, both stay under the 8 MiB a record may have."""
    create_payload = {
        "@requestID": "x" * 20,
        "Biographical": {
            "FullName": {"LastName": "L" * 40, "FirstName": "F" * 40, "MiddleName": "M" * 40},
            "BirthDate": "2001-02-03",
            "BirthCity": "C" * 60,
            "BirthCountryCode": "GB",
            "CitizenshipCountryCode": "GB",
            "PermanentResidenceCountryCode": "GB",
            "Email": "e" * 60 + "@example.edu",
        },
        "USAddress": {"Address1": "A" * 64, "Address2": "B" * 64, "City": "C" * 60, "State": "IL", "PostalCode": "6"},
        "ForeignAddress": {"Address1": "A" * 64, "Address2": "B" * 64, "City": "C" * 60, "CountryCode": "GB"},
        "FinancialInfo": {"ProgramLength": 48, "Expense": {"Tuition": 40000, "LivingExpense": 20000}},
        "EducationalInfo": {"EduLevel": "03", "PrimaryMajor": "11.0701", "ProgramStartDate": "2026-08-20"},
    }
    state = School(ORG)
    changes = RECORD_HISTORY + 2  # past the bound of every list (two source changes per event)
    for n in range(1, changes + 1):
        for i in range(250):
            payload = dict(create_payload, Remarks=f"change {n}")
            state, _ = apply(state, _hot(f"C{i:04d}", "Create", n, payload))
            email = {"@printForm": "false", "Email": f"s{i}.{n}@example.edu"}
            state, _ = apply(state, _hot(f"U{i:04d}", "PersonalInfo", n, email))
    assert all(r.get("history_trimmed") for r in state.records.values())
    state, outs = apply(state, CommandIn(command("close", "c1", dso_user_id=DSO)))
    (closed,) = [o.event for o in outs if isinstance(o, Publish) and o.event["type"] == "closed"]
    assert len(orjson.loads(closed["records_json"])) == 500
    stored = state.batches[closed["batch_id"]]
    limit = 8 * 1024 * 1024
    assert len(closed["records_json"]) < 0.8 * limit, len(closed["records_json"])
    assert len(orjson.dumps(stored)) < 0.8 * limit, len(orjson.dumps(stored))
