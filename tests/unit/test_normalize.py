"""normalize: input formats, commit order, transaction-complete views, duplicates, dead letters, a second SIS."""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal

import orjson
import pytest

from sevisflow.core.errors import ConfigError
from sevisflow.processors.normalize.changes import ChangeFormatError, parse_change
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.normalize.mapping import load_mapping, mapping_from_dict
from sevisflow.processors.sevis_events.pure import PurePipeline
from tests.helpers import REPO
from tests.scenarios import MAPPING, PKS, TABLES, base_rows


def _history(feed: SisFeed) -> None:
    rows = base_rows(sevis_id=None, status="ADMITTED")
    feed.tx(*[("c", TABLES[n], None, r) for n, r in rows.items()])  # new admit, one commit
    p = rows["program"]
    feed.tx(("u", "public.program", p, {**p, "status": "ACTIVE"}))
    imm = rows["immigration"]
    feed.tx(("u", "public.immigration", imm, {**imm, "sevis_id": "N0000000007", "sevis_status": "ACTIVE"}))
    p2 = {**p, "status": "ACTIVE", "expected_end_date": date(2027, 12, 15)}
    e = rows["enrollment"]
    feed.tx(
        ("u", "public.program", {**p, "status": "ACTIVE"}, p2),
        ("u", "public.enrollment", e, {**e, "status": "ENROLLED"}),
    )
    feed.tx(
        ("u", "public.program", p2, {**p2, "status": "WITHDRAWN"}),
        ("u", "public.enrollment", {**e, "status": "ENROLLED"}, {**e, "status": "WITHDRAWN"}),
    )


def _interleave(records, seed: int):
    """Shuffle across topics, keep each topic's own order (what a consumer of many topics may see)."""
    by_topic: dict[str, list] = {}
    for r in records:
        by_topic.setdefault(r.topic, []).append(r)
    rng = random.Random(seed)
    out = []
    while by_topic:
        t = rng.choice(sorted(by_topic))
        out.append(by_topic[t].pop(0))
        if not by_topic[t]:
            del by_topic[t]
    return out


def _summary(out):
    return [(e["kind"], e["event_id"], e["payload_json"]) for e in out.events], sorted(i.code for _, i in out.issues)


def test_output_does_not_depend_on_topic_interleaving() -> None:
    feed = SisFeed(primary_keys=PKS)
    _history(feed)
    reference = _summary(PurePipeline(MAPPING).feed(feed.records))
    assert [k for k, _, _ in reference[0]] == ["Create", "Registration", "Program.Extension", "Status.Terminate"]
    for seed in range(25):
        assert _summary(PurePipeline(MAPPING).feed(_interleave(feed.records, seed))) == reference


def test_duplicates_from_an_at_least_once_source_are_ignored() -> None:
    feed = SisFeed(primary_keys=PKS)
    _history(feed)
    reference = _summary(PurePipeline(MAPPING).feed(feed.records))
    doubled = feed.records[:30] + feed.records[10:] + feed.records[20:]
    assert _summary(PurePipeline(MAPPING).feed(doubled)) == reference


@pytest.mark.parametrize("wrapper,style", [(False, "debezium"), (True, "debezium"), (False, "iso"), (True, "iso")])
def test_debezium_json_with_and_without_schema_wrapper(wrapper: bool, style: str) -> None:
    plain = SisFeed(primary_keys=PKS)
    _history(plain)
    reference = _summary(PurePipeline(MAPPING).feed(plain.records))
    other = SisFeed(primary_keys=PKS, schema_wrapper=wrapper, style=style)
    _history(other)
    assert _summary(PurePipeline(MAPPING).feed(other.records)) == reference


def test_without_transaction_metadata_every_change_is_applied_in_order() -> None:
    feed = SisFeed(primary_keys=PKS, transactions=False)
    _history(feed)
    out = PurePipeline(MAPPING, tx_topic=None).feed(feed.records)
    assert "Create" in out.kinds() and "Status.Terminate" in out.kinds()


def test_decimal_and_date_forms() -> None:
    value = {
        "before": None,
        "after": {"enrollment_id": 1, "credit_hours": "AHg=", "d": 20000},
        "source": {"schema": "public", "table": "enrollment", "lsn": 5, "txId": 1},
        "op": "c",
    }
    ch = parse_change(b'{"enrollment_id":1}', orjson.dumps(value), "sis.public.enrollment")
    assert ch is not None and ch.after["credit_hours"] == "AHg=" and ch.table == "public.enrollment"
    wrapped = {
        "schema": {
            "type": "struct",
            "fields": [
                {
                    "field": "after",
                    "type": "struct",
                    "fields": [
                        {
                            "field": "credit_hours",
                            "type": "bytes",
                            "name": "org.apache.kafka.connect.data.Decimal",
                            "parameters": {"scale": "1"},
                        },
                        {"field": "d", "type": "int32", "name": "io.debezium.time.Date"},
                    ],
                }
            ],
        },
        "payload": value,
    }
    ch = parse_change(None, orjson.dumps(wrapped), "sis.public.enrollment")
    assert ch is not None and ch.after == {"enrollment_id": 1, "credit_hours": "12.0", "d": "2024-10-04"}


@pytest.mark.parametrize("raw", [b"not json", b'{"a": 1}', b'{"op": "x"}', b'{"op": "c", "source": {}}'])
def test_bad_change_events_raise_format_error(raw: bytes) -> None:
    with pytest.raises(ChangeFormatError):
        parse_change(None, raw, "x")


def test_mapping_with_missing_column_gives_dead_letter_and_keeps_going() -> None:
    feed = SisFeed(primary_keys=PKS)
    rows = base_rows()
    person = dict(rows["person"])
    del person["birth_city"]
    feed.tx(("c", "public.person", None, person))
    feed.tx(*[("c", TABLES[n], None, r) for n, r in rows.items() if n != "person"])
    out = PurePipeline(MAPPING).feed(feed.records)
    assert [d.code for d in out.dead] == ["mapping_missing_column"]
    assert out.dead[0].field == "birth_city" and out.dead[0].change.offset == 0
    # the other tables' rows wait for their student row instead of being lost
    assert out.views == []


def test_orphans_are_applied_when_their_student_arrives() -> None:
    feed = SisFeed(primary_keys=PKS)
    rows = base_rows()
    feed.tx(*[("c", TABLES[n], None, r) for n, r in rows.items() if n != "person"])
    feed.tx(("c", "public.person", None, rows["person"]))
    out = PurePipeline(MAPPING).feed(feed.records)
    v = out.views[-1].view
    assert v["international"] and v["program"]["degree_level"] == "05" and v["address"]["foreign"]["country"] == "GM"


@pytest.mark.parametrize(
    "raw,expected", [("NORTH", "NORTH"), (" NORTH ", "NORTH"), (None, None), ("", None), ("   ", None)]
)
def test_school_code_of_the_person_row_is_the_views_member_school(raw: str | None, expected: str | None) -> None:
    """person.school_code → student.school_code (str: trimmed); null, empty or blank = None (the main school)."""
    feed = SisFeed(primary_keys=PKS)
    rows = base_rows()
    rows["person"]["school_code"] = raw
    feed.tx(*[("c", TABLES[n], None, r) for n, r in rows.items()])
    out = PurePipeline(MAPPING).feed(feed.records)
    assert out.dead == []
    v = out.views[-1].view
    assert v["exists"] and v["international"] and v["student"]["last_name"] == "O'Brien-Müller"
    assert "school_code" in v["student"] and v["student"]["school_code"] == expected


def test_a_student_moved_to_another_school_changes_the_views_school_code() -> None:
    feed = SisFeed(primary_keys=PKS)
    rows = base_rows()
    person = {**rows["person"], "school_code": "NORTH"}
    feed.tx(*[("c", TABLES[n], None, person if n == "person" else r) for n, r in rows.items()])
    feed.tx(("u", "public.person", person, {**person, "school_code": "SOUTH"}))
    feed.tx(("u", "public.person", {**person, "school_code": "SOUTH"}, {**person, "school_code": ""}))
    out = PurePipeline(MAPPING).feed(feed.records)
    assert out.dead == []
    assert [v.view["student"]["school_code"] for v in out.views] == ["NORTH", "SOUTH", None]


# ---------------------------------------------------------------------------- a second, differently shaped SIS

SECOND = {
    "student": {"table": "acad.stu", "key": "stu_no"},
    "international": {"visa_types": ["01", "02"]},
    "feed": [
        {
            "table": "acad.stu",
            "section": "student",
            "fields": {
                "last_name": "surname",
                "first_name": "given_names",
                "birth_date": "dob",
                "gender": "sex",
                "birth_country": "born_in",
                "citizenship_country": "nationality",
                "email": "mail",
                "visa_type": "visa_class",
                "sevis_id": "sevis_no",
                "issue_reason": "i20_reason",
            },
        },
        {
            "table": "acad.contact",
            "section": "address",
            "link": "stu_no",
            "slot": "foreign",
            "fields": {"line1": "home_street", "city": "home_town", "country": "home_country"},
        },
        {
            "table": "acad.contact",
            "section": "address",
            "link": "stu_no",
            "slot": "us_physical",
            "fields": {
                "line1": "local_street",
                "city": "local_town",
                "state": "local_state",
                "postal_code": "local_zip",
            },
        },
        {
            "table": "acad.study",
            "section": "program",
            "link": "stu_no",
            "fields": {
                "degree_level": "award",
                "major_cip": "cip1",
                "start_date": "begins",
                "end_date": "ends",
                "status": "state",
                "english_required": "esl_req",
            },
        },
        {
            "table": "acad.study",
            "section": "finance",
            "link": "stu_no",
            "fields": {
                "academic_term_months": "months",
                "tuition": {"column": "fees", "scale": 2},
                "living_expenses": "living",
                "personal_funds": "own_funds",
            },
        },
        {
            "table": "acad.term_reg",
            "section": "registration",
            "link": "stu_no",
            "slot_column": "term_code",
            "fields": {
                "status": "reg_state",
                "session_start": "t_begin",
                "session_end": "t_end",
                "next_session_start": "t_next",
            },
        },
    ],
    "values": {
        "country": {"builtin": "identity"},  # this SIS stores SEVIS codes already
        "gender": {"map": {"1": "M", "2": "F"}},
        "visa_type": {"map": {"F1": "01", "M1": "02"}, "unmapped": "keep"},
        "edu_level": {"map": {"BA": "04", "MA": "05", "PHD": "06"}},
        "program_status": {
            "map": {"A": "active", "N": "initial", "G": "completed", "W": {"value": "terminated", "reason": "23"}}
        },
        "enrollment_status": {"map": {"REG": "registered", "CONF": "enrolled", "OUT": "withdrawn"}},
    },
}


def test_second_sis_schema_needs_only_a_mapping_file() -> None:
    mapping = mapping_from_dict(SECOND, origin="second")
    feed = SisFeed(prefix="uni", primary_keys={"acad.term_reg": ("stu_no", "term_code")})
    stu = {
        "stu_no": "A123",
        "surname": "Lefèvre",
        "given_names": "Théo",
        "dob": date(2003, 7, 1),
        "sex": "1",
        "born_in": "FR",
        "nationality": "FR",
        "mail": "theo@example.fr",
        "visa_class": "F1",
        "sevis_no": None,
        "i20_reason": "I",
    }
    contact = {
        "stu_no": "A123",
        "home_street": "5 rue de Rivoli",
        "home_town": "Paris",
        "home_country": "FR",
        "local_street": None,
        "local_town": None,
        "local_state": None,
        "local_zip": None,
    }
    study = {
        "stu_no": "A123",
        "award": "MA",
        "cip1": "45.0601",
        "begins": date(2026, 8, 24),
        "ends": date(2028, 5, 15),
        "state": "N",
        "esl_req": "N",
        "months": 9,
        "fees": Decimal("28000.00"),
        "living": 14000,
        "own_funds": 45000,
    }
    feed.tx(("c", "acad.stu", None, stu), ("c", "acad.contact", None, contact), ("c", "acad.study", None, study))
    pipe = PurePipeline(mapping, tx_topic="uni.transaction")
    out = pipe.feed(feed.records)
    assert out.kinds() == ["Create"], (out.issues, out.dead)
    feed.records.clear()
    # SEVIS ID recorded, then the student arrives: local address, confirmed registration, active
    feed.tx(("u", "acad.stu", stu, {**stu, "sevis_no": "N0009999999"}))
    contact2 = {
        **contact,
        "local_street": "1 Main St",
        "local_town": "Urbana",
        "local_state": "IL",
        "local_zip": "61801",
    }
    reg = {
        "stu_no": "A123",
        "term_code": "F26",
        "reg_state": "CONF",
        "t_begin": date(2026, 8, 24),
        "t_end": date(2026, 12, 18),
        "t_next": date(2027, 1, 19),
    }
    feed.tx(
        ("u", "acad.contact", contact, contact2),
        ("u", "acad.study", study, {**study, "state": "A"}),
        ("c", "acad.term_reg", None, reg),
    )
    feed.tx(("u", "acad.study", {**study, "state": "A"}, {**study, "state": "A", "ends": date(2028, 12, 15)}))
    out = pipe.feed(feed.records)
    assert sorted(out.kinds()) == ["PersonalInfo", "Program.Extension", "Registration"], (out.issues, out.dead)
    pi = orjson.loads(next(e for e in out.events if e["kind"] == "PersonalInfo")["payload_json"])
    assert pi["USAddress"] == {"Address1": "1 Main St", "City": "Urbana", "State": "IL", "PostalCode": "61801"}


def test_mapping_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="no field 'nickname'"):
        mapping_from_dict(
            {**SECOND, "feed": [{"table": "acad.stu", "section": "student", "fields": {"nickname": "x"}}]}
        )
    with pytest.raises(ConfigError, match="needs 'link'"):
        mapping_from_dict(
            {**SECOND, "feed": SECOND["feed"] + [{"table": "acad.x", "section": "finance", "fields": {"tuition": "t"}}]}
        )
    with pytest.raises(ConfigError, match="unknown section"):
        mapping_from_dict({**SECOND, "feed": [{"table": "acad.stu", "section": "passport", "fields": {}}]})
    with pytest.raises(ConfigError, match="does not exist"):
        load_mapping(REPO / "nope.toml")
