"""A made-up reference school for tests and benchmarks: one F-1 student's SIS rows, and a term of n such students.

``base_rows`` are rows of the reference schema (deploy/sis/schema.sql) for one student; ``TABLES`` names
their tables; ``school_history`` writes n students' admissions and a term of changes into a
:class:`~sevisflow.processors.normalize.debezium.SisFeed`. No real person anywhere.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sevisflow.core.config import Settings
from sevisflow.processors.normalize.debezium import SisFeed

PKS = {"public.term": ("term_id",)}
ORG = "ABC214F12345000"


def base_rows(
    sevis_id: str | None = "N0001234567", visa: str | None = "F-1", status: str = "ACTIVE"
) -> dict[str, dict[str, Any]]:
    return {
        "term": {
            "term_id": "2026FA",
            "name": "Fall 2026",
            "start_date": date(2026, 8, 24),
            "end_date": date(2026, 12, 18),
            "next_term_start": date(2027, 1, 19),
        },
        "person": {
            "person_id": 7,
            "school_id": "S00000007",
            "school_code": None,
            "first_name": "Zoë",
            "middle_name": None,
            "last_name": "O'Brien-Müller",
            "preferred_name": None,
            "birth_date": date(2002, 3, 1),
            "gender": "F",
            "birth_city": "Köln",
            "birth_country": "DE",
            "citizenship_country": "DE",
            "email": "zoe@example.com",
            "phone": "2175550123",
            "phone_country_code": "1",
            "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
        },
        "immigration": {
            "person_id": 7,
            "visa_type": visa,
            "sevis_id": sevis_id,
            "sevis_status": "ACTIVE" if sevis_id else None,
            "issue_reason": "I",
            "i20_issue_date": None,
        },
        "us": {
            "address_id": 71,
            "person_id": 7,
            "kind": "US_PHYSICAL",
            "line1": "100 Green St",
            "line2": None,
            "city": "Urbana",
            "state": "Illinois",
            "postal_code": "61801",
            "country": "US",
        },
        "foreign": {
            "address_id": 72,
            "person_id": 7,
            "kind": "FOREIGN",
            "line1": "Hauptstraße 5",
            "line2": None,
            "city": "Köln",
            "state": "Nordrhein-Westfalen",
            "postal_code": "50923",
            "country": "DE",
        },
        "program": {
            "program_id": 73,
            "person_id": 7,
            "degree_level": "MASTERS",
            "major_cip": "11.0701",
            "second_major_cip": None,
            "minor_cip": None,
            "start_date": date(2025, 8, 25),
            "expected_end_date": date(2027, 5, 15),
            "status": status,
            "english_required": True,
            "english_met": True,
            "english_not_required_reason": None,
            "is_current": True,
        },
        "finance": {
            "person_id": 7,
            "academic_term_months": 9,
            "tuition": 30000,
            "living_expenses": 15000,
            "dependent_expenses": 0,
            "other_costs": 0,
            "personal_funds": 50000,
            "school_funds": 0,
            "school_funds_remarks": None,
            "other_funds": 0,
            "other_funds_source": None,
            "other_costs_remarks": None,
        },
        "enrollment": {
            "enrollment_id": 74,
            "person_id": 7,
            "term_id": "2026FA",
            "status": "REGISTERED",
            "credit_hours": Decimal("12.0"),
            "full_time": True,
            "confirmed_at": None,
        },
    }


TABLES = {
    "term": "public.term",
    "person": "public.person",
    "immigration": "public.immigration",
    "us": "public.address",
    "foreign": "public.address",
    "program": "public.program",
    "finance": "public.finance",
    "enrollment": "public.enrollment",
    "dependent": "public.dependent",
    "mail": "public.address",
    "auth": "public.student_authorization",
}


def school_history(feed: SisFeed, n: int) -> None:
    """n students: admitted, created, then a term of changes, several tables per commit."""
    feed.tx(("c", "public.term", None, base_rows()["term"]))
    for i in range(n):
        rows = base_rows(sevis_id=None, status="ADMITTED")
        pid = 100 + i
        for r in rows.values():
            if "person_id" in r:
                r["person_id"] = pid
        rows["person"]["school_id"] = f"S{pid:08d}"
        for name, k in (
            ("us", "address_id"),
            ("foreign", "address_id"),
            ("program", "program_id"),
            ("enrollment", "enrollment_id"),
        ):
            rows[name][k] = pid * 10 + len(k) + (name == "foreign")
        if i % 7 == 3:
            rows["person"]["last_name"] = "R2D2"  # rejected name → issue instead of Create
        feed.tx(*[("c", TABLES[n2], None, r) for n2, r in rows.items() if n2 != "term"])
        p, imm, e = rows["program"], rows["immigration"], rows["enrollment"]
        feed.tx(
            ("u", "public.immigration", imm, {**imm, "sevis_id": f"N{pid:010d}", "sevis_status": "ACTIVE"}),
            ("u", "public.program", p, {**p, "status": "ACTIVE"}),
        )
        p = {**p, "status": "ACTIVE"}
        feed.tx(("u", "public.enrollment", e, {**e, "status": "ENROLLED"}))
        feed.tx(
            ("u", "public.program", p, {**p, "expected_end_date": date(2027, 12, 15)}),
            ("u", "public.person", rows["person"], {**rows["person"], "email": f"s{pid}@example.org"}),
        )


def feed_on_kafka(
    settings: Settings, feed: SisFeed, tables: list[str], partitions: int, records: slice = slice(None)
) -> None:
    """Create the pipeline's and the processors' topics and the change topics of ``tables`` (``partitions``
    each; the transaction topic one), then produce ``feed``'s records (those in ``records``) to them
    (acknowledged on return)."""
    from sevisflow.core.kafka_io import (
        TopicSpec,
        delivery_raiser,
        ensure_topics,
        flush_or_raise,
        make_producer,
        produce,
    )
    from sevisflow.core.topics import pipeline_topics
    from sevisflow.processors.normalize.stage import normalize_topics
    from sevisflow.processors.sevis_events.stage import events_topics

    prefix = settings.connector.topic_prefix
    ensure_topics(
        settings.kafka,
        pipeline_topics(settings)
        + normalize_topics(settings)
        + events_topics(settings)
        + [TopicSpec(f"{prefix}.{t}", partitions, 1) for t in tables]
        + [TopicSpec(f"{prefix}.transaction", 1, 1)],
    )
    producer = make_producer(settings.kafka)
    errors: list[Exception] = []
    for r in feed.records[records]:
        produce(producer, r.topic, r.key, r.value, on_delivery=delivery_raiser(errors))
    flush_or_raise(producer, errors)
