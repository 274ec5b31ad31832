"""The batcher remembers a command id for COMMAND_MEMORY_MS after its Kafka time, not for good.

A command takes effect once because its id is remembered (applied or refused). Kept forever, every command a
school ever sent — and every forged one the guard refused — stayed in the batcher's state and memory: a flood
of forged commands on the commands topic grew it without bound. Now what is older than the window is dropped,
and a command sent again after the window still takes no second effect: a DSO's is refused as untimely, a
sink's requeue finds its batch requeued.
"""

from __future__ import annotations

from sevisflow.processors.batcher import core
from sevisflow.processors.batcher.core import COMMAND_MEMORY_MS, CommandIn, EventIn, Publish, Reject, School, apply
from sevisflow.processors.batcher.guard import CommandPolicy
from testkit.batcher import BASE_MS, ORG, command, event, run

DSO = "DSOUSER001"
POLICY = CommandPolicy(frozenset({DSO}))
DAY = 86_400_000


def _kinds(outs) -> list[str]:
    return [o.event["type"] for o in outs if isinstance(o, Publish)]


def test_a_flood_of_forged_commands_leaves_only_the_last_days_in_the_state(monkeypatch):
    monkeypatch.setattr(core, "COMMAND_SWEEP_EVERY", 100)
    s = School(ORG)
    per_day, days = 100, 30
    for d in range(days):
        for i in range(per_day):
            at = BASE_MS + d * DAY + i * 1000
            forged = command("close", f"forged-{d}-{i}", dso_user_id="NOTADSO001", at_ms=at)
            s, outs = apply(s, CommandIn(forged, log_ms=at, policy=POLICY))
            assert [o.code for o in outs if isinstance(o, Reject)] == ["unauthorized_command"]
    # before: all 3,000 remembered; now the last 7 days' and at most one sweep interval more
    assert len(s.commands) <= per_day * COMMAND_MEMORY_MS // DAY + 100 + per_day
    assert len(s.commands) >= per_day * COMMAND_MEMORY_MS // DAY
    newest = f"forged-{days - 1}-{per_day - 1}"
    assert newest in s.commands and "forged-0-0" not in s.commands


def test_within_the_window_a_command_id_still_takes_effect_once():
    s, _ = run(School(ORG), EventIn(event("S1", n=1), BASE_MS))
    close = command("close", "c1", dso_user_id=DSO)
    at = close["requested_at_ms"]
    s, outs = apply(s, CommandIn(close, log_ms=at, policy=POLICY))
    assert "closed" in _kinds(outs)
    s, outs = run(s, EventIn(event("S2", n=2), BASE_MS))
    s, again = apply(s, CommandIn(close, log_ms=at + COMMAND_MEMORY_MS - 60_000, policy=POLICY))
    assert [o.code for o in again if isinstance(o, Reject)] == ["duplicate_command"] and "closed" not in _kinds(again)


def test_a_command_sent_again_after_the_window_takes_no_second_effect(monkeypatch):
    monkeypatch.setattr(core, "COMMAND_SWEEP_EVERY", 1)  # swept at every command: the id is gone
    s, _ = run(School(ORG), EventIn(event("S1", n=1), BASE_MS))
    close = command("close", "c1", dso_user_id=DSO)
    at = close["requested_at_ms"]
    s, outs = apply(s, CommandIn(close, log_ms=at, policy=POLICY))
    (bid,) = s.batches
    requeue = command("requeue", "rq1", batch_id=bid, at_ms=at)
    s, outs = apply(s, CommandIn(requeue, log_ms=at + 60_000, policy=POLICY))
    assert "requeued" in _kinds(outs) and len(s.records) == 1
    later = at + COMMAND_MEMORY_MS + DAY
    s, outs = run(s, EventIn(event("S2", n=2), later - 1000))
    forged = command("close", "x1", dso_user_id="NOTADSO001", at_ms=later - 500)
    s, _ = apply(s, CommandIn(forged, log_ms=later - 500, policy=POLICY))  # its sweep drops the two old ids
    assert "c1" not in s.commands and "rq1" not in s.commands and "x1" in s.commands
    s, again = apply(s, CommandIn(close, log_ms=later, policy=POLICY))
    assert [o.code for o in again if isinstance(o, Reject)] == ["untimely_command"] and "closed" not in _kinds(again)
    s, again = apply(s, CommandIn(requeue, log_ms=later, policy=POLICY))
    assert "requeued" not in _kinds(again) and "command_rejected" in _kinds(again)
    assert sorted(r["student_key"] for r in s.records.values()) == ["S1", "S2"], "S1 is back once, not twice"


def test_pure_replays_without_a_log_time_remember_every_command():
    s, _ = run(School(ORG), EventIn(event("S1", n=1), BASE_MS))
    close = command("close", "c1", dso_user_id=DSO)
    s, _ = apply(s, CommandIn(close))
    s, again = apply(s, CommandIn(close))
    assert [o.code for o in again if isinstance(o, Reject)] == ["duplicate_command"]
