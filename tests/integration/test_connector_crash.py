"""Faults: kill -9 of the connector process under write load, a PostgreSQL restart mid-stream, wal_level.

"Nothing missing" is checked against what the writer committed; duplicates are allowed (at-least-once)
but must carry the same source.sequence as the original, so consumers can drop them.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from sevisflow.core.errors import TerminalError
from sevisflow.deploy.local.stack import PG_USER, find_pg_bin, start_stack, stop_stack
from tests.helpers import REPO, KafkaHandle, PgHandle
from tests.integration.connector_support import (
    RunningConnector,
    connector_settings,
    events,
    execute,
    run_to_end,
    wait_caught_up,
    wait_until,
)

pytestmark = pytest.mark.integration


class Writer:
    """Transactions of insert / update / delete on table ``k``; remembers every committed change."""

    def __init__(self, dsn: str, first_id: int = 100_000) -> None:
        self.dsn = dsn
        self.next_id = first_id
        self.first_id = first_id
        self.rows: dict[int, int] = {}
        self.expected: list[tuple[str, int, int]] = []  # (op, id, v after — or before for deletes)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.reconnects = 0

    def one_tx(self, conn: psycopg.Connection[Any]) -> None:
        i = self.next_id
        pending: list[tuple[str, int, int]] = []
        rows = dict(self.rows)
        with conn.transaction():
            conn.execute("INSERT INTO k VALUES (%s, 0)", (i,))
            pending.append(("c", i, 0))
            rows[i] = 0
            if i - 1 in rows:
                conn.execute("UPDATE k SET v = v + 1 WHERE id = %s", (i - 1,))
                rows[i - 1] += 1
                pending.append(("u", i - 1, rows[i - 1]))
            if i % 3 == 0 and i - 2 in rows:
                conn.execute("DELETE FROM k WHERE id = %s", (i - 2,))
                pending.append(("d", i - 2, rows.pop(i - 2)))
        self.rows = rows  # only after COMMIT returned
        self.expected.extend(pending)
        self.next_id += 1

    def finish(self, slot: str, timeout: float = 90) -> None:
        """Stop writing, then wait until the connector has confirmed every change on the slot."""
        self.stop.set()
        self.thread.join(30)
        wait_caught_up(self.dsn, slot, timeout=timeout)

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
                self.one_tx(conn)
                time.sleep(0.003)
            except psycopg.OperationalError:
                # a failed COMMIT may or may not have committed: after a server restart it did not
                # (fast shutdown aborts open transactions), so the id is simply retried
                conn = None
                self.reconnects += 1
                time.sleep(0.2)
        if conn is not None:
            conn.close()


def _observed(settings: Any) -> tuple[list[tuple[str, int, int]], dict[tuple[str, str], list[Any]]]:
    evs = events(settings, f"{settings.connector.topic_prefix}.public.k")
    seen: list[tuple[str, int, int]] = []
    by_pos: dict[tuple[str, str], list[Any]] = {}
    for _, _, key, v in evs:
        if v is None:
            continue
        row = v["after"] if v["op"] in ("r", "c", "u") else v["before"]
        seen.append((v["op"], key["id"], row["v"]))
        by_pos.setdefault((v["source"]["sequence"], v["op"]), []).append((key, v["before"], v["after"]))
    return seen, by_pos


def _check_complete(writer: Writer, settings: Any) -> dict[str, int]:
    seen, by_pos = _observed(settings)
    stream = [e for e in seen if e[0] != "r"]
    missing = [e for e in writer.expected if e not in set(stream)]
    assert not missing, f"{len(missing)} committed changes missing from Kafka, e.g. {missing[:3]}"
    # after dropping duplicates by source position, exactly the committed changes remain
    stream_positions = {p: evs for p, evs in by_pos.items() if p[1] != "r"}
    assert len(stream_positions) == len(writer.expected)
    for pos, copies in stream_positions.items():
        assert all(c == copies[0] for c in copies), f"duplicates at {pos} differ"
    return {"events": len(stream), "unique": len(stream_positions), "duplicates": len(stream) - len(stream_positions)}


def _stop_cleanly(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM the connector process, which must then exit 0 (its log's tail otherwise)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]


def _env(settings: Any) -> dict[str, str]:
    c, p = settings.connector, settings.postgres
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEVISFLOW_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "SEVISFLOW_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "SEVISFLOW_KAFKA_PARTITIONS": str(settings.kafka.partitions),
            "SEVISFLOW_POSTGRES_HOST": p.host,
            "SEVISFLOW_POSTGRES_PORT": str(p.port),
            "SEVISFLOW_POSTGRES_DBNAME": p.dbname,
            "SEVISFLOW_POSTGRES_USER": p.user,
            "SEVISFLOW_CONNECTOR_NAME": c.name,
            "SEVISFLOW_CONNECTOR_SLOT_NAME": c.slot_name,
            "SEVISFLOW_CONNECTOR_TOPIC_PREFIX": c.topic_prefix,
            "SEVISFLOW_CONNECTOR_PUBLICATION_NAME": c.publication_name,
            "SEVISFLOW_CONNECTOR_TABLE_INCLUDE_LIST": ",".join(c.table_include_list),
            "SEVISFLOW_CONNECTOR_OFFSETS_DIR": c.offsets_dir,
            "SEVISFLOW_CONNECTOR_HEARTBEAT_INTERVAL_MS": str(c.heartbeat_interval_ms),
            "SEVISFLOW_CONNECTOR_OFFSET_FLUSH_INTERVAL_MS": str(c.offset_flush_interval_ms),
            "SEVISFLOW_CONNECTOR_SNAPSHOT_FETCH_SIZE": str(c.snapshot_fetch_size),
            "SEVISFLOW_CONNECTOR_SLOT_RETRY_DELAY_MS": "300",
            "SEVISFLOW_CONNECTOR_SLOT_MAX_RETRIES": "50",
        }
    )
    return env


def test_kill_9_at_random_moments_loses_nothing(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path
) -> None:
    execute(
        fresh_db.dsn,
        "CREATE TABLE k (id int PRIMARY KEY, v int NOT NULL)",
        "ALTER TABLE k REPLICA IDENTITY FULL",
        "INSERT INTO k SELECT g, 7 FROM generate_series(1, 20000) g",
    )
    s = connector_settings(
        kafka_stack,
        fresh_db,
        unique,
        tmp_path,
        **{"table.include.list": ["public.k"], "snapshot.fetch.size": 400, "offset.flush.interval.ms": 300},
    )
    env = _env(s)
    log = open(tmp_path / "connector.log", "ab")  # noqa: SIM115 - every restarted connector appends to it; closed at the end
    cmd = [sys.executable, "-m", "sevisflow.connectors.postgres"]
    rnd = random.Random()
    writer = Writer(fresh_db.dsn)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=log)
    kills = 0
    try:
        # changes committed before the slot exists are snapshot state, not stream events: write after it
        wait_until(lambda: s.connector.slot_name in _slots(fresh_db.dsn), 60, "the slot")
        writer.thread.start()
        time.sleep(rnd.uniform(0.1, 0.8))  # usually lands in the snapshot
        for _ in range(4):
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=log)
            time.sleep(rnd.uniform(0.8, 2.5))
        writer.finish(s.connector.slot_name)
    finally:
        writer.stop.set()
        _stop_cleanly(proc, tmp_path / "connector.log")
        log.close()
    assert kills == 4 and len(writer.expected) > 300
    seen, _ = _observed(s)
    snap_ids = {i for op, i, _ in seen if op == "r"}
    preloaded = set(range(1, 20001))
    assert preloaded <= snap_ids, f"{len(preloaded - snap_ids)} snapshot rows missing"
    # a snapshot resumed after a kill reads at a newer snapshot, so it may also see rows the writer added
    assert all(i >= writer.first_id for i in snap_ids - preloaded)
    stats = _check_complete(writer, s)
    assert stats["unique"] == len(writer.expected)
    text = (tmp_path / "connector.log").read_text()
    assert "Traceback" not in text
    assert '"after"' not in text and '"before"' not in text  # logs carry positions and counts, never rows
    assert "connector.snapshot_resume" in text or "connector.streaming" in text


def _pg_ctl(datadir: str, *args: str) -> None:
    bindir = find_pg_bin()
    assert bindir is not None
    # -l: the restarted postmaster must not inherit our pipes (run() would wait for their EOF)
    cmd = [str(bindir / "pg_ctl"), "-D", datadir, "-l", str(Path(datadir) / "restart.log"), *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", PG_USER, "--"] + cmd
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


def test_postgres_restart_mid_stream_then_wal_level_check(
    kafka_stack: KafkaHandle, unique: str, tmp_path: Path
) -> None:
    root = REPO / ".local" / "stacks"
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="pytest-pgrestart-", dir=root))
    base.chmod(0o755)
    info = start_stack(
        name="pytest-pgrestart", base=base, kafka=False, pg_timezone="Asia/Kathmandu", progress=lambda *_: None
    )
    try:
        assert info.postgres is not None
        pg = PgHandle(dsn=info.postgres.dsn, port=info.postgres.port)
        execute(pg.dsn, "CREATE TABLE k (id int PRIMARY KEY, v int NOT NULL)", "ALTER TABLE k REPLICA IDENTITY FULL")
        s = connector_settings(kafka_stack, pg, unique, tmp_path, **{"table.include.list": ["public.k"]})
        writer = Writer(pg.dsn)
        with RunningConnector(s):
            wait_until(lambda: s.connector.slot_name in _slots(pg.dsn), 30, "slot")
            writer.thread.start()
            wait_until(lambda: len(writer.expected) > 100, 30, "writes before the restart")
            _pg_ctl(info.postgres.datadir, "restart", "-m", "fast", "-w", "-t", "60")
            before = len(writer.expected)
            wait_until(lambda: len(writer.expected) > before + 100, 60, "writes after the restart")
            writer.finish(s.connector.slot_name, timeout=60)
        assert writer.reconnects >= 1
        stats = _check_complete(writer, s)
        assert stats["unique"] == len(writer.expected)

        # wal_level below logical: a real server's answer, and a message that says what to change
        execute(
            pg.dsn,
            f"SELECT pg_drop_replication_slot('{s.connector.slot_name}')",
            "ALTER SYSTEM SET wal_level = 'replica'",
        )
        _pg_ctl(info.postgres.datadir, "restart", "-m", "fast", "-w", "-t", "60")
        with pytest.raises(TerminalError, match=r"wal_level is 'replica'.*wal_level = logical"):
            run_to_end(s, timeout=30)
    finally:
        stop_stack(info, remove=True)


def _slots(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")]


# Each boundary the connector crosses, crashed just before and just after, in the order one run meets them:
# a snapshot chunk produced, its acknowledgements outstanding (the next chunk is read meanwhile), the
# snapshot's progress file (saved only after Kafka acked the chunk and every one before it), the "snapshot
# done" state, and the LSN acknowledgement to PostgreSQL (sent only after Kafka acked everything up to it).
CRASH_SEQUENCE = [
    "connector.snapshot_chunk_produced:4",
    "connector.before_snapshot_progress:3",
    "connector.after_snapshot_progress:2",
    "connector.before_snapshot_done",
    "connector.after_snapshot_done",
    "connector.before_lsn_ack:3",
    "connector.after_lsn_ack:3",
]


def test_crash_on_both_sides_of_every_connector_boundary_loses_nothing(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path
) -> None:
    execute(
        fresh_db.dsn,
        "CREATE TABLE k (id int PRIMARY KEY, v int NOT NULL)",
        "ALTER TABLE k REPLICA IDENTITY FULL",
        "INSERT INTO k SELECT g, 7 FROM generate_series(1, 6000) g",
    )
    s = connector_settings(
        kafka_stack,
        fresh_db,
        unique,
        tmp_path,
        **{"table.include.list": ["public.k"], "snapshot.fetch.size": 500, "offset.flush.interval.ms": 200},
    )
    cmd = [sys.executable, "-m", "tests.crashing", "sevisflow.connectors.postgres"]
    writer = Writer(fresh_db.dsn)
    crashed: list[str] = []
    with open(tmp_path / "connector.log", "ab") as log:
        try:
            for point in CRASH_SEQUENCE:
                env = {**_env(s), "SEVISFLOW_CRASH_AT": point}
                proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=log)
                if not writer.thread.is_alive() and "lsn_ack" in point:
                    # streamed changes from here on: the snapshot is complete and the slot exists
                    wait_until(lambda: s.connector.slot_name in _slots(fresh_db.dsn), 60, "the slot")
                    writer.thread.start()
                assert proc.wait(120) == 137, (
                    f"{point} was never reached:\n" + (tmp_path / "connector.log").read_text()[-3000:]
                )
                crashed.append(point)
            proc = subprocess.Popen(cmd, env=_env(s), cwd=tmp_path, stdout=log, stderr=log)
            time.sleep(2)
            writer.finish(s.connector.slot_name)
        finally:
            writer.stop.set()
            _stop_cleanly(proc, tmp_path / "connector.log")
    assert crashed == CRASH_SEQUENCE and len(writer.expected) > 50
    seen, _ = _observed(s)
    assert set(range(1, 6001)) <= {i for op, i, _ in seen if op == "r"}, "snapshot rows missing after the crashes"
    stats = _check_complete(writer, s)  # every committed change present; duplicates identical
    assert stats["unique"] == len(writer.expected)
    text = (tmp_path / "connector.log").read_text()
    assert text.count('"event":"crash_point"') == len(CRASH_SEQUENCE)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_snapshot_progress_never_runs_ahead_of_kafka_acknowledgements(
    kafka_stack: KafkaHandle, fresh_db: PgHandle, unique: str, tmp_path: Path, monkeypatch: Any, in_flight: int
) -> None:
    """The snapshot is pipelined (chunk N+1 is read — and with two chunks in flight, produced — while chunk N
    is acknowledged), yet every progress file it saves claims only rows Kafka already has: at each save —
    the moment after which a kill -9 resumes from that file — every row of a table marked done, and every
    row of the current table up to the saved key, is read back from the topic. And the pipeline is real:
    the reader's COPY was already past the saved key at some save, and ``in_flight`` chunks were produced
    and unsettled at once, never more."""
    from sevisflow.connectors.postgres import task as task_module
    from sevisflow.connectors.postgres.offsets import StateStore
    from sevisflow.core import checkpoints

    monkeypatch.setattr(task_module, "SNAPSHOT_IN_FLIGHT", in_flight)
    execute(
        fresh_db.dsn,
        "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL)",
        "CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL)",
        "INSERT INTO a SELECT g, 1 FROM generate_series(1, 2500) g",
        "INSERT INTO b SELECT g, 2 FROM generate_series(1, 1500) g",
    )
    s = connector_settings(
        kafka_stack,
        fresh_db,
        unique,
        tmp_path,
        **{"table.include.list": ["public.a", "public.b"], "snapshot.fetch.size": 300, "snapshot.mode": "initial_only"},
    )
    c = s.connector
    state_file = StateStore(c.offsets_dir, c.name, c.slot_name).path
    total = {"public.a": 2500, "public.b": 1500}
    order = ["public.a", "public.b"]
    produced = saved = 0
    most_in_flight = 0
    reader_ahead = 0  # saves at which the snapshot session's COPY already read past the saved position
    checked: list[tuple[list[str], str | None, int]] = []
    failures: list[str] = []

    def on_kafka(table: str) -> set[int]:
        topic = f"{c.topic_prefix}.{table}"
        return {e[2]["id"] for e in events(s, topic) if e[3] is not None and e[3]["op"] == "r"}

    def reader_position() -> tuple[int, int]:
        """(table index, key after which it reads) of the snapshot session's latest COPY."""
        with psycopg.connect(fresh_db.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT query FROM pg_stat_activity WHERE application_name = 'sevisflow-connector-snapshot' "
                "AND query LIKE 'COPY%'"
            ).fetchone()
        assert row is not None, "no snapshot COPY seen in pg_stat_activity"
        table = 0 if '"public"."a"' in row[0] else 1
        after = re.search(r"\) > \('(\d+)'", row[0])
        return table, int(after.group(1)) if after else 0

    def check(name: str) -> None:
        nonlocal produced, saved, most_in_flight, reader_ahead
        if name == "connector.snapshot_chunk_produced":
            produced += 1
            most_in_flight = max(most_in_flight, produced - saved)
            return
        if name != "connector.after_snapshot_progress":
            return
        saved += 1
        snap = orjson.loads(state_file.read_bytes())["snapshot"]
        claimed = {t: set(range(1, total[t] + 1)) for t in snap["done"]}
        if snap["current"] is not None:
            claimed[snap["current"]] = set(range(1, int(snap["last_key"][0]) + 1))
            if reader_position() > (order.index(snap["current"]), int(snap["last_key"][0])):
                reader_ahead += 1
        for table, ids in claimed.items():
            missing = ids - on_kafka(table)
            if missing:
                failures.append(f"save {saved}: {len(missing)} rows of {table} claimed but not on Kafka")
        checked.append((list(snap["done"]), snap["current"], snap["rows"]))

    previous = checkpoints.set_handler(check)
    try:
        run_to_end(s, timeout=120)
    finally:
        checkpoints.set_handler(previous)
    assert not failures, failures
    # every chunk's progress was checked, through both tables, and the saved count of rows only grew
    assert len(checked) >= (2500 + 1500) // 300 and checked[-1][0] == order
    assert any(cur == "public.b" for _, cur, _ in checked) and any(cur == "public.a" for _, cur, _ in checked)
    assert [r for *_, r in checked] == sorted(r for *_, r in checked)
    assert reader_ahead >= len(checked) // 2, f"the next chunk's COPY ran ahead at only {reader_ahead} saves"
    assert most_in_flight == in_flight
    assert on_kafka("public.a") == set(range(1, 2501)) and on_kafka("public.b") == set(range(1, 1501))
    assert orjson.loads(state_file.read_bytes())["snapshot_completed"] is True
