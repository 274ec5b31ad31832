"""`make demo` end to end: real PostgreSQL, Kafka, every stage, the DSO's CLI, the SEVIS simulator.

Also the privacy check of the logs: the demo runs with INFO logs, and no generated student's
name or birth date may appear in them (the DSO's own terminal output may show names; logs may not).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sevisflow.app.demo import DEMO_PROGRAM, DEMO_TODAY
from sevisflow.deploy.sis.exchange import with_exchange
from sevisflow.deploy.sis.generator import generate_school
from tests.helpers import REPO, XSD_DIR

pytestmark = pytest.mark.integration

STUDENTS, SHARE, SEED, ACTIVITY = 150, 0.4, 11, 80


@pytest.fixture(scope="module")
def demo_run():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sevisflow.app.cli.__main__",
            "--log-level",
            "INFO",
            "demo",
            "--students",
            str(STUDENTS),
            "--international-share",
            str(SHARE),
            "--seed",
            str(SEED),
            "--activity",
            str(ACTIVITY),
            "--xsd-dir",
            str(XSD_DIR),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc


def test_demo_runs_every_step_to_the_end(demo_run):
    out = demo_run.stdout
    assert demo_run.returncode == 0, out[-3000:] + demo_run.stderr[-3000:]
    steps = re.findall(r"^\[(\d+)/(\d+)\]", out, flags=re.M)
    assert steps and steps[-1][0] == steps[-1][1], "the demo stopped before its last step"
    assert "XSD-valid, mode 0o600" in out
    # the DSO's reprint and the DSO-approved CPT/OPT/RCL reach the validated documents
    assert re.search(r"Reprint for student \S+: record_added", out), out[-3000:]
    elements = {k: int(n) for k, n in re.findall(r"(\w+) (\d+)", out.split("update elements: ", 1)[1].splitlines()[0])}
    assert elements.get("Reprint", 0) >= 1, elements
    # four approvals (RCL, CPT, OPT, STEM extension), one of them withdrawn before the close: it cancels out
    authorizations = sum(elements.get(k, 0) for k in ("AuthDropBelowFC", "CPTEmployment", "OPTEmployment"))
    assert authorizations == 3, elements
    summary = re.search(r"summary: (\d+) records sent to SEVIS, (\d+) accepted, (\d+) rejected", out)
    assert summary, out[-2000:]
    sent, accepted, rejected = map(int, summary.groups())
    assert sent > 0 and sent == accepted + rejected
    # the worklist: due days, the rejection SEVIS gave (the simulator forgot one SEVIS ID), its fix and resend
    worklist = out.split("the DSO's worklist", 1)[1].split("an auditor verifies", 1)[0]
    assert re.search(r"Worklist for \d{4}-\d\d-\d\d: \d+ item\(s\)", worklist), worklist[:2000]
    assert re.search(r"due \d{4}-\d\d-\d\d \(in \d+ day\(s\)\)", worklist), worklist[:2000]
    assert "SEVIS said: S1003 SEVIS ID not found" in worklist and "sevisflow batch resend S" in worklist
    assert re.search(r"Resent by dsodemo001: \d+ records? of batch S\d{13} back in the open batch", worklist)
    assert "accepted, and left the worklist" in worklist
    resent = re.search(r"; (\d+) of the rejected were fixed, resent and accepted", out)
    assert resent and 1 <= int(resent.group(1)) <= rejected, out[-1000:]


def test_demo_closes_uploads_and_gets_one_ev_batch_accepted_next_to_the_fm_batch(demo_run):
    """The J-1 program's RO closes its EV batch (its own BatchID, signed by the RO), the XML sink writes an XSD-valid
    SEVISBatchCreateUpdateEV, SEVIS accepts it; the program's exchange visitors have no "cannot send" item."""
    out = demo_run.stdout
    assert demo_run.returncode == 0, out[-3000:] + demo_run.stderr[-3000:]
    closed = re.search(r"closed (\d+) EV batch\(es\) of exchange program (\S+), signed by its RO (\w+): (P\w{13})", out)
    assert closed and closed.group(2) == DEMO_PROGRAM and closed.group(1) == "1", out[-4000:]
    # the batch written is the one closed (or, had the XML sink refused a record, the one it re-closed at once)
    accepted = re.search(rf"EV batch (P\w{{13}}) of {DEMO_PROGRAM}: accepted by SEVIS \(S0000\); (\d+) of (\d+)", out)
    assert accepted and int(accepted.group(2)) >= 1, out[-4000:]
    batch_id = accepted.group(1)
    assert batch_id == closed.group(4) or f"{closed.group(4)}: the XML sink refused some of its records" in out
    assert re.search(
        rf"{batch_id}\S*: SEVISBatchCreateUpdateEV of {DEMO_PROGRAM}, \d+ creates \+ "
        r"\d+ updates, XSD-valid, mode 0o600",
        out,
    ), out[-6000:]
    assert re.search(r"SEVISBatchCreateUpdateStudent of ZZZ214F99999000, \d+ creates", out)
    assert re.search(r"EV\.Reprint for exchange visitor \S+: record_added \(by rodemo0001\)", out), out[-6000:]
    assert re.search(r'"cannot send" items: 0 for the \d+ exchange visitor\(s\) of RSCH', out), out[-3000:]
    ev_elements = out.split("EV update elements: ", 1)[1].splitlines()[0]
    assert "Reprint" in ev_elements, ev_elements


def test_demo_logs_carry_no_personal_data(demo_run):
    school = with_exchange(generate_school(STUDENTS, SHARE, SEED, DEMO_TODAY), SEED, DEMO_TODAY, 12)
    logs = demo_run.stderr
    assert '"event"' in logs, "the demo wrote no structured logs to check"
    needles = set()
    for p in school["person"]:
        for col in ("first_name", "last_name"):
            if p.get(col) and len(p[col]) >= 4:
                needles.add(p[col])
        if p.get("birth_date"):
            needles.add(str(p["birth_date"]))
    for d in school.get("dependent", []):
        for col in ("first_name", "last_name"):
            if d.get(col) and len(d[col]) >= 4:
                needles.add(d[col])
    leaked = sorted(n for n in needles if n in logs)
    assert not leaked, f"personal data in logs: {leaked[:5]}"
