"""The daily scheduled close after the batcher was down: the real run time is recorded next to the
scheduled time, a close missed across midnight runs late, and days with no close of their own are
dead-lettered for the DSO (stage ``scheduler``) instead of silently skipped. Pure: the batcher core."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import orjson

from sevisflow.core.worklist.items import DSO_STAGES
from sevisflow.processors.batcher.core import (
    LATE_AFTER_MS,
    SCHEDULER_STAGE,
    CommandIn,
    EventIn,
    Reject,
    School,
    SendCommand,
    Tick,
    apply,
)
from testkit.batcher import ORG, event

DSO = "DSOUSER001"
TZ = "America/Chicago"


def _ms(local: str) -> int:
    return int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(TZ)).timestamp() * 1000)


def _tick(local: str) -> Tick:
    return Tick(_ms(local), TZ, "16:30", DSO)


def _run(state: School, *inputs):
    outs = []
    for inp in inputs:
        state, o = apply(state, inp)
        outs += o
    return state, outs


def _closed_once_on(day_local: str) -> School:
    """A school whose close of that day ran on time, with one open record afterwards."""
    s, outs = _run(School(ORG), EventIn(event("S1", n=1), _ms(day_local + "T09:00:00")), _tick(day_local + "T16:30:01"))
    (cmd,) = [o.command for o in outs if isinstance(o, SendCommand)]
    s, _ = _run(s, CommandIn(cmd), EventIn(event("S2", n=2), _ms(day_local + "T17:00:00")))
    return s


def test_an_on_time_close_stands_at_its_time_and_records_when_it_ran():
    _s, outs = _run(School(ORG), EventIn(event("S1", n=1), _ms("2025-03-03T09:00:00")), _tick("2025-03-03T16:31:40"))
    (cmd,) = [o.command for o in outs if isinstance(o, SendCommand)]
    assert cmd["requested_at_ms"] == _ms("2025-03-03T16:30:00")
    pay = orjson.loads(cmd["payload_json"])
    assert pay == {
        "scheduled_for": "2025-03-03",
        "scheduled_at_ms": _ms("2025-03-03T16:30:00"),
        "ran_at_ms": _ms("2025-03-03T16:31:40"),
        "missed_days": [],
    }
    assert "run at 2025-03-03T16:31:40-06:00" in cmd["reason"] and "late" not in cmd["reason"]


def test_a_close_missed_across_midnight_runs_late_at_the_real_time():
    # down from before 16:30 on the 4th to 08:00 on the 5th: before, the 4th was never closed and nothing said so
    s = _closed_once_on("2025-03-03")
    s, outs = _run(s, _tick("2025-03-05T08:00:00"))
    (cmd,) = [o.command for o in outs if isinstance(o, SendCommand)]
    assert cmd["command_id"] == f"scheduled:{ORG}:2025-03-04"
    assert cmd["requested_at_ms"] == _ms("2025-03-05T08:00:00"), "recorded when it ran, not when it was due"
    assert _ms("2025-03-05T08:00:00") - _ms("2025-03-04T16:30:00") > LATE_AFTER_MS
    pay = orjson.loads(cmd["payload_json"])
    assert pay["scheduled_at_ms"] == _ms("2025-03-04T16:30:00") and pay["missed_days"] == []
    assert "scheduled daily close of 2025-03-04 at 16:30" in cmd["reason"] and "min late" in cmd["reason"]
    assert s.sched_date == "2025-03-04"
    s, outs = _run(s, _tick("2025-03-05T12:00:00"))
    assert outs == [], "decided: not closed twice"
    s, outs = _run(s, EventIn(event("S3", n=3), _ms("2025-03-05T13:00:00")), _tick("2025-03-05T16:30:00"))
    assert [o.command["command_id"] for o in outs if isinstance(o, SendCommand)] == [f"scheduled:{ORG}:2025-03-05"]


def test_days_missed_while_the_batcher_was_down_are_dead_lettered_for_the_dso():
    s = _closed_once_on("2025-03-03")
    s, outs = _run(s, _tick("2025-03-07T10:00:00"))  # down on the 4th, 5th and 6th (and before 16:30 on the 7th)
    (notice,) = [o for o in outs if isinstance(o, Reject)]
    assert notice.code == "scheduled_close_missed" and notice.stage == SCHEDULER_STAGE in DSO_STAGES
    assert notice.at_ms == _ms("2025-03-07T10:00:00")
    assert "2 day(s): 2025-03-04, 2025-03-05" in notice.reason and "close of 2025-03-06" in notice.reason
    (cmd,) = [o.command for o in outs if isinstance(o, SendCommand)]
    assert cmd["command_id"] == f"scheduled:{ORG}:2025-03-06"
    assert orjson.loads(cmd["payload_json"])["missed_days"] == ["2025-03-04", "2025-03-05"]


def test_missed_days_are_reported_even_when_nothing_was_open():
    s = _closed_once_on("2025-03-03")
    s, _ = _run(
        s,
        CommandIn(
            {
                "command_id": "c-close",
                "org_id": ORG,
                "kind": "close",
                "dso_user_id": DSO,
                "student_key": None,
                "record_ids": [],
                "reviewed_revision": None,
                "batch_id": None,
                "reason": None,
                "requested_at_ms": _ms("2025-03-03T18:00:00"),
                "payload_json": None,
            }
        ),
    )
    s, outs = _run(s, _tick("2025-03-06T17:00:00"))
    assert [o.code for o in outs if isinstance(o, Reject)] == ["scheduled_close_missed"]
    assert not [o for o in outs if isinstance(o, SendCommand)]  # nothing open: no close, but the gap is reported
    assert s.sched_date == "2025-03-06"


def test_the_missed_close_reaches_the_dso_worklist_and_other_batcher_letters_do_not():
    from sevisflow.core.dlq import dead_letter_record
    from sevisflow.core.worklist.items import dead_letter_items

    s = _closed_once_on("2025-03-03")
    _, outs = _run(s, _tick("2025-03-06T17:00:00"))
    (notice,) = [o for o in outs if isinstance(o, Reject)]
    letters = [
        dead_letter_record(notice.stage, notice.code, notice.reason, notice.at_ms),
        dead_letter_record("batcher", "malformed_command", "operator's business", notice.at_ms),
    ]
    (item,) = dead_letter_items(letters)
    assert item.title == "scheduled close missed" and "2025-03-04, 2025-03-05" in item.detail[0]
    assert item.student_key is None and "batch status" in item.action
