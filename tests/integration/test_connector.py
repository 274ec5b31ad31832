"""The PostgreSQL connector against a real PostgreSQL 15 and a real Kafka (no mocks).

Each test has its own database (``fresh_db``), slot, publication, topic prefix and offsets folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sevisflow.connectors.postgres.envelope import UNAVAILABLE
from sevisflow.core.errors import SevisflowError, TerminalError
from sevisflow.core.kafka_io import read_topic
from tests.helpers import KafkaHandle, PgHandle
from tests.integration.connector_support import (
    RunningConnector,
    by_partition,
    changes,
    connector_settings,
    current_lsn,
    events,
    execute,
    in_source_order,
    run_to_end,
    slot_confirmed,
    wait_caught_up,
    wait_streaming,
    wait_until,
)

pytestmark = pytest.mark.integration

ALL_TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE all_types (
    id int8 PRIMARY KEY, i2 int2, i4 int4, n numeric(8,3), nv numeric, f8 float8, t text, vc varchar(10), ch char(3),
    b bool, d date, tm time, ts timestamp, tstz timestamptz, u uuid, j json, jb jsonb, arr int4[], tarr text[],
    e mood, big text);
ALTER TABLE all_types REPLICA IDENTITY FULL;
CREATE TABLE plain (id int4 PRIMARY KEY, v text, big text);
"""

ROW2 = (
    "INSERT INTO all_types VALUES (2, -32768, 2147483647, -12345.678, 3.14159, 1.5, 'héllo\ttab', 'vc', 'ab', "
    "false, '2024-02-29', '13:45:07.25', '2024-01-02 03:04:05.000006', '2024-05-01 10:00:00.5+02', "
    "'a8983f72-063c-4cf3-833b-4c1d159aa4d4', '{\"k\": [1, 2]}', '{\"z\": null}', '{1,NULL,3}', "
    "'{\"a,b\",c}', 'happy', %(big)s)"
)


def _big() -> str:
    rnd = random.Random(7)
    return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(60_000))


def _unscaled(b64: str) -> int:
    return int.from_bytes(base64.b64decode(b64), "big", signed=True)


def test_every_op_and_type(kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path) -> None:
    big = _big()
    execute(
        fresh_db.dsn,
        ALL_TYPES,
        "INSERT INTO all_types (id, t) VALUES (1, 'snap')",
        "INSERT INTO plain VALUES (1, 'p1', NULL), (2, 'p2', NULL)",
    )
    s = connector_settings(kafka_stack, fresh_db, unique, tmp_path)
    with RunningConnector(s):
        wait_streaming(s)  # a TRUNCATE below must not race the snapshot (TRUNCATE is not MVCC-safe)
        with psycopg.connect(fresh_db.dsn, autocommit=True) as conn:
            conn.execute(ROW2, {"big": big})
            conn.execute("UPDATE all_types SET i4 = 7 WHERE id = 2")  # big stays TOASTed, unchanged
            conn.execute("INSERT INTO plain VALUES (3, 'p3', %s)", (big,))
            conn.execute("UPDATE plain SET v = 'p3b' WHERE id = 3")  # identity DEFAULT: no old row
            conn.execute("UPDATE all_types SET id = 20 WHERE id = 2")  # primary-key change
            conn.execute("DELETE FROM all_types WHERE id = 1")
            conn.execute("DELETE FROM plain WHERE id = 1")
            conn.execute("SELECT pg_logical_emit_message(true, 'app.audit', 'hello')")
            conn.execute("TRUNCATE plain")
        wait_caught_up(fresh_db.dsn, s.connector.slot_name)

    prefix = s.connector.topic_prefix
    evs = events(s, f"{prefix}.public.all_types")
    vals = in_source_order([v for *_, v in evs if v is not None])
    assert [v["op"] for v in vals] == ["r", "c", "u", "d", "c", "d"]
    snap = vals[0]
    assert snap["after"]["t"] == "snap" and snap["source"]["snapshot"] in ("first", "last")
    assert all(v["source"]["name"] == prefix for v in vals)  # Debezium's source.name is topic.prefix

    after = vals[1]["after"]
    assert after["i2"] == -32768 and after["i4"] == 2147483647
    assert _unscaled(after["n"]) == -12345678
    assert after["nv"]["scale"] == 5 and _unscaled(after["nv"]["value"]) == 314159
    assert after["f8"] == 1.5 and after["t"] == "héllo\ttab" and after["vc"] == "vc" and after["ch"] == "ab "
    assert after["b"] is False
    assert after["d"] == (date(2024, 2, 29) - date(1970, 1, 1)).days
    assert after["tm"] == (13 * 3600 + 45 * 60 + 7) * 1_000_000 + 250_000
    assert after["ts"] == int(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()) * 1_000_000 + 6
    assert after["tstz"] == "2024-05-01T08:00:00.500000Z"  # as Debezium 3.6.1 writes it
    assert after["u"] == "a8983f72-063c-4cf3-833b-4c1d159aa4d4"
    assert after["j"] == '{"k": [1, 2]}' and after["jb"] == '{"z": null}'
    assert after["arr"] == [1, None, 3] and after["tarr"] == ["a,b", "c"]
    assert after["e"] == "happy" and after["big"] == big

    upd = vals[2]
    assert upd["before"]["i4"] == 2147483647 and upd["after"]["i4"] == 7
    assert upd["after"]["big"] == big, "unchanged TOAST value must be filled from the FULL old row"
    pk_del, pk_create = vals[3], vals[4]
    assert pk_del["before"]["id"] == 2 and pk_create["after"]["id"] == 20 and pk_create["after"]["big"] == big
    assert vals[5]["before"] == {**vals[0]["after"]}
    # tombstones right after each delete, with the deleted key
    tomb_keys = sorted(k["id"] for _, _, k, v in evs if v is None)
    assert tomb_keys == [1, 2]
    # source positions: increasing (commit lsn, lsn) within the stream, stable format
    seqs = [tuple(int(x) for x in json.loads(v["source"]["sequence"])) for v in vals[1:]]
    assert len(set(seqs)) == len(seqs) - 1  # only the PK change's delete + create share a position
    assert all(v["source"]["lsn"] == s_[1] for v, s_ in zip(vals[1:], seqs))

    pvals = in_source_order(changes(s, "plain"))
    assert [v["op"] for v in pvals] == ["r", "r", "c", "u", "d", "t"]
    assert pvals[3]["before"] is None and pvals[3]["after"]["v"] == "p3b"
    assert pvals[3]["after"]["big"] == UNAVAILABLE, "without an old row, unchanged TOAST is Debezium's placeholder"
    assert pvals[4]["before"] == {"id": 1, "v": None, "big": None}  # identity DEFAULT: key only
    assert pvals[5]["before"] is None and pvals[5]["after"] is None

    snap_marks = [v["source"]["snapshot"] for v in vals + pvals if v["op"] == "r"]
    # Debezium 3's markers: all_types' one row opens the snapshot, plain's two rows close it
    assert sorted(snap_marks) == ["first", "first_in_data_collection", "last"]

    msgs = [v for *_, v in events(s, f"{prefix}.message")]
    assert len(msgs) == 1 and msgs[0]["op"] == "m" and msgs[0]["message"]["prefix"] == "app.audit"
    assert base64.b64decode(msgs[0]["message"]["content"]) == b"hello"

    from sevisflow.core.kafka_io import make_admin

    md = make_admin(s.kafka).list_topics(timeout=10)
    assert len(md.topics[f"{prefix}.transaction"].partitions) == 1, "BEGIN/END must stay in commit order"
    assert len(md.topics[f"{prefix}.public.all_types"].partitions) == 2
    tx = [v for *_, v in events(s, f"{prefix}.transaction")]
    ends = [t for t in tx if t["status"] == "END"]
    begins = [t for t in tx if t["status"] == "BEGIN"]
    assert len(begins) == len(ends) >= 8
    assert len(begins) == len(ends) == 8
    assert sum(t["event_count"] for t in ends) == (len(vals) - 1) + (len(pvals) - 2)  # every streamed event counted


def test_schemas_enable_and_decimal_string(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path
) -> None:
    execute(
        fresh_db.dsn,
        "CREATE TABLE money (id int PRIMARY KEY, amount numeric(10,2) NOT NULL, d date)",
        "INSERT INTO money VALUES (1, 12.50, '2000-01-01')",
    )
    s = connector_settings(
        kafka_stack,
        fresh_db,
        unique,
        tmp_path,
        **{
            "value.converter.schemas.enable": True,
            "decimal.handling.mode": "string",
            "provide.transaction.metadata": False,
            "snapshot.mode": "initial_only",
        },
    )
    run_to_end(s)  # initial_only: returns by itself after the snapshot
    [(_, _, key, value)] = events(s, f"{s.connector.topic_prefix}.public.money")
    assert key["payload"] == {"id": 1} and key["schema"]["fields"][0]["type"] == "int32"
    assert value["payload"]["after"] == {"id": 1, "amount": "12.50", "d": 10957}
    fields = {f["field"]: f for f in value["schema"]["fields"]}
    amount = next(f for f in fields["after"]["fields"] if f["field"] == "amount")
    assert amount == {"type": "string", "optional": False, "field": "amount"}
    assert value["payload"]["op"] == "r"


def test_snapshot_and_stream_under_concurrent_writes(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path
) -> None:
    """Every key's events form one unbroken chain (before == previous after) ending at the table's state."""
    execute(
        fresh_db.dsn,
        "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, pad text)",
        "ALTER TABLE acct REPLICA IDENTITY FULL",
        "INSERT INTO acct SELECT g, 0, md5(g::text) FROM generate_series(1, 4000) g",
    )
    s = connector_settings(kafka_stack, fresh_db, unique, tmp_path, **{"snapshot.fetch.size": 300})
    done = threading.Event()

    def writer() -> None:
        rnd = random.Random(1)
        next_id = 10_000
        with psycopg.connect(fresh_db.dsn, autocommit=True) as conn:
            for _ in range(400):
                with conn.transaction():
                    for _ in range(5):
                        r = rnd.random()
                        if r < 0.4:
                            conn.execute("INSERT INTO acct VALUES (%s, 0, 'x')", (next_id,))
                            next_id += 1
                        elif r < 0.9:
                            conn.execute("UPDATE acct SET v = v + 1 WHERE id = %s", (rnd.randint(1, next_id),))
                        else:
                            conn.execute("DELETE FROM acct WHERE id = %s", (rnd.randint(1, next_id),))
                time.sleep(0.002)
        done.set()

    w = threading.Thread(target=writer)
    w.start()  # writes run before, during and after the snapshot
    time.sleep(0.05)
    with RunningConnector(s):
        w.join(120)
        assert done.is_set()
        wait_caught_up(fresh_db.dsn, s.connector.slot_name)

    evs = events(s, f"{s.connector.topic_prefix}.public.acct")
    state: dict[int, dict[str, Any]] = {}
    counts = {"r": 0, "c": 0, "u": 0, "d": 0}
    for part in by_partition(evs):
        for _, _, key, v in part:
            if v is None:
                continue
            k = key["id"]
            counts[v["op"]] += 1
            if v["op"] in ("r", "c"):
                assert k not in state, f"duplicate {v['op']} for key {k}"
                state[k] = v["after"]
            elif v["op"] == "u":
                assert state.get(k) == v["before"], f"gap or duplicate before update of key {k}"
                state[k] = v["after"]
            elif v["op"] == "d":
                assert state.get(k) == v["before"], f"gap or duplicate before delete of key {k}"
                del state[k]
    with psycopg.connect(fresh_db.dsn) as conn:
        table = {r[0]: {"id": r[0], "v": r[1], "pad": r[2]} for r in conn.execute("SELECT id, v, pad FROM acct")}
    assert state == table
    assert counts["r"] > 0 and counts["c"] > 0 and counts["u"] > 0 and counts["d"] > 0
    marks = [v["source"]["snapshot"] for *_, v in evs if v and v["op"] == "r"]
    assert marks.count("first") == 1 and marks.count("last") == 1


def test_add_column_and_add_table_to_include_list(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path
) -> None:
    execute(
        fresh_db.dsn,
        "CREATE TABLE a (id int PRIMARY KEY, x text)",
        "CREATE TABLE b (id int PRIMARY KEY, y text)",
        "INSERT INTO b VALUES (1, 'old')",
    )
    s = connector_settings(kafka_stack, fresh_db, unique, tmp_path, **{"table.include.list": ["public.a"]})
    with RunningConnector(s):
        wait_streaming(s)
        execute(fresh_db.dsn, "INSERT INTO a VALUES (1, 'one')")
        execute(
            fresh_db.dsn,
            "ALTER TABLE a ADD COLUMN added date DEFAULT '1970-01-03'",
            "INSERT INTO a VALUES (2, 'two', '1970-01-05')",
            "UPDATE a SET x = 'uno' WHERE id = 1",
        )
        execute(fresh_db.dsn, "ALTER TABLE a DROP COLUMN x", "INSERT INTO a VALUES (3)")
        execute(fresh_db.dsn, "INSERT INTO b VALUES (2, 'not captured yet')")
        wait_caught_up(fresh_db.dsn, s.connector.slot_name)
    got = in_source_order(changes(s, "a"))
    assert [v["after"] for v in got] == [
        {"id": 1, "x": "one"},
        {"id": 2, "x": "two", "added": 4},
        {"id": 1, "x": "uno", "added": 2},
        {"id": 3, "added": 2},
    ]
    assert changes(s, "b") == []
    # restart with b added: b is snapshotted (it already has rows) and streamed from then on
    s2 = s.replace(connector={"table_include_list": ["public.a", "public.b"]})
    with RunningConnector(s2):
        wait_until(lambda: len(changes(s2, "b")) >= 2, 30, "snapshot of the added table")
        execute(fresh_db.dsn, "INSERT INTO b VALUES (3, 'new')")
        wait_caught_up(fresh_db.dsn, s.connector.slot_name)
    bvals = in_source_order(changes(s2, "b"))
    assert [(v["op"], v["after"]["id"]) for v in bvals] == [("r", 1), ("r", 2), ("c", 3)]
    assert len(changes(s2, "a")) == 4, "the restart re-sent nothing of table a"


def test_idle_database_heartbeat_advances_slot_and_status(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path
) -> None:
    """Only an uncaptured table is written: the slot still confirms, lag stays small and is visible."""
    execute(fresh_db.dsn, "CREATE TABLE captured (id int PRIMARY KEY)", "CREATE TABLE noise (id int, pad text)")
    from sevisflow.app.cli.connector import status_data
    from sevisflow.core.observability import probe_names, serve_for
    from sevisflow.deploy.local.stack import free_port

    port = free_port()
    s = connector_settings(
        kafka_stack,
        fresh_db,
        unique,
        tmp_path,
        **{"table.include.list": ["public.captured"], "heartbeat.interval.ms": 300},
    )

    server = serve_for(port, "127.0.0.1")  # what `connector run` does with [metrics] port
    with server, RunningConnector(s):
        wait_until(lambda: slot_confirmed(fresh_db.dsn, s.connector.slot_name) is not None, 30, "slot")
        start = slot_confirmed(fresh_db.dsn, s.connector.slot_name) or 0
        for _ in range(20):
            execute(fresh_db.dsn, "INSERT INTO noise SELECT g, repeat('x', 500) FROM generate_series(1, 200) g")
        target_written = current_lsn(fresh_db.dsn)
        assert target_written - start > 100_000
        wait_until(
            lambda: (slot_confirmed(fresh_db.dsn, s.connector.slot_name) or 0) >= target_written,
            20,
            "the idle slot to advance past the uncaptured writes",
        )
        time.sleep(2.5)
        st = status_data(s)
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        # the connector takes part in /health (its loop turns) and /ready (it is streaming)
        assert f"connector:{s.connector.name}" in probe_names()
        for path in ("/health", "/ready"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                assert answer.status == 200 and answer.read() == b"ok\n", path
    assert f"connector:{s.connector.name}" not in probe_names(), "the probe must go when the connector stops"
    lag_lines = [ln for ln in metrics.splitlines() if ln.startswith("sevisflow_connector_slot_lag_bytes{")]
    assert lag_lines and float(lag_lines[0].rsplit(" ", 1)[1]) < 100_000
    assert "sevisflow_connector_confirmed_lsn{" in metrics and "sevisflow_connector_snapshot_progress_ratio{" in metrics
    assert changes(s, "captured") == []
    assert st["reported"]["state"] == "streaming"
    assert st["slot_live"]["active"] is True
    assert st["slot_live"]["lag_bytes"] is not None and st["slot_live"]["lag_bytes"] < 100_000
    assert st["reported"]["slot_lag_bytes"] is not None


def test_bad_configuration_gives_clear_errors(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path
) -> None:
    execute(fresh_db.dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    # publication missing with autocreate disabled
    s = connector_settings(kafka_stack, fresh_db, unique, tmp_path, **{"publication.autocreate.mode": "disabled"})
    with pytest.raises(TerminalError, match=r"publication .* does not exist .*autocreate.mode=disabled"):
        run_to_end(s)
    # a user without REPLICATION
    role = f"noreplic_{unique}"
    execute(fresh_db.dsn, f"CREATE ROLE {role} LOGIN", f"GRANT SELECT ON t TO {role}")
    s_user = s.replace(postgres={"user": role}, connector={"publication_autocreate_mode": "filtered"})
    with pytest.raises(TerminalError, match="REPLICATION"):
        run_to_end(s_user)
    # the slot in use by another connector
    ok = connector_settings(kafka_stack, fresh_db, unique, tmp_path)
    with RunningConnector(ok):
        wait_until(lambda: slot_confirmed(fresh_db.dsn, ok.connector.slot_name) is not None, 30, "slot")
        time.sleep(0.5)
        second = ok.replace(connector={"slot_max_retries": 1, "offsets_dir": str(tmp_path / "other")})
        with pytest.raises(TerminalError, match=r"in use by another process \(pid \d+\)"):
            run_to_end(second)
    # an invalid include-list regex
    bad = connector_settings(kafka_stack, fresh_db, unique, tmp_path, **{"table.include.list": ["public.(oops"]})
    with pytest.raises(SevisflowError, match="not a valid regular expression"):
        run_to_end(bad)
    execute(fresh_db.dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_excluded_and_hash_masked_columns_never_reach_the_change_topics(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path
) -> None:
    execute(
        fresh_db.dsn,
        "CREATE TABLE person (id int PRIMARY KEY, name text, born date, passport_no varchar(12))",
        "ALTER TABLE person REPLICA IDENTITY FULL",
        "INSERT INTO person VALUES (1, 'Ana', '1990-05-01', 'X1234567')",
    )
    salt = "k3ep-0ff"
    s = connector_settings(
        kafka_stack,
        fresh_db,
        unique,
        tmp_path,
        **{
            "table.include.list": ["public.person"],
            "column.exclude.list": [r"public\.person\.born"],
            f"column.mask.hash.v2.SHA-256.with.salt.{salt}": r"public\.person\.passport_no",
        },
    )
    with RunningConnector(s):
        wait_streaming(s)
        execute(
            fresh_db.dsn,
            "INSERT INTO person VALUES (2, 'Bo', '1991-06-02', 'Y7654321')",
            "UPDATE person SET name = 'Ana B', passport_no = 'Z1111111' WHERE id = 1",
            "DELETE FROM person WHERE id = 2",
        )
        wait_caught_up(fresh_db.dsn, s.connector.slot_name)
    evs = [v for _, _, _, v in events(s, f"{s.connector.topic_prefix}.public.person") if v is not None]
    assert [e["op"] for e in evs] == ["r", "c", "u", "d"]

    def masked(v: str) -> str:
        return hashlib.sha256((salt + v).encode()).hexdigest()[:12]  # cut to varchar(12)

    rows = [r for e in evs for r in (e["before"], e["after"]) if r is not None]
    assert all(set(r) == {"id", "name", "passport_no"} for r in rows)  # born: never on the topic
    assert [r["passport_no"] for r in rows] == [
        masked("X1234567"),
        masked("Y7654321"),
        masked("X1234567"),
        masked("Z1111111"),
        masked("Y7654321"),
    ]
    raw = b"".join(m.value() or b"" for m in read_topic(s.kafka, f"{s.connector.topic_prefix}.public.person"))
    assert b"1990" not in raw and b"X1234567" not in raw and b"Z1111111" not in raw
