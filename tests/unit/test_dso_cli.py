"""The DSO CLI's own checks, without Kafka: who is acting, the principal it sends, the close plan, the prompt."""

from __future__ import annotations

import datetime
import io

import pytest

from sevisflow.app.cli import dso as dso_cli
from sevisflow.app.cli.student import code_meanings, settle_sevis_id
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.errors import SevisflowError
from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, School, apply
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import BASE_MS, ORG, command, event
from tests.helpers import XSD_DIR

DSO = "DSOUSER001"


def _settings(**school):
    return settings_from_mapping(
        {"school": {"org_id": "ZZZ214F99999000", **school}, "sevis": {"xsd_dir": str(XSD_DIR)}}, env={}
    )


def test_resolve_dso_needs_an_id_echoes_the_default_and_checks_the_list():
    err = io.StringIO()
    with pytest.raises(SevisflowError, match="say who you are with --dso"):
        dso_cli.resolve_dso(None, _settings(), "held", err)
    assert dso_cli.resolve_dso(None, _settings(default_dso=DSO), "held", err) == DSO
    assert err.getvalue() == f"acting as {DSO} (school.default_dso)\n"
    with pytest.raises(SevisflowError, match="exactly 10"):
        dso_cli.resolve_dso("short", _settings(), "held", err)
    with pytest.raises(SevisflowError, match="not one of the school's DSOs"):
        dso_cli.resolve_dso("OTHERDSO01", _settings(dso_user_ids=[DSO]), "held", err)
    assert dso_cli.resolve_dso(DSO, _settings(dso_user_ids=[DSO]), "held", err) == DSO


def test_principal_is_the_sasl_user_or_the_certificate_subject(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def kafka(**k):
        return settings_from_mapping({"school": {"org_id": "ZZZ214F99999000"}, "kafka": k}, env={}).kafka

    assert dso_cli.principal_of(kafka()) is None
    assert dso_cli.principal_of(kafka(security_protocol="SASL_SSL", sasl_username="jsmith")) == "User:jsmith"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Uni"), x509.NameAttribute(NameOID.COMMON_NAME, "jsmith")]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "dso.crt"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert (
        dso_cli.principal_of(kafka(security_protocol="SSL", ssl_certificate_location=str(pem)))
        == "User:CN=jsmith,O=Uni"
    )
    with pytest.raises(SevisflowError, match="cannot read the client certificate"):
        dso_cli.principal_of(kafka(security_protocol="SSL", ssl_certificate_location=str(tmp_path / "none.crt")))


def test_check_reason_refuses_what_a_hold_cannot_carry():
    assert dso_cli.check_reason(" call the student ") == "call the student"
    for bad, why in (
        (None, "missing"),
        ("", "missing"),
        ("a\tb", r"U\+0009"),
        ("x" * 501, "501 characters"),
        ("\u202eevil", r"U\+202E"),
    ):
        with pytest.raises(SevisflowError, match=why):
            dso_cli.check_reason(bad)


def test_close_plan_compares_the_reviewed_revision_with_now():
    published = []
    s = School(ORG)

    def feed(inp):
        nonlocal s
        s, outs = apply(s, inp)
        published.extend(o.event for o in outs if isinstance(o, Publish))

    feed(EventIn(event("S1", n=1), BASE_MS))
    feed(EventIn(event("S2", "Create", n=2), BASE_MS))
    feed(EventIn(event("S4", n=4), BASE_MS))
    reviewed = build_view(ORG, published)
    feed(EventIn(event("S3", n=3), BASE_MS))  # added after
    feed(EventIn(event("S1", n=5), BASE_MS))  # changed after
    feed(CommandIn(command("close", "c0", dso_user_id=DSO, record_ids=["S4:PersonalInfo"])))  # closed meanwhile
    plan = dso_cli.plan_close(reviewed, build_view(ORG, published))
    assert [r["record_id"] for r in plan.closing] == ["S2:Create"]
    assert plan.to_json()["changed_since"] == ["S1:PersonalInfo"]
    assert plan.to_json()["removed_since"] == ["S4:PersonalInfo"]
    assert plan.to_json()["added_since"] == ["S3:PersonalInfo"]
    assert plan.counts() == [("CreateStudent (new student)", 1)]
    text = plan.changes_text()
    assert "changed after revision" in text[0] and "undone or closed" in text[1] and "arrived after" in text[2]


def test_confirm_takes_only_yes():
    assert dso_cli.confirm("?", lambda q: " YES ") is True
    for said in ("y", "", "no", "yes please"):
        assert dso_cli.confirm("?", lambda q, said=said: said) is False

    def interrupted(q):
        raise EOFError

    assert dso_cli.confirm("?", interrupted, io.StringIO()) is False


def test_add_info_codes_are_echoed_with_their_meaning():
    dep = {
        "BirthCountryCode": "CN",
        "CitizenshipCountryCode": "CH",
        "VisaType": "04",
        "Relationship": "02",
        "Gender": "F",
    }
    assert code_meanings(dep, _settings()) == [
        ("birth country", "Comoros (CN)"),
        ("citizenship", "China (CH)"),
        ("visa", "F-2 (04)"),
        ("relationship", "child (02)"),
        ("gender", "female (F)"),
    ]


def test_a_differing_sevis_id_is_refused_naming_the_known_one():
    known = {"sevis_id": "N0000000001"}
    assert settle_sevis_id(None, known, None, "S1", "added") == "N0000000001"
    assert settle_sevis_id("N0000000001", known, None, "S1", "added") == "N0000000001"
    assert settle_sevis_id("N0000000007", {"sevis_id": None}, None, "S1", "added") == "N0000000007"
    with pytest.raises(SevisflowError, match="differs from N0000000002, the SEVIS ID SEVIS returned"):
        settle_sevis_id("N0000000001", known, "N0000000002", "S1", "added")
    with pytest.raises(SevisflowError, match="the pipeline knows \\(from the SIS\\)"):
        settle_sevis_id("N0000000009", known, None, "S1", "added")


def test_audit_says_who_reviewed_a_close_as_its_command_records_it():
    from sevisflow.app.audit.timeline import reviewed_by

    assert reviewed_by({"command_id": "close-1", "dso_user_id": DSO, "reviewed_revision": 42}) == f"{DSO} (revision 42)"
    assert (
        reviewed_by(
            {
                "command_id": "scheduled:ZZZ214F99999000:2026-12-03",
                "dso_user_id": "SCHEDDSO01",
                "reviewed_revision": None,
            }
        )
        == "none (scheduled close: no person reviewed it)"
    )
    assert (
        reviewed_by({"command_id": "close-2", "dso_user_id": DSO, "reviewed_revision": None, "basis_revision": 7})
        == "none (closed with --yes without a reviewed revision; bound to revision 7 as read)"
    )
