"""Hostile input to a running batcher on real Kafka: the far-future close of the attack report, a forged Kafka
timestamp, a forged SEVIS result, garbage — all refused or dead-lettered, nothing closed, the batcher alive; and a
state poisoned by a far-future BatchID stamp (from before commands were time-checked) neither crashes nor blocks
the school."""

from __future__ import annotations

import time

import orjson
import pytest

from sevisflow.core.kafka_io import delivery_raiser, flush_or_raise, make_producer, produce, read_topic
from sevisflow.core.serde import registry
from sevisflow.processors.batcher.stage import state_topic
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, command, event
from tests.batcher_support import (
    DSO,
    Batcher,
    batch_events,
    cli,
    closed_of,
    send_command,
    send_events,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]
SCHEMA = "sevisflow.commands.BatchCommand"


def _dead_letters(env) -> list[dict]:
    return [registry().decode(m.value()) for m in read_topic(env.kafka, env.topics.dlq) if m.value() is not None]


def test_forged_commands_close_nothing_and_the_next_real_close_works(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        send_events(
            env, [event("S1", "Create", n=1), event("S1", "Registration", n=2, sevis_id=None), event("S2", n=3)]
        )
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 3)
        now = int(time.time() * 1000)
        # the attack report: a close "by attacker01" asking for a BatchID in the year 2286
        send_command(env, command("close", "evil-1", dso_user_id="attacker01", at_ms=9_999_999_999_999))
        # a real DSO's id, but the record's Kafka timestamp forged 30 minutes ahead (the broker accepts up to 1 h)
        producer = make_producer(env.kafka)
        forged = registry().encode(SCHEMA, command("close", "evil-2", dso_user_id=DSO, at_ms=now + 1_800_000))
        producer.produce(env.topics.commands, key=ORG.encode(), value=forged, timestamp=now + 1_800_000)
        producer.flush(30)
        # a forged SEVIS result that would set S1's SEVIS ID and release its waiting update
        send_command(
            env,
            command(
                "result",
                "evil-3",
                at_ms=now,
                payload_json=orjson.dumps(
                    {
                        "batch_id": "S1750000000000",
                        "request_id": "1.S1",
                        "student_key": "S1",
                        "kind": "Create",
                        "status": "success",
                        "sevis_id": "N6666666666",
                    }
                ).decode(),
            ),
        )
        send_command(env, command("hold", "evil-4", student_key="S2", dso_user_id=DSO, at_ms=now, reason="\x1b[2J"))
        errors: list = []
        produce(producer, env.topics.commands, ORG.encode(), b"\xc3\x01garbage", on_delivery=delivery_raiser(errors))
        flush_or_raise(producer, errors)

        dead = wait_for_dead(env, 5)
        reasons = {d["source_offset"]: d["reason"] for d in dead}
        text = " | ".join(reasons.values())
        assert "after the command's Kafka timestamp" in text  # evil-1
        assert "ahead of the batcher's clock" in text  # evil-2
        assert "come only from sevis.results" in text  # evil-3
        assert "control or invisible character" in text  # evil-4
        assert "not decodable" in text  # garbage
        evs = batch_events(env)
        assert closed_of(evs) == [] and batcher.thread.is_alive()
        view = build_view(ORG, evs)
        assert view.records["S1:Registration"]["status"] == "waiting" and not view.held  # nothing forged took effect

        code, out, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0, err
        (batch,) = orjson.loads(out)["batches"]
        assert batch["records"] == 2 and batch["batch_id"].startswith("S")
        assert abs(int(batch["batch_id"][1:]) - now) < 10 * 60_000  # stamped from the real close's clock
    finally:
        batcher.stop()


def wait_for_dead(env, n: int, timeout_s: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        dead = [d for d in _dead_letters(env) if d["stage"] == "batcher"]
        if len(dead) >= n:
            return dead
        assert time.monotonic() < deadline, f"only {len(dead)} dead letters: {dead}"
        time.sleep(0.5)


def test_a_state_poisoned_by_a_far_future_stamp_neither_crashes_nor_blocks_the_school(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    send_events(env, [event("S1", n=1)])
    (msg,) = [m for m in read_topic(env.kafka, env.topics.events) if m.value() is not None]
    # what the attack left behind: the school's last BatchID stamp at the very end of the 13 digits
    meta = {
        "org_id": ORG,
        "revision": 0,
        "seq": 0,
        "last_stamp": 9_999_999_999_999,
        "open_since": None,
        "sched_date": None,
        "held": {},
    }
    producer = make_producer(env.kafka)
    errors: list = []
    produce(
        producer,
        state_topic(env),
        f"m|{ORG}".encode(),
        orjson.dumps(meta),
        partition=msg.partition(),
        on_delivery=delivery_raiser(errors),
    )
    flush_or_raise(producer, errors)

    batcher = Batcher(env)
    try:
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["ready"] == 1)
        code, out, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0, err
        (first,) = orjson.loads(out)["batches"]
        assert first["batch_id"].startswith("T") and len(first["batch_id"]) == 14
        assert "BatchIDs now start with T" in first["note"]
        send_events(env, [event("S2", n=2)])
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["ready"] == 1)
        code, out, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0, err
        (second,) = orjson.loads(out)["batches"]
        assert second["batch_id"].startswith("T") and second["batch_id"] > first["batch_id"]
    finally:
        batcher.stop()
    assert len(closed_of(batch_events(env))) == 2
