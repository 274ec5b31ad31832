"""The batcher against a real Kafka: exactly-once close, crash recovery, rollover, rebalance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from sevisflow.app.cli import main as cli_main
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, command, event, result
from tests.batcher_support import (
    DSO,
    ORG2,
    Batcher,
    batch_events,
    batcher_settings,
    closed_of,
    records_of,
    send,
    send_command,
    send_events,
    setup_topics,
    view_of,
    wait_for,
    write_config,
)
from tests.crashing import EXIT_CODE
from tests.helpers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]
NOW = int(time.time() * 1000)
"""The requested time of the tests' commands: fixed (every close may ask at the same time), and within the
batcher's window around the command's Kafka timestamp (processors/batcher/guard.py)."""


# ----------------------------------------------------------------------------- tests


def test_close_while_events_keep_arriving(env, tmp_path, capsys):
    """Several DSO closes while 300 events stream in: each event in exactly one batch, none lost."""
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    events = [event(f"S{i:04d}", n=i) for i in range(300)]
    sent_ids = {e["event_id"] for e in events}

    def stream() -> None:
        for i in range(0, 300, 10):
            send_events(env, events[i : i + 10])
            time.sleep(0.2)

    producer = threading.Thread(target=stream)
    try:
        producer.start()
        closes = 0
        while producer.is_alive():
            code = cli_main(["--config", str(cfg), "batch", "close", "--dso", DSO, "--yes", "--json"])
            out = capsys.readouterr()
            assert code in (0, 1), out.err
            closes += code == 0
            time.sleep(0.1)
        producer.join()
        assert closes >= 1
        evs = wait_for(
            env,
            lambda evs: (
                sum(len(records_of(c)) for c in closed_of(evs)) + build_view(ORG, evs).counts()["records"] == 300
            ),
        )
        if build_view(ORG, evs).counts()["records"]:
            assert cli_main(["--config", str(cfg), "batch", "close", "--dso", DSO, "--yes"]) == 0
            evs = batch_events(env)
    finally:
        batcher.stop()
    closed = closed_of(evs)
    assert len(closed) >= 2
    placed = [eid for c in closed for r in records_of(c) for eid in r["event_ids"]]
    assert sorted(placed) == sorted(sent_ids)  # nothing lost, nothing twice
    ids = [c["batch_id"] for c in closed]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)


def test_kill_9_between_close_and_publish_gives_exactly_one_batch(env, tmp_path):
    # the batcher process's settings: its DSOs too (it refuses commands of anyone else)
    cfg = write_config(env, tmp_path / "sevisflow.toml", school_extra=f'dso_user_ids = ["{DSO}"]\n')
    # through tests.crashing: the process ends (137, as kill -9) at the first commit of a transaction that
    # holds a closed batch, after its events were delivered to Kafka (inside the open transaction)
    argv = [
        sys.executable,
        "-m",
        "tests.crashing",
        "sevisflow.processors.batcher",
        "--config",
        str(cfg),
        "--instance",
        "crash",
        "--session-timeout-ms",
        "6000",
        "--log-level",
        "WARNING",
    ]
    proc_env = dict(os.environ, SEVISFLOW_CRASH_AT="kafka.before_commit@batcher.closed", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, cwd=REPO, env=proc_env)
    try:
        send_events(env, [event(f"S{i}", n=i) for i in range(5)])
        wait_for(env, lambda evs: sum(e["type"] == "record_added" for e in evs) == 5)
        cmd = command("close", "close-crash-1", dso_user_id=DSO, at_ms=NOW)
        send_command(env, cmd)
        assert proc.wait(60) == EXIT_CODE
    finally:
        if proc.poll() is None:
            proc.kill()
    assert closed_of(batch_events(env)) == []  # the uncommitted close is invisible
    del proc_env["SEVISFLOW_CRASH_AT"]
    proc = subprocess.Popen(argv, cwd=REPO, env=proc_env)
    try:
        evs = wait_for(env, lambda evs: len(closed_of(evs)) >= 1)
        send_command(env, cmd)  # the same command again: still one batch
        send_events(env, [event("S99", n=99)])
        evs = wait_for(env, lambda evs: any(e["type"] == "record_added" and "S99" in e["record_json"] for e in evs))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    closed = closed_of(evs)
    assert len(closed) == 1
    assert sorted(r["student_key"] for r in records_of(closed[0])) == [f"S{i}" for i in range(5)]


def test_600_updates_make_three_batches_in_order(env):
    batcher = Batcher(env)
    try:
        send_events(env, [event(f"S{i:04d}", n=i) for i in range(600)])
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 600)
        send_command(env, command("close", "c600", dso_user_id=DSO, at_ms=NOW))
        evs = wait_for(env, lambda evs: len(closed_of(evs)) == 3)
    finally:
        batcher.stop()
    closed = closed_of(evs)
    assert [len(records_of(c)) for c in closed] == [250, 250, 100]
    assert [c["batch_id"] for c in closed] == sorted(c["batch_id"] for c in closed)
    assert [r["student_key"] for c in closed for r in records_of(c)] == [f"S{i:04d}" for i in range(600)]
    assert all(len(c["batch_id"]) == 14 and c["closed_by"] == DSO and c["at_ms"] == NOW for c in closed)


def test_coalesce_undo_hold_release_and_waiting_updates(env):
    batcher = Batcher(env)
    try:
        send_events(
            env,
            [
                event("S1", n=1, before={"email": "a"}, after={"email": "b"}),
                event("S1", n=2, before={"email": "b"}, after={"email": "c"}),  # replaces n=1
                event(
                    "S2",
                    "Program.Extension",
                    n=3,
                    coalesce_key="Program.EndDate",
                    before={"end": "2026-05-15"},
                    after={"end": "2026-12-15"},
                ),
                event(
                    "S2",
                    "Program.Shorten",
                    n=4,
                    coalesce_key="Program.EndDate",
                    before={"end": "2026-12-15"},
                    after={"end": "2026-05-15"},
                ),  # undoes n=3
                event("S3", "Create", n=5, payload={"@printForm": "true"}),
                event("S3", "Registration", n=6, sevis_id=None),  # waits for the ID
                event("S4", n=7),
            ],
        )
        send_command(env, command("hold", "h1", student_key="S4", dso_user_id=DSO, reason="check the I-20", at_ms=NOW))
        wait_for(env, lambda evs: any(e["type"] == "student_held" for e in evs))
        view = view_of(env)
        assert sorted(view.records) == ["S1:PersonalInfo", "S3:Create", "S3:Registration", "S4:PersonalInfo"]
        assert view.records["S1:PersonalInfo"]["after"] == {"email": "c"}
        assert view.records["S3:Registration"]["status"] == "waiting"
        assert view.records["S4:PersonalInfo"]["status"] == "held"
        send_command(env, command("close", "c1", dso_user_id=DSO, at_ms=NOW))
        evs = wait_for(env, lambda evs: len(closed_of(evs)) == 1)
        (first,) = closed_of(evs)
        assert sorted(r["record_id"] for r in records_of(first)) == ["S1:PersonalInfo", "S3:Create"]
        create = next(r for r in records_of(first) if r["kind"] == "Create")
        send(
            env,
            env.topics.results,
            "sevisflow.results.SevisResult",
            [result(first["batch_id"], create["request_id"], status="success", sevis_id="N0000012345")],
        )
        send_command(env, command("release", "r1", student_key="S4", dso_user_id=DSO, at_ms=NOW))
        wait_for(
            env,
            lambda evs: (
                any(e["type"] == "student_released" for e in evs)
                and any(e["type"] == "record_released" and "S3" in e["record_json"] for e in evs)
            ),
        )
        send_command(env, command("close", "c2", dso_user_id=DSO, at_ms=NOW))
        evs = wait_for(env, lambda evs: len(closed_of(evs)) == 2)
    finally:
        batcher.stop()
    second = closed_of(evs)[1]
    recs = {r["record_id"]: r for r in records_of(second)}
    assert sorted(recs) == ["S3:Registration", "S4:PersonalInfo"]
    assert recs["S3:Registration"]["sevis_id"] == "N0000012345"
    assert second["batch_id"] > first["batch_id"]


def test_batch_ids_unique_across_restarts_and_two_instances(kafka_stack, unique):
    """Every close uses the same requested time (skewed clocks): ids still never repeat. ORG2 is a member school
    ([[schools]]) with the same DSO: the batcher refuses a command for an F/M OrgID it was not configured for."""
    env = batcher_settings(kafka_stack, unique, schools=[{"org_id": ORG2, "sis_school": "TWO", "dso_user_ids": [DSO]}])
    setup_topics(env)
    ids: dict[str, list[str]] = {ORG: [], ORG2: []}
    n = 0

    def close_both() -> None:
        nonlocal n
        for org in (ORG, ORG2):
            n += 1
            send_events(env, [event(f"S{n}", n=n, org=org)])
        # a DSO closes what they saw: wait until both schools show their new record
        wait_for(env, lambda evs: all(build_view(o, evs).counts()["records"] == 1 for o in ids), timeout=60)
        for org in (ORG, ORG2):
            send_command(env, command("close", f"c{n}-{org}", dso_user_id=DSO, org=org, at_ms=NOW))
        evs = wait_for(env, lambda evs: all(len(closed_of(evs, o)) == len(ids[o]) + 1 for o in ids), timeout=60)
        for org in ids:
            ids[org] = [c["batch_id"] for c in closed_of(evs, org)]

    running: list[Batcher] = []
    try:
        running.append(Batcher(env, instance="a"))
        close_both()
        running.pop().stop()
        running.append(Batcher(env, instance="a"))  # restart
        close_both()
        running.append(Batcher(env, instance="b"))  # second instance: rebalance
        close_both()
        running.pop(0).stop()  # b takes everything after a's session times out
        close_both()
    finally:
        for b in running:
            b.stop()
    for _org, got in ids.items():
        assert len(got) == 4 and len(set(got)) == 4 and got == sorted(got), got
        assert all(len(x) == 14 for x in got)


def test_scheduled_close_runs_in_the_batcher(kafka_stack, unique):
    """close_at in the past today: the batcher's idle tick sends one close command for today and closes."""
    settings = batcher_settings(kafka_stack, unique, close_at="00:00", close_dso=DSO)
    setup_topics(settings)
    send_events(settings, [event("S1", n=1), event("S2", n=2)])  # before the batcher starts: one poll sees both
    batcher = Batcher(settings)
    try:
        evs = wait_for(settings, lambda evs: len(closed_of(evs)) == 1)
        send_events(settings, [event("S3", n=3)])
        wait_for(settings, lambda evs: any(e["type"] == "record_added" and "S3" in e["record_json"] for e in evs))
        time.sleep(3)  # more idle ticks: the day is decided, no second close
        evs = batch_events(settings)
    finally:
        batcher.stop()
    (closed,) = closed_of(evs)
    assert closed["command_id"].startswith(f"scheduled:{ORG}:") and closed["closed_by"] == DSO
    assert sorted(r["student_key"] for r in records_of(closed)) == ["S1", "S2"]
