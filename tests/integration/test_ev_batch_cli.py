"""The RO's day through the CLI against a running batcher on real Kafka: an exchange program's open EV batch is
shown, a DS-2019 reprint reported, the batch closed as the RO (the default for ``--org <program number>``) and listed
next to the school's; a DSO who is not the RO/ARO is refused by the CLI, and by the batcher (dead letter) when the
CLI is bypassed."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.core.kafka_io import read_topic
from sevisflow.core.serde import registry
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, command, event
from tests.batcher_support import (
    DSO,
    Batcher,
    batch_events,
    cli,
    closed_of,
    send_command,
    send_events,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]
PROGRAM, RO = "P-1-12345", "ROUSER0001"


def test_the_ro_reviews_reports_closes_and_lists_the_ev_batch(env, tmp_path, capsys):
    settings = env.replace(
        school={"dso_user_ids": [DSO]},
        exchange_programs=[{"program_number": PROGRAM, "sis_program": "RSCH", "ro_user_id": RO}],
    )
    cfg = write_config(settings, tmp_path / "sevisflow.toml", school_extra=f'dso_user_ids = ["{DSO}"]\n')
    cfg.write_text(
        cfg.read_text() + f'[[exchange_programs]]\nprogram_number = "{PROGRAM}"\nsis_program = "RSCH"\n'
        f'ro_user_id = "{RO}"\n'
    )
    batcher = Batcher(settings)
    try:
        send_events(
            settings,
            [
                event(
                    f"J{i}",
                    "EV.Biographical",
                    n=i,
                    org=PROGRAM,
                    sevis_id=f"N{i:010d}",
                    payload={"@printForm": "false", "EmailAddress": f"v{i}@example.org"},
                )
                for i in (1, 2)
            ]
            + [event("F1", n=3)],
        )
        wait_for(settings, lambda evs: build_view(PROGRAM, evs).counts()["records"] == 2)
        code, out, _ = cli(capsys, cfg, "batch", "--org", PROGRAM, "show", "--json")
        assert code == 0 and sorted(r["student_key"] for r in orjson.loads(out)["records"]) == ["J1", "J2"]
        code, out, err = cli(
            capsys, cfg, "student", "--org", PROGRAM, "report", "J1", "reprint", "--reason", "05", "--json"
        )
        assert code == 0, err
        assert orjson.loads(out)["kind"] == "EV.Reprint" and "acting as ROUSER0001 (the RO of exchange program" in err
        code, _, err = cli(capsys, cfg, "batch", "--org", PROGRAM, "close", "--dso", DSO, "--yes")
        assert code == 1 and "DSOUSER001 is not the RO or an ARO of exchange program P-1-12345" in err
        code, out, err = cli(capsys, cfg, "batch", "--org", PROGRAM, "close", "--yes", "--json")
        assert code == 0, err
        closed = orjson.loads(out)
        assert closed["closed_by"] == RO and closed["batches"][0]["batch_id"].startswith("P112345")
        assert closed["batches"][0]["records"] == 3
        code, out, _ = cli(capsys, cfg, "batch", "list", "--json")
        listed = orjson.loads(out)
        assert listed["org_id"] == ORG and listed["batches"] == []
        assert [b["batch_id"] for b in listed["programs"][0]["batches"]] == [closed["batches"][0]["batch_id"]]
        # the CLI bypassed: the batcher refuses the DSO for the program, and dead-letters it
        send_events(settings, [event("J3", "EV.Biographical", n=4, org=PROGRAM, sevis_id="N0000000004")])
        send_command(
            settings, command("close", "forged-ev-close", org=PROGRAM, dso_user_id=DSO, at_ms=closed["at_ms"] + 1)
        )
        evs = wait_for(settings, lambda evs: any(e["type"] == "command_rejected" for e in evs))
    finally:
        batcher.stop()
    (refused,) = [e for e in evs if e["type"] == "command_rejected"]
    assert "is not the RO or an ARO of exchange program P-1-12345" in refused["reason"]
    assert len(closed_of(batch_events(settings), PROGRAM)) == 1 and closed_of(batch_events(settings), ORG) == []
    letters = [registry().decode(m.value()) for m in read_topic(settings.kafka, settings.topics.dlq) if m.value()]
    assert any(d["code"] == "unauthorized_command" and "forged-ev-close" in d["reason"] for d in letters)
