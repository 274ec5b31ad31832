"""The reference SIS in a real PostgreSQL: schema, COPY load, activity, replication settings."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import date
from typing import Any, LiteralString

import orjson
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from sevisflow.deploy.sis.activity import World, generate_activity
from sevisflow.deploy.sis.generator import PRIMARY_KEYS, TABLE_ORDER, generate_school, generate_vendor
from sevisflow.deploy.sis.load import PUBLICATION, ActivityDriftError, create_schema, load_school, play_activity
from tests.helpers import REPO, PgHandle

pytestmark = pytest.mark.integration

TODAY = date(2026, 8, 17)  # a week before Fall starts: registrations, then the confirmation wave


def _table_rows(conn: psycopg.Connection[Any], table: str) -> list[dict[str, Any]]:
    query = sql.SQL("SELECT * FROM {} ORDER BY {}").format(
        sql.Identifier("public", table), sql.SQL(", ").join(map(sql.Identifier, PRIMARY_KEYS[table]))
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query).fetchall()


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()
    assert row is not None
    return int(row[0])


def _sorted(rows: list[dict[str, Any]], table: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: tuple(r[c] for c in PRIMARY_KEYS[table]))


def test_load_and_activity_end_in_the_state_the_generator_modelled(fresh_db: PgHandle) -> None:
    school = generate_school(1500, 0.35, 21, TODAY)
    transactions = generate_activity(school, 600, 21, TODAY)
    create_schema(fresh_db.dsn)

    counts = load_school(fresh_db.dsn, school)
    assert counts == {t: len(school[t]) for t in TABLE_ORDER}
    with psycopg.connect(fresh_db.dsn, autocommit=True) as conn:
        assert {t: _count(conn, t) for t in TABLE_ORDER} == counts
        # a logical slot from here on sees exactly the activity's commits
        conn.execute("SELECT pg_create_logical_replication_slot('sis_load_test', 'test_decoding')")

    assert play_activity(fresh_db.dsn, transactions) == 600

    world = World(school)
    for tx in transactions:
        for op in tx.ops:
            world.apply(op)
    with psycopg.connect(fresh_db.dsn, autocommit=True) as conn:
        for table in TABLE_ORDER:
            expected = _sorted(list(world.rows[table].values()), table)
            assert _table_rows(conn, table) == expected, f"{table} differs from the modelled state"
        # skip-empty-xacts: a commit elsewhere in the cluster (autovacuum's ANALYZE, another test's
        # database) shows as an empty BEGIN/COMMIT pair in this database's slot otherwise
        changes = [
            r[0]
            for r in conn.execute(
                "SELECT data FROM pg_logical_slot_get_changes('sis_load_test', NULL, NULL, 'skip-empty-xacts', '1')"
            ).fetchall()
        ]
        conn.execute("SELECT pg_drop_replication_slot('sis_load_test')")
    # one commit per activity transaction, each holding exactly its row changes
    assert sum(1 for c in changes if c.startswith("BEGIN")) == len(transactions)
    data_changes = Counter(c.split(":")[0].split(".")[1] for c in changes if c.startswith("table "))
    assert data_changes == Counter(op.table for tx in transactions for op in tx.ops)
    # REPLICA IDENTITY FULL: an update carries the whole old row
    assert any(c.startswith("table public.program: UPDATE: old-key:") for c in changes)


def test_every_table_has_full_replica_identity_and_is_published(fresh_db: PgHandle) -> None:
    create_schema(fresh_db.dsn)
    with psycopg.connect(fresh_db.dsn) as conn:
        tables: dict[str, str] = dict(
            conn.execute(
                "SELECT c.relname, c.relreplident FROM pg_class c "
                "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'"
            ).fetchall()
        )
        published = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = %s AND schemaname = 'public'",
                (PUBLICATION,),
            ).fetchall()
        }
        actions = conn.execute(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = %s", (PUBLICATION,)
        ).fetchone()
    assert set(tables) == set(TABLE_ORDER)
    assert all(ident == "f" for ident in tables.values()), tables
    assert published == set(TABLE_ORDER)
    assert actions == (True, True, True, True)


def test_constraints_reject_what_the_sis_must_never_hold(fresh_db: PgHandle) -> None:
    create_schema(fresh_db.dsn)
    load_school(fresh_db.dsn, generate_school(20, 0.5, 3, TODAY))
    bad: list[LiteralString] = [
        "UPDATE person SET school_id = 'X1' WHERE person_id = 1001",
        "UPDATE person SET gender = 'Q' WHERE person_id = 1001",
        "INSERT INTO address (address_id, person_id, kind, line1, postal_code, country) "
        "SELECT 9999, person_id, kind, 'x', '61820', 'US' FROM address WHERE kind = 'US_PHYSICAL' LIMIT 1",
        "UPDATE address SET postal_code = '6182' WHERE kind = 'US_PHYSICAL'",
        "UPDATE address SET country = 'US' WHERE kind = 'FOREIGN'",
        "UPDATE program SET major_cip = '11.07' WHERE program_id = 1",
        "UPDATE program SET expected_end_date = start_date WHERE program_id = 1",
        "INSERT INTO program SELECT 99999, person_id, degree_level, major_cip, NULL, NULL, start_date, "
        "expected_end_date, status, english_required, english_met, english_not_required_reason, true "
        "FROM program WHERE is_current LIMIT 1",
        "UPDATE immigration SET sevis_id = 'N123' WHERE sevis_id IS NOT NULL",
        "UPDATE immigration SET sevis_id = NULL WHERE sevis_status IS NOT NULL",
        "UPDATE enrollment SET confirmed_at = NULL WHERE status = 'ENROLLED'",
        "UPDATE finance SET other_funds = 5, other_funds_source = NULL",
        "INSERT INTO enrollment (enrollment_id, person_id, term_id, status) "
        "VALUES (99999, 1001, '1999FA', 'REGISTERED')",
    ]
    with psycopg.connect(fresh_db.dsn, autocommit=True) as conn:
        for statement in bad:
            with pytest.raises(psycopg.errors.IntegrityError):
                conn.execute(statement)


def test_activity_on_drifted_data_stops_and_rolls_that_transaction_back(fresh_db: PgHandle) -> None:
    school = generate_school(300, 0.5, 1, TODAY)
    transactions = generate_activity(school, 200, 1, TODAY)
    victim = next(
        i
        for i, tx in enumerate(transactions)
        if [op.action for op in tx.ops if op.table == "enrollment"] == ["update"] and len(tx.tables) > 1
    )
    enrollment_id = next(op.key["enrollment_id"] for op in transactions[victim].ops if op.table == "enrollment")
    create_schema(fresh_db.dsn)
    load_school(fresh_db.dsn, school)
    with psycopg.connect(fresh_db.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM enrollment WHERE enrollment_id = %s", (enrollment_id,))
        with pytest.raises(ActivityDriftError, match="matched 0 rows"):
            play_activity(fresh_db.dsn, transactions)
        admitted_before = sum(1 for tx in transactions[:victim] if tx.kind == "new_admit")
        assert _count(conn, "person") == 300 + admitted_before
        # the victim's other changes (program or address, before or after the enrollment) are not there
        other = [op for op in transactions[victim].ops if op.table != "enrollment"]
        for op in other:
            key = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in op.key)
            cols = sql.SQL(", ").join(map(sql.Identifier, op.values))
            row = conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE {}").format(cols, sql.Identifier("public", op.table), key),
                tuple(op.key.values()),
            ).fetchone()
            assert row != tuple(op.values.values())


def test_cli_creates_loads_and_plays(fresh_db: PgHandle) -> None:
    args = [
        sys.executable,
        "-m",
        "sevisflow.deploy.sis.load",
        "--dsn",
        fresh_db.dsn,
        "--students",
        "300",
        "--international-share",
        "0.3",
        "--seed",
        "7",
        "--activity",
        "50",
        "--today",
        "2026-10-05",
    ]
    first = subprocess.run(args, cwd=REPO, check=True, capture_output=True, text=True)
    report = orjson.loads(first.stdout)
    assert report["rows"]["person"] == 300 and report["activity"] == 50
    # again on the existing schema: fails cleanly without --replace, works with it
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr
    subprocess.run(args + ["--replace"], cwd=REPO, check=True, capture_output=True, text=True)
    with psycopg.connect(fresh_db.dsn) as conn:
        persons = conn.execute("SELECT count(*) FROM person").fetchone()
    day = date(2026, 10, 5)
    new_admits = sum(
        1 for tx in generate_activity(generate_school(300, 0.3, 7, day), 50, 7, day) if tx.kind == "new_admit"
    )
    assert persons == (300 + new_admits,)


def test_cli_plays_activity_on_the_school_loaded_before(fresh_db: PgHandle) -> None:
    """--play-only: load first, play the activity later (while a pipeline runs); a second play drifts."""
    base = [
        sys.executable,
        "-m",
        "sevisflow.deploy.sis.load",
        "--dsn",
        fresh_db.dsn,
        "--students",
        "300",
        "--seed",
        "7",
        "--today",
        "2026-10-05",
    ]
    subprocess.run(base, cwd=REPO, check=True, capture_output=True, text=True)
    play = base + ["--play-only", "--activity", "50"]
    report = orjson.loads(subprocess.run(play, cwd=REPO, check=True, capture_output=True, text=True).stdout)
    assert report["rows"] == {} and report["activity"] == 50
    day = date(2026, 10, 5)
    new_admits = sum(
        1 for tx in generate_activity(generate_school(300, 0.3, 7, day), 50, 7, day) if tx.kind == "new_admit"
    )
    with psycopg.connect(fresh_db.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM person").fetchone() == (300 + new_admits,)
    # the same activity again no longer matches the SIS: refused, nothing half-applied
    again = subprocess.run(play, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.startswith("error:"), again.stderr
    with psycopg.connect(fresh_db.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM person").fetchone() == (300 + new_admits,)


def test_cli_loads_several_schools_into_one_sis(fresh_db: PgHandle) -> None:
    """--schools: member schools' students carry their person.school_code, the main school's are NULL."""
    args = [sys.executable, "-m", "sevisflow.deploy.sis.load", "--dsn", fresh_db.dsn, "--students", "30"]
    args += ["--schools", "NORTH=20,SOUTH=10", "--seed", "7", "--today", "2026-10-05", "--activity", "40"]
    report = orjson.loads(subprocess.run(args, cwd=REPO, check=True, capture_output=True, text=True).stdout)
    assert report["rows"]["person"] == 60 and report["activity"] == 40
    with psycopg.connect(fresh_db.dsn) as conn:
        loaded: dict[str | None, int] = dict(
            conn.execute(
                "SELECT school_code, count(*) FROM person WHERE person_id <= (SELECT min(person_id) + 59 FROM person) "
                "GROUP BY school_code"
            ).fetchall()
        )
    assert loaded == {None: 30, "NORTH": 20, "SOUTH": 10}
    bad = subprocess.run(args[:-4] + ["--schools", "NORTH"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "give CODE=N" in bad.stderr


def test_rows_without_the_school_code_column_load_beside_rows_with_it(fresh_db: PgHandle) -> None:
    """Person rows made before `school_code` existed (no such key) load next to newer rows: NULL, the main school."""
    school = generate_vendor([(None, 6), ("NORTH", 6)], 0.5, 3, TODAY)
    for p in school["person"][::2]:
        if p["school_code"] is None:
            del p["school_code"]
    assert any("school_code" not in p for p in school["person"])
    create_schema(fresh_db.dsn)
    assert load_school(fresh_db.dsn, school)["person"] == 12
    with psycopg.connect(fresh_db.dsn) as conn:
        got: dict[int, str | None] = dict(conn.execute("SELECT person_id, school_code FROM person").fetchall())
    assert got == {p["person_id"]: p.get("school_code") for p in school["person"]}
