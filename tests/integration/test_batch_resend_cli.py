"""`sevisflow batch resend` against a running batcher and real Kafka: after SEVIS rejected one record of a
batch, the DSO fixes the cause and puts exactly that record back; the next close sends it, SEVIS accepts it
and the worklist clears. What cannot be resent (an accepted record, a record resent before) is refused."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, event
from tests.batcher_support import DSO, Batcher, cli, closed_of, records_of, send, send_events, wait_for, write_config

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]
TODAY = "2025-07-01"
RESULT = "sevisflow.results.SevisResult"


def _result(batch_id, rec, ok, code=None, message=None):
    return {
        "org_id": ORG,
        "batch_id": batch_id,
        "request_id": rec["request_id"],
        "student_key": rec["student_key"],
        "kind": rec["kind"],
        "status": "success" if ok else "failure",
        "sevis_id": rec.get("sevis_id"),
        "error_code": code,
        "error_message": message,
        "process_code": "S0000",
        "processed_at": None,
        "dependents_json": None,
    }


def test_resend_puts_the_rejected_record_back_and_the_worklist_follows_it(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        send_events(env, [event("S1", n=1, display_name="Chen, Wei"), event("S2", n=2, display_name="Okafor, Ada")])
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 2)
        code, out, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0, err
        first = closed_of(wait_for(env, lambda evs: closed_of(evs)))[0]
        bid = first["batch_id"]
        by_student = {r["student_key"]: r for r in records_of(first)}
        code, _, err = cli(capsys, cfg, "batch", "resend", bid, "--dso", DSO)
        assert code == 1 and "no SEVIS result yet" in err  # nothing rejected yet
        send(
            env,
            env.topics.results,
            RESULT,
            [
                _result(bid, by_student["S1"], False, "S1003", "SEVIS ID not found"),
                _result(bid, by_student["S2"], True),
            ],
        )

        code, _, err = cli(capsys, cfg, "batch", "resend", bid, "--record", "S2:PersonalInfo", "--dso", DSO)
        assert code == 1 and "was not rejected by SEVIS" in err  # accepted: refused by the CLI
        code, out, err = cli(capsys, cfg, "batch", "resend", bid, "--dso", DSO, "--reason", "SEVIS ID checked in RTI")
        assert code == 0, err
        assert "1 record of batch" in out and "S1:PersonalInfo: SEVIS said S1003 SEVIS ID not found" in out
        view = build_view(ORG, wait_for(env, lambda evs: any(e["type"] == "resent" for e in evs)))
        (rec,) = view.open_records()
        assert rec["record_id"] == "S1:PersonalInfo" and rec["request_id"] != by_student["S1"]["request_id"]
        assert rec["at_ms"] == by_student["S1"]["at_ms"] and rec["resent_from"]["by"] == DSO  # original clock

        code, out, _ = cli(capsys, cfg, "todo", "--today", TODAY, "--json")
        items = {(i["student_key"], i["what"]): i for i in orjson.loads(out)["items"]}
        assert ("S1", "rejected") not in items and ("S1", "resent") not in items  # one item: the open record's
        assert items[("S1", "send")]["due_on"] == "2025-07-06"  # with its original clock
        assert f"SEVIS rejected it in batch {bid} (S1003); resent by {DSO}" in items[("S1", "send")]["detail"][-1]
        code, _, err = cli(capsys, cfg, "batch", "resend", bid, "--dso", DSO)
        assert code == 1 and "no rejected record left" in err  # resent once only

        code, out, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0, err
        second = next(c for c in closed_of(wait_for(env, lambda evs: len(closed_of(evs)) == 2)) if c["batch_id"] != bid)
        (again,) = records_of(second)
        code, out, _ = cli(capsys, cfg, "todo", "--today", TODAY, "--json")  # in flight: shown as resent
        assert [i["what"] for i in orjson.loads(out)["items"] if i["student_key"] == "S1"] == ["resent"]
        send(env, env.topics.results, RESULT, [_result(second["batch_id"], again, True)])
        wait_for(env, lambda evs: True)
        for _ in range(40):
            code, out, _ = cli(capsys, cfg, "todo", "--today", TODAY, "--json")
            if not [i for i in orjson.loads(out)["items"] if i["student_key"] == "S1"]:
                break
        else:
            raise AssertionError(f"the accepted resend still shows in the worklist: {out}")
    finally:
        batcher.stop()
