"""`sevisflow student report` against a running batcher and real Kafka: reprint → batch show → close → XML."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, event
from tests.batcher_support import (
    DSO,
    Batcher,
    batch_events,
    cli,
    closed_of,
    records_of,
    send_events,
    wait_for,
    write_config,
)
from tests.helpers import XSD_DIR

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]


def test_dso_reports_a_reprint_through_the_cli(env, tmp_path, capsys):
    from sevisflow.sinks.xml.render import ClosedBatch, check_batch
    from sevisflow.sinks.xml.xsd import load_schema

    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        send_events(env, [event("S1", n=1, sevis_id="N0000000001")])
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 1)

        # refused before anything is sent: bad code, bad DSO id, student without a SEVIS ID
        code, _, err = cli(capsys, cfg, "student", "report", "S1", "reprint", "--reason", "99", "--dso", DSO)
        assert code == 1 and "use one of: 01, 02, 03, 04, 50, 53" in err
        code, _, err = cli(capsys, cfg, "student", "report", "S1", "reprint", "--reason", "02", "--dso", "short")
        assert code == 1 and "exactly 10" in err and "--dso" in err
        code, _, err = cli(capsys, cfg, "student", "report", "S9", "verify", "--dso", DSO)
        assert code == 1 and "no SEVIS ID is known for student S9" in err and "--sevis-id" in err

        code, out, err = cli(
            capsys, cfg, "student", "report", "S1", "reprint", "--reason", "02", "--dso", DSO, "--json"
        )
        assert code == 0, err
        reported = orjson.loads(out)
        assert reported["kind"] == "Reprint" and reported["outcome"] == "record_added"
        assert reported["sevis_id"] == "N0000000001" and reported["dso_user_id"] == DSO

        code, out, _ = cli(capsys, cfg, "batch", "show", "--json")
        shown = {r["kind"]: r for r in orjson.loads(out)["records"]}
        assert set(shown) == {"PersonalInfo", "Reprint"}
        rep = shown["Reprint"]
        assert rep["element"] == "Reprint" and rep["status"] == "open"
        assert rep["source"]["origin"] == "dso" and rep["source"]["dso_user_id"] == DSO
        assert rep["source"]["command_id"] == reported["command_id"]
        code, out, _ = cli(capsys, cfg, "batch", "show")
        assert f"reported by DSO {DSO} with `sevisflow student report`" in out

        # checked by the batcher too: a SEVIS user id that is not one of the school's DSOs, a differing SEVIS ID
        code, _, err = cli(capsys, cfg, "student", "report", "S1", "verify", "--dso", "NOTADSO001")
        assert code == 1 and "the batcher refused" in err and "'NOTADSO001' is not one of the school's DSOs" in err
        code, _, err = cli(capsys, cfg, "student", "report", "S1", "verify", "--dso", DSO, "--sevis-id", "N0000000666")
        assert code == 1 and "--sevis-id N0000000666 differs from N0000000001" in err and "nothing was reported" in err

        code, out, _ = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0 and orjson.loads(out)["batches"][0]["records"] == 2
    finally:
        batcher.stop()
    (closed,) = closed_of(batch_events(env))
    recs = {r["kind"]: r for r in records_of(closed)}
    assert recs["Reprint"]["payload"] == {"Reason": "02"} and recs["Reprint"]["origin"] == "dso"
    assert recs["Reprint"]["lineage"][0]["command_id"] == reported["command_id"]
    checked = check_batch(ClosedBatch.from_event(closed, records_of(closed)), load_schema(XSD_DIR))
    assert checked.problems == [] and b"<Reason>02</Reason>" in checked.xml
