"""kill -9 on the EV path: an exchange program's batch is closed, written and sent exactly once, like the school's.

Two crash points on the way of one EV batch, each a real process killed and started again on the session's real
Kafka (and the HTTPS SEVIS simulator):

* the batcher, ended like kill -9 at the commit of the Kafka transaction that holds the program's closed batch
  (its events delivered inside the open transaction; ``SEVISFLOW_CRASH_AT=kafka.before_commit@batcher.closed``
  through ``tests.crashing``), while the school's F/M records wait in their own open batch: after the restart
  exactly one EV batch, with every EV record once, signed by the program's RO, and no F/M record in it;
* the SEVIS sink, crashed right after SEVIS accepted the EV document's POST and right before it published the
  results (``SEVISFLOW_CRASH_AT``): SEVIS got the BatchID once, every record's result is published (the new
  exchange visitor's SEVIS ID included), nothing re-queued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from sevisflow.sinks.outbox import Outbox
from sevisflow.sinks.xml.stage import sink_closed_batch
from sevisflow.sinks.xml.xsd import load_schema
from testkit.batcher import ORG, command, event
from tests.batcher_support import (
    DSO,
    batch_events,
    closed_of,
    records_of,
    send_command,
    send_events,
    view_of,
    wait_for,
    write_config,
)
from tests.crashing import EXIT_CODE
from tests.ev_support import PROGRAM as SAMPLE_PROGRAM
from tests.ev_support import UPDATE_PAYLOADS, batch_of, create_record, update_record
from tests.helpers import REPO, XSD_DIR
from tests.integration.test_sink_sevis_crash import Sink, _requeues

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]
PROGRAM, RO = "P-1-12345", "ROUSER0001"
NOW = int(time.time() * 1000)


def _program_config(env, path):
    cfg = write_config(env, path, school_extra=f'dso_user_ids = ["{DSO}"]\n')
    cfg.write_text(
        cfg.read_text() + f'\n[[exchange_programs]]\nprogram_number = "{PROGRAM}"\nsis_program = "RSCH"\n'
        f'ro_user_id = "{RO}"\n'
    )
    return cfg


def _ev(student: str, n: int) -> dict:
    return event(
        student,
        "EV.Biographical",
        n=n,
        org=PROGRAM,
        sevis_id=f"N{n:010d}",
        payload={"@printForm": "false", "EmailAddress": f"v{n}@example.org"},
    )


def test_kill_9_between_the_ev_close_and_its_commit_gives_exactly_one_ev_batch(env, tmp_path):
    cfg = _program_config(env, tmp_path / "sevisflow.toml")
    argv = [
        sys.executable,
        "-m",
        "tests.crashing",
        "sevisflow.processors.batcher",
        "--config",
        str(cfg),
        "--instance",
        "evcrash",
        "--session-timeout-ms",
        "6000",
        "--log-level",
        "WARNING",
    ]
    proc_env = dict(os.environ, SEVISFLOW_CRASH_AT="kafka.before_commit@batcher.closed", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, cwd=REPO, env=proc_env)
    try:
        send_events(env, [_ev(f"J{i}", i) for i in range(5)] + [event(f"F{i}", n=100 + i) for i in range(2)])
        wait_for(env, lambda evs: sum(e["type"] == "record_added" for e in evs) == 7, timeout=90)
        cmd = command("close", "close-ev-crash", org=PROGRAM, dso_user_id=RO, at_ms=NOW)
        send_command(env, cmd)
        assert proc.wait(90) == EXIT_CODE
    finally:
        if proc.poll() is None:
            proc.kill()
    assert closed_of(batch_events(env), PROGRAM) == []  # the uncommitted close is invisible
    del proc_env["SEVISFLOW_CRASH_AT"]
    proc = subprocess.Popen(argv, cwd=REPO, env=proc_env)
    try:
        wait_for(env, lambda evs: len(closed_of(evs, PROGRAM)) >= 1, timeout=90)
        send_command(env, cmd)  # the same command again: still one batch
        send_events(env, [_ev("J99", 99)])
        evs = wait_for(
            env, lambda evs: any(e["type"] == "record_added" and "J99" in e["record_json"] for e in evs), timeout=90
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    (closed,) = closed_of(evs, PROGRAM)
    assert closed["closed_by"] == RO and closed["batch_id"].startswith("P112345") and len(closed["batch_id"]) == 14
    assert sorted(r["student_key"] for r in records_of(closed)) == [f"J{i}" for i in range(5)]
    assert closed_of(evs, ORG) == [] and sorted(r["student_key"] for r in view_of(env).records.values()) == ["F0", "F1"]


@pytest.mark.parametrize("point", ["sevis.after_post", "sevis.before_publish"])
def test_a_sevis_sink_crash_on_the_ev_batchs_way_sends_it_once(kafka_stack, unique, sim, tmp_path, point):
    sink = Sink(kafka_stack, unique, sim, tmp_path)
    records = [
        create_record(1),
        update_record(2, "EV.Program.Extension", UPDATE_PAYLOADS["EV.Program.Extension"], sevis_id="N0000000002"),
    ]
    batch = batch_of(records, f"P199999{unique[:7]:0>7}"[:14].upper())
    outbox = Outbox(sink.settings.sevis.outbox_dir, sink.settings.sevis.quarantine_dir, sink.settings.school.timezone)
    assert sink_closed_batch(batch, load_schema(XSD_DIR), outbox).status == "written"
    assert b"<SEVISBatchCreateUpdateEV" in outbox.find(batch.batch_id).xml_path.read_bytes()
    sink.crash_at(point)
    sink.run_until("processed", batch.batch_id)
    assert sim.post_count(batch.batch_id) == 1 and sim.upload_count(batch.batch_id, "S0000") == 1
    results = sink.topic(sink.settings.topics.results, batch.batch_id)
    by_request: dict[str, set] = {}
    for key, v in results:
        assert key == SAMPLE_PROGRAM.encode() and v["org_id"] == SAMPLE_PROGRAM
        by_request.setdefault(v["request_id"], set()).add(orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    assert sorted(by_request) == sorted(r["request_id"] for r in records)
    assert all(len(same) == 1 for same in by_request.values()), "a result was published twice with other content"
    create = orjson.loads(next(iter(by_request["C00000001"])))
    assert create["status"] == "success" and create["sevis_id"], create
    assert not _requeues(sink, batch.batch_id)
