"""The batcher's worklist gauges from plain school states (no services): records per deadline band, the
oldest ready record, open SEVIS rejections (resolved by a later acceptance) — and their /metrics names."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, generate_latest

from sevisflow.core.observability import StageMetrics
from sevisflow.core.worklist.deadlines import Deadlines
from sevisflow.processors.batcher.core import CommandIn, EventIn, ResultIn, School, apply
from sevisflow.processors.batcher.gauges import worklist_gauges
from testkit.batcher import BASE_MS, ORG, command, event, result

DSO = "DSOUSER001"
TZ = "America/Chicago"
D = Deadlines(timezone=TZ)


def at(local: str) -> int:
    return int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(TZ)).timestamp() * 1000)


def run(state, *inputs):
    outs = []
    for inp in inputs:
        state, o = apply(state, inp)
        outs += o
    return state, outs


def test_records_per_band_and_the_oldest_ready_record():
    # BASE_MS is 2025-06-15 10:06 Chicago; +n seconds per event. PersonalInfo: due 2025-07-06
    s, _ = run(
        School(ORG),
        EventIn(event("S1", n=1), BASE_MS),
        EventIn(event("S2", "Create", n=2), BASE_MS),
        EventIn(event("S3", n=3, sevis_id=None), BASE_MS),
    )  # S3 has no SEVIS ID: waiting
    s, _ = run(s, EventIn(event("S3", "Status.Terminate", n=4, sevis_id=None, event_id="t"), BASE_MS))
    now = at("2025-07-05T12:00:00")  # 1 day before the due day
    g = worklist_gauges([s], D, now)
    assert g.records_by_band == {"overdue": 0, "urgent": 3, "soon": 0, "ok": 0, "none": 1}
    assert g.oldest_ready_age_s == (now - (BASE_MS + 1000)) / 1000  # S1's SIS commit; S3 waits: not ready
    assert worklist_gauges([s], D, at("2025-07-07T09:00:00")).records_by_band["overdue"] == 3
    assert worklist_gauges([School(ORG)], D, now).oldest_ready_age_s == 0


def test_open_rejections_count_until_a_later_batch_is_accepted():
    s, _ = run(School(ORG), EventIn(event("S1", n=1), BASE_MS), EventIn(event("S2", n=2), BASE_MS))
    s, outs = run(s, CommandIn(command("close", "c1", dso_user_id=DSO)))
    import orjson

    closed = next(o.event for o in outs if getattr(o, "event", {}).get("type") == "closed")
    recs = orjson.loads(closed["records_json"])
    answered = at("2025-06-20T09:00:00")
    s, _ = run(
        s,
        ResultIn(result(closed["batch_id"], recs[0]["request_id"], status="failure", error_code="S1003"), answered),
        ResultIn(result(closed["batch_id"], recs[1]["request_id"]), answered),
    )
    g = worklist_gauges([s], D, answered + 3_600_000)
    assert (g.rejections_open, g.oldest_rejection_age_s) == (1, 3600.0)
    s, outs = run(s, CommandIn(command("resend", "r1", batch_id=closed["batch_id"], dso_user_id=DSO)))
    assert worklist_gauges([s], D, answered).rejections_open == 1  # resent: still open until accepted
    s, outs = run(s, CommandIn(command("close", "c2", dso_user_id=DSO, at_ms=BASE_MS + 7_200_000)))
    second = next(o.event for o in outs if getattr(o, "event", {}).get("type") == "closed")
    (again,) = orjson.loads(second["records_json"])
    s, _ = run(s, ResultIn(result(second["batch_id"], again["request_id"]), answered))
    assert worklist_gauges([s], D, answered).rejections_open == 0


def test_the_gauges_reach_metrics_under_their_documented_names():
    reg = CollectorRegistry()
    StageMetrics("batcher", reg).worklist({"overdue": 2, "ok": 1}, 90.5, 1, 7200)
    text = generate_latest(reg).decode()
    assert 'sevisflow_deadline_records{band="overdue",stage="batcher"} 2.0' in text
    assert 'sevisflow_oldest_ready_record_age_seconds{stage="batcher"} 90.5' in text
    assert 'sevisflow_rejections_open{stage="batcher"} 1.0' in text
    assert 'sevisflow_oldest_open_rejection_age_seconds{stage="batcher"} 7200.0' in text
