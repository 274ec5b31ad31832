"""The reference SIS's authorisations (deploy/sis: student_authorization, generate_authorizations) and the
SEVIS events they give when the generated school and its approvals run through the pure pipeline."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from sevisflow.deploy.sis.activity import AUTHORIZATION_KINDS, generate_authorizations
from sevisflow.deploy.sis.generator import PRIMARY_KEYS, TABLE_ORDER, generate_school
from sevisflow.deploy.sis.load import SCHEMA_SQL
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.sevis_events.pure import PurePipeline
from tests.scenarios import MAPPING

TODAY = date(2026, 10, 5)
EXPECTED = {
    "rcl_approved": "AuthDropBelowFC.Add",
    "cpt_approved": "CPTEmployment.Add",
    "opt_recommended": "OPTEmployment.Add",
    "stem_extension": "OPTEmployment.Extend",
}


def test_table_is_in_the_schema_with_full_identity_and_in_the_publication() -> None:
    sql = SCHEMA_SQL.read_text(encoding="utf-8")
    assert "CREATE TABLE public.student_authorization" in sql
    assert "ALTER TABLE public.student_authorization REPLICA IDENTITY FULL;" in sql
    publication = sql[sql.index("CREATE PUBLICATION") :]
    assert "public.student_authorization" in publication
    assert "student_authorization" in TABLE_ORDER and PRIMARY_KEYS["student_authorization"] == ("authorization_id",)
    assert "public.student_authorization" in MAPPING.tables()


def test_generated_school_has_no_authorisations_and_approvals_are_deterministic() -> None:
    school = generate_school(80, 0.5, 7, TODAY)
    assert school["student_authorization"] == []
    a = generate_authorizations(school, 7, TODAY)
    b = generate_authorizations(school, 7, TODAY)
    assert [(t.kind, t.person_id, t.ops) for t in a] == [(t.kind, t.person_id, t.ops) for t in b]
    assert [t.kind for t in a] == list(AUTHORIZATION_KINDS)
    assert school["student_authorization"] == []  # the school given is not modified
    for t in a:
        for op in t.ops:
            row = op.values
            if op.action != "insert":
                continue
            assert row["end_date"] >= row["start_date"]
            assert (row["kind"] == "RCL") == (row["rcl_reason"] is not None)
            if row["kind"] in ("CPT", "STEM_OPT"):
                assert row["employer_name"] and re.fullmatch(r"\d{5}", row["employer_postal_code"])


def _pk(table: str, row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c] for c in PRIMARY_KEYS[table])


def test_approvals_of_the_generated_school_become_sevis_events() -> None:
    school = generate_school(80, 0.5, 7, TODAY)
    feed = SisFeed(primary_keys={f"public.{t}": PRIMARY_KEYS[t] for t in TABLE_ORDER})
    pipe = PurePipeline(MAPPING)
    rows: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
    snap = []
    for table in TABLE_ORDER:
        for r in school[table]:
            rows[(table, _pk(table, r))] = dict(r)
            snap.append(("r", f"public.{table}", None, r))
    feed.tx(*snap, snapshot=True)
    assert set(pipe.feed(feed).kinds()) <= {"Create"}  # the baseline: at most Creates for ready admits
    feed.records.clear()
    got = {}
    for t in generate_authorizations(school, 7, TODAY):
        ops = []
        for op in t.ops:
            if op.action == "insert":
                rows[(op.table, _pk(op.table, op.values))] = dict(op.values)
                ops.append(("c", f"public.{op.table}", None, dict(op.values)))
            else:
                key = (op.table, tuple(op.key.values()))
                old = rows[key]
                rows[key] = {**old, **op.values}
                ops.append(("u", f"public.{op.table}", old, rows[key]))
        feed.tx(*ops)
        out = pipe.feed(feed)
        feed.records.clear()
        assert not out.issues and not out.dead, (t.kind, out.issues, out.dead)
        got[t.kind] = out.kinds()
    for kind, event in EXPECTED.items():
        assert got[kind] == [event], (kind, got[kind])
    assert len(got["authorization_withdrawn"]) == 1 and got["authorization_withdrawn"][0].endswith(".Cancel")
