"""``python -m bench.connector.record_debezium``: record real Debezium 3.6.1 output next to sevisflow's connector.

Starts its own PostgreSQL + Kafka (the local stack), creates a small made-up table set (no personal data),
then runs, on the same database at the same time:

* Debezium 3.6.1 under Kafka Connect 4.3.0 standalone (``deploy/local/debezium.py``, the shipped
  ``deploy/debezium/sevisflow-sis.properties``) as three connectors in one worker: JsonConverter with
  ``schemas.enable`` true and false, and once more (schemas off) with ``extended.headers.enabled=false`` and
  the converter's ``replace.null.with.default=false`` (``debezium-aligned``);
* sevisflow's connector twice (``schemas_enable`` true and false).

Each of the four snapshots the seeded rows, then the same streamed operations are played: insert, update,
delete under REPLICA IDENTITY FULL and DEFAULT, a primary-key change, column defaults, every common type,
a composite key whose key order differs from the column order, and a multi-table transaction.
Every record of every topic (topic, partition, exact key text, value JSON, headers) is written to
``tests/fixtures/debezium/<debezium|debezium-aligned|sevisflow>-schemas-<on|off>.json``; ``tests/unit/test_debezium_conformance.py``
compares them. Topic prefixes are replaced by ``sis`` so the files do not depend on the run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "debezium"
TABLES = ("rec_full", "rec_default", "rec_ckey")

SCHEMA = """
CREATE TABLE rec_full (
    id integer PRIMARY KEY,
    amount numeric(10,2) NOT NULL DEFAULT 12.50,
    start_date date DEFAULT '2026-08-15',
    seen_at timestamp(6) DEFAULT '2026-01-02 03:04:05.123456',
    changed_at timestamptz,
    active boolean NOT NULL DEFAULT true,
    label text DEFAULT 'none',
    code varchar(12) DEFAULT 'X1',
    blob bytea,
    ref uuid,
    doc json,
    docb jsonb,
    level smallint DEFAULT 3,
    big bigint DEFAULT 9000000000,
    ratio double precision DEFAULT 0.25);
ALTER TABLE rec_full REPLICA IDENTITY FULL;
CREATE TABLE rec_default (LIKE rec_full INCLUDING DEFAULTS, PRIMARY KEY (id));
CREATE TABLE rec_ckey (m text, z integer, a date, note text DEFAULT 'n/a', PRIMARY KEY (z, a, m));
ALTER TABLE rec_ckey REPLICA IDENTITY FULL;
"""

SEED = """
INSERT INTO rec_full VALUES
  (1, 10.25, '2026-01-05', '2026-01-05 10:00:00.5', '2026-01-05 10:00:00.25+00', true, 'alpha', 'A1',
   '\\x0102ff', '00000000-0000-4000-8000-000000000001', '{"k": 1}', '{"k": [1, 2]}', 1, 1, 1.5),
  (2, 0.00, '1999-12-31', '1999-12-31 23:59:59', '1999-12-31 23:59:59+05', false, 'beta', 'B2',
   '\\x', '00000000-0000-4000-8000-000000000002', '[]', '{}', -2, -9000000000, -0.5);
INSERT INTO rec_default SELECT * FROM rec_full;
INSERT INTO rec_ckey VALUES ('mm', 5, '2026-02-01', 'first'), ('nn', 6, '2026-02-02', 'second');
"""

STREAM = [
    # defaults and every type on insert, FULL then DEFAULT identity
    "INSERT INTO rec_full (id, changed_at, blob, ref, doc, docb) VALUES (10, '2026-03-01 12:00:00+00', "
    "'\\xdeadbeef', '00000000-0000-4000-8000-00000000000a', '{\"a\": \"b\"}', '{\"x\": null}')",
    "INSERT INTO rec_default (id) VALUES (10)",
    "UPDATE rec_full SET amount = 99.99, label = 'changed', active = false WHERE id = 10",
    "UPDATE rec_default SET amount = 99.99, label = 'changed', active = false WHERE id = 10",
    # primary-key changes: delete + tombstone + create with the newkey/oldkey headers
    "UPDATE rec_full SET id = 11 WHERE id = 10",
    "UPDATE rec_default SET id = 11 WHERE id = 10",
    "UPDATE rec_ckey SET z = 7 WHERE m = 'mm'",
    "DELETE FROM rec_full WHERE id = 2",
    "DELETE FROM rec_default WHERE id = 2",
    # one transaction over three tables
    [
        "INSERT INTO rec_full (id, label) VALUES (20, 'multi')",
        "INSERT INTO rec_ckey (m, z, a) VALUES ('oo', 8, '2026-03-03')",
        "UPDATE rec_default SET code = 'MULTI' WHERE id = 1",
        "DELETE FROM rec_ckey WHERE m = 'nn'",
    ],
]


def _lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(conn.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8").fetchone()[0])  # type: ignore[index]


def _slot(dsn: str, slot: str) -> tuple[bool, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active, (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return (bool(row[0]), int(row[1] or 0)) if row else (False, 0)


def _wait(what: str, pred: Any, timeout: float, alive: Any = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline or not alive():
            raise RuntimeError(f"timed out (or died) waiting for {what}")
        time.sleep(0.3)


def _unprefixed(text: str, prefix: str) -> str:
    """The run's topic prefix (in schema names and ``source.name``) written as ``sis``, as in a school's setup."""
    return text.replace(f'"{prefix}.', '"sis.').replace(f'"name":"{prefix}"', '"name":"sis"')


def _read(kafka: Any, topic: str, prefix: str) -> list[dict[str, Any]]:
    from sevisflow.core.kafka_io import read_topic

    out = []
    for m in read_topic(kafka, topic, timeout_s=30):
        k, v = m.key(), m.value()
        out.append(
            {
                "topic": "sis" + topic[len(prefix) :],
                "partition": m.partition(),
                "offset": m.offset(),
                "key": None if k is None else _unprefixed(k.decode(), prefix),
                "value": None if v is None else json.loads(_unprefixed(v.decode(), prefix)),
                "headers": [
                    [h, None if b is None else _unprefixed(b.decode(), prefix)] for h, b in (m.headers() or [])
                ],
            }
        )
    return sorted(out, key=lambda r: (r["partition"], r["offset"]))


def _settings(info: Any, prefix: str, slot: str, schemas: bool, work: Path) -> Any:
    from sevisflow.core.config import settings_from_mapping

    pg = info.postgres
    return settings_from_mapping(
        {
            "kafka": {"bootstrap_servers": info.kafka.bootstrap, "partitions": 3, "replication_factor": 1},
            "postgres": {"host": "127.0.0.1", "port": pg.port, "dbname": pg.dbname, "user": pg.user},
            "school": {"org_id": "ABC214F00001000"},
            "connector": {
                "name": f"conn-{prefix}",
                "topic.prefix": prefix,
                "slot.name": slot,
                "publication.name": f"pub_{prefix}",
                "table.include.list": [f"public.{t}" for t in TABLES],
                "provide.transaction.metadata": True,
                "value.converter.schemas.enable": schemas,
                "heartbeat.interval.ms": 500,
                "offset.flush.interval.ms": 300,
                "offsets_dir": str(work / "offsets"),
            },
        },
        env={},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.connector.record_debezium", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from sevisflow.connectors.postgres import run_connector
    from sevisflow.deploy.local.debezium import (
        SHIPPED_WORKER,
        connector_properties,
        ensure_jars,
        read_properties,
        write_properties,
    )
    from sevisflow.deploy.local.stack import free_port, java_bin, start_stack, stop_stack

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = REPO / ".local" / "stacks"
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="record-debezium-", dir=root))
    base.chmod(0o755)
    print("starting PostgreSQL + Kafka…", flush=True)
    info = start_stack(name="record-debezium", base=base, progress=lambda *_: None)
    threads: list[tuple[threading.Thread, threading.Event]] = []
    proc = None
    try:
        assert info.postgres and info.kafka
        dsn = info.postgres.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute(SEED)
        runs = {
            ("debezium", True): "dbzon",
            ("debezium", False): "dbzoff",
            ("debezium-aligned", False): "dbzal",
            ("sevisflow", True): "sfon",
            ("sevisflow", False): "sfoff",
        }
        # Debezium: one worker, two connectors (converters per connector)
        libs = ensure_jars()
        work = base / "debezium"
        work.mkdir()
        worker = read_properties(SHIPPED_WORKER)
        worker.update(
            {
                "bootstrap.servers": info.kafka.bootstrap,
                "offset.storage.file.filename": str(work / "off.dat"),
                "listeners": f"http://127.0.0.1:{free_port()}",
            }
        )
        write_properties(work / "worker.properties", worker)
        files = []
        for (who, schemas), prefix in runs.items():
            if not who.startswith("debezium"):
                continue
            on = "true" if schemas else "false"
            props = connector_properties(
                info.postgres.port,
                info.postgres.dbname,
                f"slot_{prefix}",
                prefix,
                **{
                    "name": f"rec-{prefix}",
                    "publication.name": f"pub_{prefix}",
                    "table.include.list": ",".join(f"public.{t}" for t in TABLES),
                    "key.converter": "org.apache.kafka.connect.json.JsonConverter",
                    "value.converter": "org.apache.kafka.connect.json.JsonConverter",
                    "key.converter.schemas.enable": on,
                    "value.converter.schemas.enable": on,
                    "topic.creation.default.partitions": "3",
                },
            )
            props["database.user"] = info.postgres.user
            if who == "debezium-aligned":  # the two settings that make Debezium write what sevisflow writes
                props.update(
                    {"extended.headers.enabled": "false", "value.converter.replace.null.with.default": "false"}
                )
            write_properties(work / f"{prefix}.properties", props)
            files.append(str(work / f"{prefix}.properties"))
        log4j = work / "log4j2.properties"
        log4j.write_text(
            "status = error\nappender.file.type = File\nappender.file.name = file\n"
            f"appender.file.fileName = {work / 'connect.log'}\nappender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = WARN\nrootLogger.appenderRef.file.ref = file\n"
        )
        print("starting Debezium 3.6.1 (three connectors) and sevisflow's connector (twice)…", flush=True)
        with open(work / "stdout.log", "wb") as out:  # the worker keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [
                    java_bin(),
                    "-Xmx512m",
                    f"-Dlog4j2.configurationFile={log4j}",
                    "-cp",
                    f"{libs}/*",
                    "org.apache.kafka.connect.cli.ConnectStandalone",
                    str(work / "worker.properties"),
                    *files,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        settings = {}
        for (who, schemas), prefix in runs.items():
            if who != "sevisflow":
                continue
            s = settings[prefix] = _settings(info, prefix, f"slot_{prefix}", schemas, base / prefix)
            stop = threading.Event()
            t = threading.Thread(target=run_connector, args=(s, stop), daemon=True)
            t.start()
            threads.append((t, stop))
        alive = lambda: proc.poll() is None and all(t.is_alive() for t, _ in threads)  # noqa: E731
        for prefix in runs.values():
            _wait(f"slot_{prefix} streaming", lambda prefix=prefix: _slot(dsn, f"slot_{prefix}")[0], 300, alive)
        time.sleep(5)  # Debezium's snapshot rows are produced before its slot turns active; let them land
        print("playing the operations…", flush=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for step in STREAM:
                with conn.transaction():
                    for sql in [step] if isinstance(step, str) else step:
                        conn.execute(sql)
        target = _lsn(dsn)
        for prefix in runs.values():
            _wait(
                f"slot_{prefix} to confirm", lambda prefix=prefix: _slot(dsn, f"slot_{prefix}")[1] >= target, 300, alive
            )
        time.sleep(3)
        args.out.mkdir(parents=True, exist_ok=True)
        for (who, schemas), prefix in runs.items():
            topics = [f"{prefix}.public.{t}" for t in TABLES] + [f"{prefix}.transaction"]
            records = [r for t in topics for r in _read(_kafka(info), t, prefix)]
            path = args.out / f"{who}-schemas-{'on' if schemas else 'off'}.json"
            path.write_text(
                json.dumps(
                    {"connector": who, "schemas_enable": schemas, "records": records}, indent=1, ensure_ascii=False
                )
                + "\n",
                encoding="utf-8",
            )
            print(f"  {path.relative_to(REPO)}: {len(records)} records", flush=True)
        return 0
    finally:
        for _, stop in threads:
            stop.set()
        for t, _ in threads:
            t.join(60)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        stop_stack(info, remove=True)


def _kafka(info: Any) -> Any:
    from sevisflow.core.config import settings_from_mapping

    return settings_from_mapping(
        {"kafka": {"bootstrap_servers": info.kafka.bootstrap}, "school": {"org_id": "ABC214F00001000"}}, env={}
    ).kafka


if __name__ == "__main__":
    sys.exit(main())
