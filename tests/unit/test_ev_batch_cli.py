"""The DSO CLI for an exchange program's EV batches, without Kafka: ``--org <program number>`` selects the program,
its RO/ARO acts (the RO by default, echoed), everyone else is refused before anything is sent; ``report reprint``
becomes the EV Reprint (a new DS-2019) with the EV reason codes; the close plan names EV elements."""

from __future__ import annotations

import argparse
import io

import pytest

from sevisflow.app.cli import dso as dso_cli
from sevisflow.app.cli.batch import list_orgs, org_of
from sevisflow.app.cli.review import element, title
from sevisflow.app.cli.student import report_event
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.errors import SevisflowError
from sevisflow.processors.batcher.view import BatchView
from testkit.batcher import event
from tests.helpers import XSD_DIR

PROGRAM, RO, ARO, DSO = "P-1-12345", "ROUSER0001", "AROUSER001", "DSOUSER001"


def _settings(programs=True):
    raw = {
        "school": {"org_id": "ZZZ214F99999000", "dso_user_ids": [DSO], "default_dso": DSO},
        "sevis": {"xsd_dir": str(XSD_DIR)},
    }
    if programs:
        raw["exchange_programs"] = [
            {"program_number": PROGRAM, "sis_program": "RSCH", "ro_user_id": RO, "aro_user_ids": [ARO]}
        ]
    return settings_from_mapping(raw, env={})


def test_org_selects_the_school_or_a_configured_program():
    s = _settings()
    assert org_of(argparse.Namespace(org=None), s) == "ZZZ214F99999000"
    assert org_of(argparse.Namespace(org=PROGRAM), s) == PROGRAM
    with pytest.raises(
        SevisflowError,
        match=r"--org P-1-99999 is not a configured exchange program \(exchange "
        r"programs: P-1-12345\)",
    ):
        org_of(argparse.Namespace(org="P-1-99999"), s)
    with pytest.raises(SevisflowError, match="none is configured"):
        org_of(argparse.Namespace(org=PROGRAM), _settings(programs=False))
    assert list_orgs(argparse.Namespace(org=None), s) == ["ZZZ214F99999000", PROGRAM]
    assert list_orgs(argparse.Namespace(org=PROGRAM), s) == [PROGRAM]


def test_the_ro_acts_for_the_program_by_default_and_only_its_officers_may():
    s, err = _settings(), io.StringIO()
    assert dso_cli.resolve_dso(None, s, "closed", err, org=PROGRAM) == RO
    assert "acting as ROUSER0001 (the RO of exchange program P-1-12345)" in err.getvalue()
    assert dso_cli.resolve_dso(ARO, s, "closed", err, org=PROGRAM) == ARO
    with pytest.raises(
        SevisflowError, match="not closed: DSOUSER001 is not the RO or an ARO of exchange program P-1-12345"
    ):
        dso_cli.resolve_dso(DSO, s, "closed", err, org=PROGRAM)
    # the school's own commands are unchanged: its DSOs, school.default_dso
    assert dso_cli.resolve_dso(None, s, "closed", err, org="ZZZ214F99999000") == DSO
    with pytest.raises(SevisflowError, match="is not one of the school's DSOs"):
        dso_cli.resolve_dso(RO, s, "closed", err, org="ZZZ214F99999000")


def test_reprint_for_a_program_is_the_ev_reprint_with_the_ev_codes():
    s = _settings()
    kind, payload, after = report_event("reprint", s, reason="05", remarks="lost in the mail", ev=True)
    assert (kind, payload, after) == (
        "EV.Reprint",
        {"Reason": "05", "Remarks": "lost in the mail"},
        {"reprint_reason": "05"},
    )
    with pytest.raises(
        SevisflowError,
        match=r"'02' is not a SEVIS reprint reason code \(EVReprintRequestReasonType\); "
        "use one of: 05, 12, 13, 14",
    ):
        report_event("reprint", s, reason="02", ev=True)
    with pytest.raises(SevisflowError, match=r"verify is a student \(F/M\) event"):
        report_event("verify", s, ev=True)
    assert report_event("reprint", s, reason="02")[0] == "Reprint"  # the school's I-20 reprint is unchanged


def test_the_close_plan_and_the_screens_name_ev_elements():
    view = BatchView(PROGRAM)
    for n, kind in enumerate(("EV.Create", "EV.SiteOfActivity.Add", "EV.Program.Extension")):
        rec = {
            "record_id": f"J{n}:{kind}",
            "student_key": f"J{n}",
            "kind": kind,
            "rev": 1,
            "status": "open",
            "section": "create" if kind == "EV.Create" else "update",
            "seq": n,
        }
        view.records[rec["record_id"]] = rec
    plan = dso_cli.plan_close(view, view)
    assert dict(plan.counts()) == {
        "CreateEV (new exchange visitor)": 1,
        "UpdateEV Program/Extension": 1,
        "UpdateEV SiteOfActivity/Add": 1,
    }
    rec = event("J1", "EV.SiteOfActivity.Add")
    assert element(rec) == "SiteOfActivity/Add" and title(rec) == "Site of activity added"
    assert element(event("J1", "EV.Create")) == "CreateEV" and element(event("S1", "Create")) == "CreateStudent"


def test_a_programs_batch_is_found_by_its_batch_id_without_org():
    from sevisflow.app.cli.batch import org_of_batch

    s = _settings()
    assert org_of_batch(argparse.Namespace(org=None), s, "P1123450TB5K3F") == PROGRAM
    assert org_of_batch(argparse.Namespace(org=None), s, "S1750000000000") == "ZZZ214F99999000"
    assert org_of_batch(argparse.Namespace(org=PROGRAM), s, "S1750000000000") == PROGRAM
