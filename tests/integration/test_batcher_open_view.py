"""`batch show` from the batcher's open-batch view (sevis.batch.open) equals the full-history rebuild, on real Kafka."""

from __future__ import annotations

import time

import orjson
import pytest

from sevisflow.app.cli import batch as batch_cli
from sevisflow.app.cli import main as cli_main
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, event
from tests.batcher_support import (
    DSO,
    ORG2,
    Batcher,
    batch_events,
    closed_of,
    records_of,
    send_events,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]


def cli(capsys, cfg, *argv) -> str:
    code = cli_main(["--config", str(cfg), *argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def revision_of_view(env, org: str = ORG) -> int:
    value = batch_cli.read_open_batch(env, org)
    return -1 if value is None else value["revision"]


def eventually(read, want, timeout: float = 20.0):
    """Kafka writes a transaction's markers after the commit returns, partition by partition: a
    reader may see the events on sevis.batches a moment before the view of the same transaction."""
    deadline = time.monotonic() + timeout
    while (got := read()) != want:
        assert time.monotonic() < deadline, f"still {got!r}, expected {want!r}"
        time.sleep(0.1)


def both_paths(capsys, cfg, env) -> dict:
    """`batch show` (table and --json) by the view and by the history: identical; the view was really used."""
    eventually(lambda: revision_of_view(env), build_view(ORG, batch_events(env)).revision)
    fast_json = cli(capsys, cfg, "batch", "show", "--json")
    slow_json = cli(capsys, cfg, "batch", "show", "--json", "--from-history")
    assert fast_json == slow_json
    assert cli(capsys, cfg, "batch", "show") == cli(capsys, cfg, "batch", "show", "--from-history")
    return orjson.loads(fast_json)


def records_in_history(env, n: int, org: str = ORG) -> None:
    wait_for(env, lambda evs: build_view(org, evs).counts()["records"] == n)


def test_show_from_the_view_equals_the_history_through_a_dso_day(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        # adds (two schools share the topics), then a replacement of S1's change
        send_events(
            env,
            [
                event("S1", n=1, display_name="Chen, Wei", before={"email": "a"}, after={"email": "b"}),
                event("S2", n=2, display_name="Okafor, Ada"),
                event("S3", "Create", n=3, display_name="Novak, Ana"),
                event("T1", n=4, org=ORG2),
            ],
        )
        records_in_history(env, 3)
        send_events(env, [event("S1", n=5, before={"email": "b"}, after={"email": "c"})])
        wait_for(env, lambda evs: any(e["type"] == "record_replaced" for e in evs))
        shown = both_paths(capsys, cfg, env)
        # most urgent first: the updates have a legal due day, the new student's Create has none
        assert shown["counts"]["records"] == 3 and shown["records"][-1]["student_key"] == "S3"
        assert next(r for r in shown["records"] if r["student_key"] == "S1")["changes"][0]["after"] == "c"

        # a hold, and a change of the held student arriving later
        cli(capsys, cfg, "batch", "hold", "S2", "--dso", DSO, "--reason", "check I-20")
        send_events(env, [event("S2", "Registration", n=6)])
        records_in_history(env, 4)
        shown = both_paths(capsys, cfg, env)
        assert [h["student_key"] for h in shown["held_students"]] == ["S2"] and shown["counts"]["held"] == 2

        # close through the view: exactly the ready records the DSO saw, nothing else
        ready = {r["record_id"] for r in shown["records"] if r["status"] == "open"}
        closed = orjson.loads(
            cli(capsys, cfg, "batch", "close", "--dso", DSO, "--revision", str(shown["revision"]), "--json")
        )
        (batch,) = closed["batches"]
        closed_ev = next(e for e in closed_of(batch_events(env)) if e["batch_id"] == batch["batch_id"])
        assert {r["record_id"] for r in records_of(closed_ev)} == ready
        shown = both_paths(capsys, cfg, env)
        assert shown["counts"] == {"records": 2, "creates": 0, "updates": 2, "ready": 0, "held": 2, "waiting": 0}

        # a release, then a rollover: 300 more records close into two documents (250 + 52)
        cli(capsys, cfg, "batch", "release", "S2", "--dso", DSO)
        send_events(env, [event(f"R{i:03d}", n=100 + i) for i in range(300)])
        records_in_history(env, 302)
        shown = both_paths(capsys, cfg, env)
        assert shown["counts"]["ready"] == 302
        closed = orjson.loads(cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json"))
        assert [b["records"] for b in closed["batches"]] == [250, 52]
        shown = both_paths(capsys, cfg, env)
        assert shown["counts"]["records"] == 0
    finally:
        batcher.stop()

    # a restarted batcher writes every school's view again (e.g. after the topic was recreated or an upgrade)
    before = batch_cli.read_open_batch(env, ORG)
    send_events(env, [event("S9", n=900)])
    batcher = Batcher(env, instance="t2")
    try:
        records_in_history(env, 1)
        shown = both_paths(capsys, cfg, env)
        assert shown["records"][0]["student_key"] == "S9" and shown["revision"] > before["revision"]
        other = batch_cli.read_open_batch(env, ORG2)
        assert other is not None and orjson.loads(other["records_json"])[0]["student_key"] == "T1"
    finally:
        batcher.stop()


def test_show_falls_back_to_the_history_when_the_view_has_nothing(env, tmp_path, capsys):
    """No view record for the school (no batcher has written one): the history answers, the same way."""
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    assert batch_cli.read_open_batch(env, ORG) is None
    shown = orjson.loads(cli(capsys, cfg, "batch", "show", "--json"))
    assert shown == orjson.loads(cli(capsys, cfg, "batch", "show", "--json", "--from-history"))
    assert shown["counts"]["records"] == 0 and shown["revision"] == 0


def test_the_view_reader_finds_the_latest_committed_value_far_back_and_skips_aborted_ones(env):
    """Other schools' views after ours (past the first read window), and an aborted newer one."""
    from sevisflow.core.kafka_io import delivery_raiser, flush_or_raise, make_producer, produce
    from sevisflow.core.serde import registry
    from sevisflow.processors.batcher.core import School, open_view

    topic = env.topics.open_batches

    def value(org: str, revision: int) -> bytes:
        return registry().encode("sevisflow.batches.OpenBatch", open_view(School(org, revision=revision)))

    producer = make_producer(env.kafka)
    errors: list = []
    produce(producer, topic, ORG.encode(), value(ORG, 1), partition=1, on_delivery=delivery_raiser(errors))
    produce(producer, topic, ORG.encode(), value(ORG, 2), partition=1, on_delivery=delivery_raiser(errors))
    for i in range(100):
        produce(
            producer,
            topic,
            f"OTHER{i:03d}".encode(),
            value(f"OTHER{i:03d}", i),
            partition=1,
            on_delivery=delivery_raiser(errors),
        )
    flush_or_raise(producer, errors)
    assert batch_cli.read_open_batch(env, ORG)["revision"] == 2
    assert batch_cli.read_open_batch(env, "OTHER099")["revision"] == 99

    txn = make_producer(env.kafka, transactional_id=f"view-test-{topic}")
    txn.init_transactions(30)
    txn.begin_transaction()
    produce(txn, topic, ORG.encode(), value(ORG, 3), partition=1)
    txn.abort_transaction(30)
    assert batch_cli.read_open_batch(env, ORG)["revision"] == 2
    txn.begin_transaction()
    produce(txn, topic, ORG.encode(), value(ORG, 4), partition=1)
    txn.commit_transaction(30)
    eventually(lambda: revision_of_view(env), 4)
    assert batch_cli.read_open_batch(env, "NOBODY") is None
