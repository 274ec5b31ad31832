"""The batch state machine without Kafka: coalescing, undo, waiting, hold, close, requeue, schedule."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sevisflow.processors.batcher.core import (
    CommandIn,
    EventIn,
    Publish,
    Reject,
    ResultIn,
    School,
    SendCommand,
    Tick,
    apply,
)
from sevisflow.processors.batcher.ids import BATCH_ID_LEN, REQUEST_ID_MAX
from testkit.batcher import BASE_MS, ORG, command, event, result

DSO = "DSOUSER001"


def run(state: School, *inputs):
    outs = []
    for inp in inputs:
        state, o = apply(state, inp)
        outs += o
    return state, outs


def ev(e, at=None):
    return EventIn(e, at or BASE_MS)


def types(outs):
    return [o.event["type"] for o in outs if isinstance(o, Publish)]


def closed(outs):
    return [o.event for o in outs if isinstance(o, Publish) and o.event["type"] == "closed"]


def recs(closed_event):
    return orjson.loads(closed_event["records_json"])


def fresh():
    return School(ORG)


def test_first_record_opens_batch_and_is_added():
    s, outs = run(fresh(), ev(event("S1", n=1)))
    assert types(outs) == ["opened", "record_added"]
    (rec,) = s.records.values()
    assert rec["record_id"] == "S1:PersonalInfo" and rec["status"] == "open" and rec["rev"] == s.revision == 2


def test_apply_does_not_mutate_input_state():
    s1, _ = run(fresh(), ev(event("S1", n=1)))
    snapshot = orjson.dumps(dict(s1.records), option=orjson.OPT_SORT_KEYS)
    run(s1, ev(event("S1", n=2)), CommandIn(command("close", "c1", dso_user_id=DSO)))
    assert orjson.dumps(dict(s1.records), option=orjson.OPT_SORT_KEYS) == snapshot


def test_later_change_of_same_kind_replaces_and_says_why():
    s, outs = run(
        fresh(),
        ev(event("S1", n=1, before={"email": "a"}, after={"email": "b"})),
        ev(event("S1", n=2, before={"email": "b"}, after={"email": "c"})),
    )
    assert types(outs)[-1] == "record_replaced"
    rep = next(o.event for o in outs if o.event["type"] == "record_replaced")
    assert "replaces event ev-S1-PersonalInfo-1" in rep["reason"]
    (rec,) = s.records.values()
    assert rec["event_ids"] == ["ev-S1-PersonalInfo-1", "ev-S1-PersonalInfo-2"]
    assert rec["before"] == {"email": "a"} and rec["after"] == {"email": "c"}
    assert rec["replaced"][0]["by_event_id"] == "ev-S1-PersonalInfo-2"
    assert len(rec["lineage"]) == 2


def test_coalescing_merges_changed_elements_of_the_same_kind():
    a = event(
        "S1", n=1, payload={"@printForm": "false", "Email": "a@x.edu"}, before={"email": "o"}, after={"email": "a"}
    )
    b = event(
        "S1",
        n=2,
        payload={"@printForm": "false", "Telephone": {"TelephoneExemptInd": "N"}},
        before={"phone": "1"},
        after={"phone": "2"},
    )
    s, _ = run(fresh(), ev(a), ev(b))
    assert s.records["S1:PersonalInfo"]["payload"] == {
        "@printForm": "false",
        "Email": "a@x.edu",
        "Telephone": {"TelephoneExemptInd": "N"},
    }
    ext = event(
        "S2",
        "Program.Extension",
        n=3,
        coalesce_key="Program.EndDate",
        payload={"@printForm": "true", "NewPrgEndDate": "2027-01-01", "Explanation": "x"},
    )
    sho = event(
        "S2",
        "Program.Shorten",
        n=4,
        coalesce_key="Program.EndDate",
        payload={"@printForm": "true", "NewPrgEndDate": "2026-01-01"},
    )
    s, _ = run(s, ev(ext), ev(sho))
    rec = s.records["S2:Program.EndDate"]
    assert rec["kind"] == "Program.Shorten" and rec["payload"] == {"@printForm": "true", "NewPrgEndDate": "2026-01-01"}


def test_requeue_of_only_some_records():
    s, _ = run(fresh(), ev(event("S1", n=1)), ev(event("S2", n=2)))
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    bid = closed(outs)[0]["batch_id"]
    s, outs = run(s, CommandIn(command("requeue", f"requeue-{bid}-xsd", batch_id=bid, record_ids=["S2:PersonalInfo"])))
    assert sorted(s.records) == ["S2:PersonalInfo"]


def test_different_kinds_are_separate_records():
    s, _ = run(fresh(), ev(event("S1", n=1)), ev(event("S1", "Registration", n=2)))
    assert sorted(s.records) == ["S1:PersonalInfo", "S1:Registration"]


def test_undo_leaves_no_record():
    later = event(
        "S1",
        "Program.Extension",
        n=1,
        coalesce_key="Program.EndDate",
        before={"program_end": "2026-05-15"},
        after={"program_end": "2026-12-15"},
    )
    back = event(
        "S1",
        "Program.Shorten",
        n=2,
        coalesce_key="Program.EndDate",
        before={"program_end": "2026-12-15"},
        after={"program_end": "2026-05-15"},
    )
    s, outs = run(fresh(), ev(later), ev(back))
    assert s.records == {}
    assert types(outs)[-1] == "record_removed"
    assert "undone by event" in outs[-1].event["reason"]
    _, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    assert types(outs) == ["command_rejected"]


def test_partial_undo_keeps_record_with_original_before():
    a = event("S1", n=1, before={"email": "a", "phone": "1"}, after={"email": "b", "phone": "2"})
    b = event("S1", n=2, before={"email": "b"}, after={"email": "a"})
    s, _ = run(fresh(), ev(a), ev(b))
    (rec,) = s.records.values()
    assert rec["before"] == {"email": "a", "phone": "1"} and rec["after"] == {"email": "a", "phone": "2"}


def test_update_without_sevis_id_waits_until_create_result():
    create = event("S9", "Create", n=1, payload={"@printForm": "true", "IssueReason": "I"})
    upd = event("S9", n=2, sevis_id=None)
    s, outs = run(fresh(), ev(create), ev(upd))
    assert s.records["S9:PersonalInfo"]["status"] == "waiting"
    assert types(outs)[-1] == "record_waiting"
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    (c,) = closed(outs)
    assert [r["kind"] for r in recs(c)] == ["Create"]
    assert "S9:PersonalInfo" in s.records  # still waiting in the next batch
    create_req = recs(c)[0]["request_id"]
    s, outs = run(s, ResultIn(result(c["batch_id"], create_req, status="success", sevis_id="N0012345678"), BASE_MS))
    assert types(outs) == ["record_released"]
    rec = s.records["S9:PersonalInfo"]
    assert rec["status"] == "open" and rec["sevis_id"] == "N0012345678"
    s, outs = run(s, ev(event("S9", "Registration", n=3, sevis_id=None)))
    assert s.records["S9:Registration"]["status"] == "open"  # the batcher remembers the SEVIS ID


def test_failed_create_keeps_updates_waiting_with_a_problem():
    s, _ = run(fresh(), ev(event("S9", "Create", n=1)), ev(event("S9", n=2, sevis_id=None)))
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    (c,) = closed(outs)
    s, outs = run(
        s, ResultIn(result(c["batch_id"], recs(c)[0]["request_id"], status="failure", error_code="S1004"), BASE_MS)
    )
    assert s.records["S9:PersonalInfo"]["status"] == "waiting"
    assert "S1004" in s.records["S9:PersonalInfo"]["problems"][-1]


def test_hold_and_release():
    s, _ = run(fresh(), ev(event("S1", n=1)), ev(event("S2", n=2)))
    s, outs = run(s, CommandIn(command("hold", "h1", student_key="S1", dso_user_id=DSO, reason="check passport")))
    assert types(outs) == ["record_held", "student_held"]
    s, outs = run(s, ev(event("S1", "Registration", n=3)))
    assert s.records["S1:Registration"]["status"] == "held"
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    assert [r["student_key"] for r in recs(closed(outs)[0])] == ["S2"]
    assert sorted(s.records) == ["S1:PersonalInfo", "S1:Registration"]
    s, outs = run(s, CommandIn(command("release", "r1", student_key="S1", dso_user_id=DSO)))
    assert types(outs) == ["record_released", "record_released", "student_released"]
    assert {r["status"] for r in s.records.values()} == {"open"}


def test_close_is_idempotent_per_command_id():
    s, _ = run(fresh(), ev(event("S1", n=1)))
    s, outs1 = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    s, _ = run(s, ev(event("S2", n=2)))
    s, outs2 = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    assert len(closed(outs1)) == 1 and types(outs2) == []
    assert [(o.code, "applied before" in o.reason) for o in outs2] == [("duplicate_command", True)]  # dead-lettered
    assert "S2:PersonalInfo" in s.records


def test_close_takes_only_what_was_reviewed():
    s, _ = run(fresh(), ev(event("S1", n=1)), ev(event("S2", n=2)))
    reviewed = s.revision
    ids = sorted(s.records)
    # during the DSO's review: a new record, and a change to a reviewed one
    s, _ = run(s, ev(event("S3", n=3)), ev(event("S2", n=4, before={"x": 1}, after={"x": 2})))
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO, record_ids=ids, reviewed_revision=reviewed)))
    (c,) = closed(outs)
    assert [r["student_key"] for r in recs(c)] == ["S1"]
    assert "changed after revision" in c["reason"]
    assert sorted(s.records) == ["S2:PersonalInfo", "S3:PersonalInfo"]
    assert types(outs)[-1] == "opened"


def test_close_records_dso_and_command_time_and_rejects_bad_user_id():
    s, _ = run(fresh(), ev(event("S1", n=1)))
    _, outs = run(s, CommandIn(command("close", "bad", dso_user_id="short")))
    assert types(outs) == ["command_rejected"] and "exactly 10" in outs[0].event["reason"]
    at = BASE_MS + 123_456
    _, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO, at_ms=at)))
    (c,) = closed(outs)
    assert c["closed_by"] == DSO and c["at_ms"] == at
    assert len(c["batch_id"]) == BATCH_ID_LEN


def test_600_updates_roll_over_into_three_batches_in_order():
    s = fresh()
    for i in range(600):
        s, _ = apply(s, ev(event(f"S{i:04d}", n=i)))
    for i in range(3):  # creates go into the same documents, ≤250 each
        s, _ = apply(s, ev(event(f"C{i}", "Create", n=1000 + i)))
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    docs = closed(outs)
    assert [len(recs(d)) for d in docs] == [253, 250, 100]
    ids = [d["batch_id"] for d in docs]
    assert ids == sorted(ids) and len(set(ids)) == 3
    students = [r["student_key"] for d in docs for r in recs(d) if r["section"] == "update"]
    assert students == [f"S{i:04d}" for i in range(600)]
    first = recs(docs[0])
    assert [r["section"] for r in first[:3]] == ["create"] * 3  # creates first
    for d in docs:
        rids = [r["request_id"] for r in recs(d)]
        assert len(set(rids)) == len(rids)
        assert all(1 <= len(x) <= REQUEST_ID_MAX and not set(x) & set(":/\\ ") for x in rids)
        assert sum(r["section"] == "update" for r in recs(d)) <= 250
    assert s.records == {}


def test_batch_ids_strictly_increase_even_when_clock_goes_back():
    s = fresh()
    seen = []
    for i, at in enumerate([BASE_MS, BASE_MS, BASE_MS - 50_000, BASE_MS + 1]):
        s, _ = apply(s, ev(event(f"S{i}", n=i)))
        s, outs = apply(s, CommandIn(command("close", f"c{i}", dso_user_id=DSO, at_ms=at)))
        seen.append(closed(outs)[0]["batch_id"])
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_requeue_puts_records_back_and_next_close_gets_a_new_batch_id():
    s, _ = run(fresh(), ev(event("S1", n=1, before={"e": "a"}, after={"e": "b"})), ev(event("S2", n=2)))
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    first = closed(outs)[0]
    s, _ = run(s, ev(event("S1", n=3, before={"e": "b"}, after={"e": "c"})))  # newer change meanwhile
    s, outs = run(s, CommandIn(command("requeue", "q1", batch_id=first["batch_id"], reason="S0013")))
    assert types(outs)[-1] == "requeued"
    assert s.records["S1:PersonalInfo"]["before"] == {"e": "a"}  # what SEVIS still has
    assert s.records["S1:PersonalInfo"]["after"] == {"e": "c"}
    _, outs = run(s, CommandIn(command("requeue", "q2", batch_id=first["batch_id"])))
    assert types(outs) == ["command_rejected"]
    s, outs = run(s, CommandIn(command("close", "c2", dso_user_id=DSO, at_ms=BASE_MS)))
    second = closed(outs)[0]
    assert second["batch_id"] > first["batch_id"]
    assert sorted(r["student_key"] for r in recs(second)) == ["S1", "S2"]


def test_duplicate_event_is_ignored():
    e = event("S1", n=1)
    s, _ = run(fresh(), ev(e))
    s2, outs = run(s, ev(e))
    assert outs == [] and s2.records == s.records


def test_bad_event_goes_to_dlq_without_personal_data():
    e = event("S1", n=1, display_name="Secret Name")
    e["payload_json"] = "{not json"
    s, outs = run(fresh(), ev(e))
    assert isinstance(outs[0], Reject) and "Secret" not in outs[0].reason
    assert s.records == {}


def _tick(local: str, close_at="16:30", tz="America/Chicago", dso=DSO):
    dt = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(tz))
    return Tick(int(dt.timestamp() * 1000), tz, close_at, dso)


def test_scheduled_close_fires_once_a_day_at_local_time_and_skips_empty():
    s, _ = run(fresh(), ev(event("S1", n=1)))
    s, outs = run(s, _tick("2025-03-08T16:29:59"))
    assert outs == []
    s, outs = run(s, _tick("2025-03-08T16:30:05"))
    (cmd,) = [o.command for o in outs if isinstance(o, SendCommand)]
    assert cmd["command_id"] == f"scheduled:{ORG}:2025-03-08" and cmd["dso_user_id"] == DSO
    due = datetime(2025, 3, 8, 16, 30, tzinfo=ZoneInfo("America/Chicago"))
    assert cmd["requested_at_ms"] == int(due.timestamp() * 1000)
    s, outs = run(s, _tick("2025-03-08T18:00:00"))
    assert outs == []
    # DST starts on 2025-03-09 in Chicago: still 16:30 local
    s, _ = run(s, CommandIn(cmd))
    s, outs = run(s, _tick("2025-03-09T16:31:00"))
    assert outs == [] and s.sched_date == "2025-03-09"  # empty batch: skipped, decided
    s, _ = run(s, ev(event("S2", n=2)))
    s, outs = run(s, _tick("2025-03-10T16:30:00"))
    (cmd,) = [o.command for o in outs if isinstance(o, SendCommand)]
    assert cmd["requested_at_ms"] == int(
        datetime(2025, 3, 10, 16, 30, tzinfo=ZoneInfo("America/Chicago")).timestamp() * 1000
    )


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("ev"), st.integers(0, 5), st.sampled_from(["PersonalInfo", "Registration"]), st.integers(0, 3)
        ),
        st.tuples(st.just("close"), st.integers(0, 3)),
        st.tuples(st.just("hold"), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_property_every_event_ends_up_in_exactly_one_place(program):
    """Each non-undone event is in exactly one closed batch or still open; BatchIDs unique; ≤250."""
    s = fresh()
    closed_events = []
    sent = set()
    for i, op in enumerate(program):
        if op[0] == "ev":
            _, stu, kind, val = op
            e = event(f"S{stu}", kind, n=i, before={"v": 0}, after={"v": val})
            sent.add(e["event_id"])
            s, outs = apply(s, EventIn(e, BASE_MS + i))
        elif op[0] == "close":
            s, outs = apply(s, CommandIn(command("close", f"c{i}", dso_user_id=DSO, at_ms=BASE_MS + op[1])))
        else:
            s, outs = apply(
                s,
                CommandIn(
                    command(
                        op[0],
                        f"{op[0]}{i}",
                        student_key=f"S{op[1]}",
                        dso_user_id=DSO,
                        reason="check the I-20" if op[0] == "hold" else None,
                    )
                ),
            )
        closed_events += closed(outs)
    ids = [c["batch_id"] for c in closed_events]
    assert len(set(ids)) == len(ids)
    placed = [eid for c in closed_events for r in recs(c) for eid in r["event_ids"]]
    placed += [eid for r in s.records.values() for eid in r["event_ids"]]
    assert len(placed) == len(set(placed))
    assert set(placed) <= sent
    for c in closed_events:
        keys = [r["record_id"] for r in recs(c)]
        assert len(keys) == len(set(keys))  # at most one record per student and kind


# -- resend: rejected records back into the open batch after a fix


def _closed_with_results(*outcomes):
    """S1 and S2 closed into one batch, SEVIS's answer per student: 'ok' or an error code."""
    s, _ = run(fresh(), ev(event("S1", n=1, before={"e": "a"}, after={"e": "b"})), ev(event("S2", n=2)))
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    (c,) = closed(outs)
    for r, outcome in zip(recs(c), outcomes):
        ok = outcome == "ok"
        s, _ = run(
            s,
            ResultIn(
                result(
                    c["batch_id"],
                    r["request_id"],
                    status="success" if ok else "failure",
                    error_code=None if ok else outcome,
                ),
                BASE_MS,
            ),
        )
    return s, c


def test_resend_puts_only_the_rejected_record_back_with_its_clock_and_a_new_request_id():
    from sevisflow.processors.batcher.core import open_rejections

    s, c = _closed_with_results("S1003", "ok")
    bid = c["batch_id"]
    assert [(r["record_id"], r["code"]) for r in open_rejections(s)] == [("S1:PersonalInfo", "S1003")]
    old = recs(c)[0]
    s, outs = run(s, CommandIn(command("resend", "rs1", batch_id=bid, dso_user_id=DSO)))
    assert types(outs) == ["opened", "record_added", "resent"]
    rec = s.records["S1:PersonalInfo"]
    assert rec["request_id"] != old["request_id"] and rec["at_ms"] == old["at_ms"]  # same clock
    assert rec["resent_from"]["batch_id"] == bid and rec["resent_from"]["code"] == "S1003"
    assert "S2:PersonalInfo" not in s.records  # accepted: not resent
    _, again = run(s, CommandIn(command("resend", "rs2", batch_id=bid, dso_user_id=DSO)))
    assert types(again) == ["command_rejected"] and "resent before" in again[0].event["reason"]
    # the next close sends it; SEVIS accepts it: the rejection is resolved
    s, outs = run(s, CommandIn(command("close", "c2", dso_user_id=DSO, at_ms=BASE_MS + 7_200_000)))
    (c2,) = closed(outs)
    s, _ = run(s, ResultIn(result(c2["batch_id"], recs(c2)[0]["request_id"]), BASE_MS))
    assert open_rejections(s) == []


def test_resend_refuses_what_sevis_did_not_reject_and_unknown_batches():
    s, c = _closed_with_results("S1003", "ok")
    bid = c["batch_id"]
    for cid, fields, why in (
        ("x1", {"batch_id": "S0000000000001"}, "unknown to the batcher"),
        ("x2", {"batch_id": bid, "record_ids": ["S2:PersonalInfo"]}, "was not rejected by SEVIS"),
        ("x3", {"batch_id": bid, "record_ids": ["S9:Nope"]}, "is not a record of this batch"),
    ):
        s2, outs = run(s, CommandIn(command("resend", cid, dso_user_id=DSO, **fields)))
        assert types(outs) == ["command_rejected"] and why in outs[0].event["reason"], outs
        assert s2.records == {}
    s, c = _closed_with_results()  # no result yet
    _, outs = run(s, CommandIn(command("resend", "x4", batch_id=c["batch_id"], dso_user_id=DSO)))
    assert "no SEVIS result yet" in outs[0].event["reason"]


def test_resend_of_a_record_with_a_newer_open_change_does_not_duplicate_it():
    s, c = _closed_with_results("S1003", "ok")
    s, _ = run(
        s, ev(event("S1", n=5, payload={"@printForm": "false", "Telephone": "1"}, before={"e": "b"}, after={"e": "c"}))
    )
    s, outs = run(
        s,
        CommandIn(
            command("resend", "rs1", batch_id=c["batch_id"], dso_user_id=DSO, record_ids=[recs(c)[0]["request_id"]])
        ),
    )
    assert types(outs) == ["record_replaced", "resent"]
    (rec,) = s.records.values()
    assert rec["payload"] == {"@printForm": "false", "Email": "s1@example.edu", "Telephone": "1"}
    assert rec["before"] == {"e": "a"} and rec["after"] == {"e": "c"} and rec["resent_from"]["code"] == "S1003"


def test_resend_is_a_dso_command_checked_like_the_others():
    from sevisflow.processors.batcher.guard import CommandPolicy

    s, c = _closed_with_results("S1003", "ok")
    policy = CommandPolicy(frozenset({DSO}))
    _, outs = run(
        s,
        CommandIn(
            command("resend", "u1", batch_id=c["batch_id"], dso_user_id="NOTADSO001"),
            log_ms=BASE_MS + 3_600_000,
            policy=policy,
        ),
    )
    assert types(outs) == ["command_rejected"] and "not one of the school's DSOs" in outs[0].event["reason"]
    _, outs = run(
        s,
        CommandIn(
            command("resend", "u2", batch_id=c["batch_id"], dso_user_id=DSO),
            log_ms=BASE_MS + 3_600_000 + 30 * 3600 * 1000,
            policy=policy,
        ),
    )
    assert "stale or replayed" in outs[0].event["reason"]
    _, outs = run(s, CommandIn(command("resend", "u3", dso_user_id=DSO), log_ms=BASE_MS + 3_600_000, policy=policy))
    assert "resend: the batch id is missing" in outs[0].event["reason"]


# -- early close: a ready record that would be overdue before the next scheduled close


def _early_tick(local: str, close_at="16:30"):
    from sevisflow.core.worklist.deadlines import Deadlines

    dt = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("America/Chicago"))
    return Tick(
        int(dt.timestamp() * 1000), "America/Chicago", close_at, DSO, close_early=Deadlines(timezone="America/Chicago")
    )


def test_early_close_fires_once_when_a_ready_record_would_be_overdue_before_the_next_close():
    # BASE_MS is 2025-06-15 (Chicago): a PersonalInfo change then is due 2025-07-06 (21 days)
    s, _ = run(fresh(), ev(event("S1", n=1)))
    s, _ = run(s, _tick("2025-07-05T16:31:00"))  # decide the daily closes up to the 5th
    s, _ = run(s, CommandIn(command("close", "c0", dso_user_id=DSO)))  # (the records went out)
    s, _ = run(s, ev(event("S2", n=2)))  # due 2025-07-06 as well
    s, outs = run(s, _early_tick("2025-07-05T18:00:00"))  # next close: 07-06 16:30, still on time
    assert [o for o in outs if isinstance(o, SendCommand)] == []
    s, _ = run(s, _early_tick("2025-07-06T16:31:00"))  # the daily close of the 6th runs
    s, _ = run(s, ev(event("S3", n=3)))  # after it: due 07-06, next close 07-07
    s, outs = run(s, _early_tick("2025-07-06T17:00:00"))
    (cmd,) = [o.command for o in outs if isinstance(o, SendCommand)]
    assert cmd["command_id"].startswith(f"scheduled:{ORG}:2025-07-06:early-")
    assert cmd["dso_user_id"] == DSO and cmd["reviewed_revision"] is None and "overdue" in cmd["reason"]
    _, again = run(s, _early_tick("2025-07-06T17:00:02"))  # not twice before it is applied
    assert [o for o in again if isinstance(o, SendCommand)] == []
    s, outs = run(s, CommandIn(cmd))
    (c,) = closed(outs)
    assert "scheduled close: no person reviewed these records" in c["reason"]


def test_without_the_setting_or_for_records_without_a_limit_no_early_close():
    s, _ = run(fresh(), ev(event("S1", n=1)), ev(event("S9", "Create", n=2)))
    _, outs = run(s, _tick("2025-07-10T10:00:00"))  # overdue, but the setting is off
    assert [o.command["command_id"] for o in outs if isinstance(o, SendCommand)] == []
    s, _ = run(fresh(), ev(event("S9", "Create", n=2)))  # a Create has no legal limit
    _, outs = run(s, _early_tick("2025-07-10T10:00:00"))
    assert [o for o in outs if isinstance(o, SendCommand)] == []


def test_the_batcher_stage_tick_sends_the_early_close_on_the_commands_topic():
    """The stage's idle tick (its clock, the settings' rule table) reaches the early close of the core."""
    from datetime import datetime as _dt

    from sevisflow.core.config import settings_from_mapping
    from sevisflow.core.serde import registry
    from sevisflow.processors.batcher.stage import BatcherStage, BatcherStore

    settings = settings_from_mapping(
        {
            "school": {
                "org_id": ORG,
                "timezone": "America/Chicago",
                "close_at": "16:30",
                "close_dso": DSO,
                "close_early_when_due": True,
                "dso_user_ids": [DSO],
            }
        },
        env={},
    )
    stage, store = BatcherStage(settings), BatcherStore()
    store.load_partition(0, {})
    today = _dt.now(ZoneInfo("America/Chicago")).date().isoformat()
    stage._apply(store, 0, ORG, ev(event("S1", n=1)), None)  # a 2025 change: long overdue
    store.cache[(0, ORG)] = dataclasses_replace(store.cache[(0, ORG)], sched_date=today)  # today's close decided
    outs = stage._tick(store)
    (cmd,) = [
        registry().decode(o.value, "sevisflow.commands.BatchCommand")
        for o in outs
        if o.topic == settings.topics.commands
    ]
    assert cmd["command_id"].startswith(f"scheduled:{ORG}:{today}:early-") and cmd["dso_user_id"] == DSO
    stage._last_tick = 0.0
    assert not [o for o in stage._tick(store) if o.topic == settings.topics.commands]  # decided: not twice


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _two_batches_of_the_same_students():
    """S1–S3 closed into one batch, changed again and closed into a second: each record is in both."""
    s, _ = run(fresh(), *(ev(event(f"S{i}", n=i, before={"e": "a"}, after={"e": "b"})) for i in (1, 2, 3)))
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    (first,) = closed(outs)
    s, _ = run(s, *(ev(event(f"S{i}", n=10 + i, before={"e": "b"}, after={"e": "c"})) for i in (1, 2, 3)))
    s, outs = run(s, CommandIn(command("close", "c2", dso_user_id=DSO, at_ms=BASE_MS + 7_200_000)))
    (second,) = closed(outs)
    return s, [first, second]


@settings(max_examples=60, deadline=None)
@given(
    answers=st.permutations([(b, i) for b in (0, 1) for i in range(3)]),
    failures=st.sets(st.sampled_from([(b, i) for b in (0, 1) for i in range(3)])),
)
def test_an_acceptance_resolves_the_earlier_rejections_of_its_record_whatever_the_order_of_results(answers, failures):
    """A success looks for earlier rejections only among records SEVIS rejected (an index carried from state to
    state): SEVIS's results in any order, any of them rejections, say and leave what the pass over every kept
    batch at every result says and leaves."""
    import dataclasses

    from sevisflow.processors.batcher.core import open_rejections

    start, batches = _two_batches_of_the_same_students()
    carried, rebuilt = start, start
    for b, i in answers:
        rec = recs(batches[b])[i]
        failed = (b, i) in failures
        res = ResultIn(
            result(
                batches[b]["batch_id"],
                rec["request_id"],
                status="failure" if failed else "success",
                error_code="S1003" if failed else None,
            ),
            BASE_MS + 9_000_000,
        )
        carried, said = apply(carried, res)
        rebuilt, said_again = apply(dataclasses.replace(rebuilt, rejected_ids=None), res)
        assert said == said_again
        assert open_rejections(carried) == open_rejections(rebuilt)
        if carried.rejected_ids is not None:  # None until a success needs it
            assert {r["record_id"] for r in open_rejections(carried)} <= set(carried.rejected_ids)
    # a record is left rejected only where no batch of it was accepted after (or besides) the rejection
    still_open = {(r["batch_id"], r["record_id"]) for r in open_rejections(carried)}
    for b, i in failures:
        record_id = recs(batches[b])[i]["record_id"]
        accepted_elsewhere = any(
            (o, i) not in failures and answers.index((o, i)) > answers.index((b, i)) for o in (0, 1) if o != b
        )
        assert ((batches[b]["batch_id"], record_id) in still_open) is not accepted_elsewhere
    # a close starts the index over (it forgets the batches the close forgot)
    after_close, _ = run(
        carried, ev(event("S4", n=40)), CommandIn(command("close", "c3", dso_user_id=DSO, at_ms=BASE_MS + 14_400_000))
    )
    assert after_close.rejected_ids is None
