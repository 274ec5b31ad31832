"""The DSO CLI against a running batcher and real Kafka: show, hold, release, add-info, close, list, status."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.app.cli import batch as batch_cli
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, event
from tests.batcher_support import DSO, Batcher, batch_events, cli, closed_of, send_events, wait_for, write_config

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]


def test_dso_day_through_the_cli(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        code, out, _ = cli(capsys, cfg, "batch", "show")
        assert code == 0 and "The open batch is empty" in out
        code, _, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes")
        assert code == 1 and "nothing to close" in err

        send_events(
            env,
            [
                event(
                    "S1",
                    n=1,
                    display_name="Chen, Wei",
                    before={"email": "a"},
                    after={"email": "b"},
                    payload={"@printForm": "false", "FullName": {"LastName": "Chen", "FirstName": "Wei"}},
                ),
                event("S2", n=2, display_name="Okafor, Ada"),
            ],
        )
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 2)

        code, out, _ = cli(capsys, cfg, "batch", "show")
        assert code == 0 and "Chen, Wei" in out and "e-mail: a → b" in out and "e-mail changed in the SIS" in out
        code, out, _ = cli(capsys, cfg, "batch", "show", "--student", "S1", "--verbose")
        assert code == 0 and "SIS tables: public.address" in out and "Okafor" not in out
        code, out, _ = cli(capsys, cfg, "batch", "show", "--json")
        shown = orjson.loads(out)
        assert shown["counts"]["ready"] == 2 and shown["records"][0]["student_key"] == "S1"

        code, out, _ = cli(capsys, cfg, "batch", "hold", "S2", "--dso", DSO, "--reason", "check I-20")
        assert code == 0 and "S2 is on hold (by DSOUSER001: check I-20)" in out and "1 open record" in out
        code, _, err = cli(capsys, cfg, "batch", "hold", "S2", "--dso", DSO, "--reason", "again")
        assert code == 1 and "student S2 is already on hold (by DSOUSER001 since" in err and "check I-20" in err

        code, out, _ = cli(
            capsys,
            cfg,
            "student",
            "add-info",
            "S1",
            "--dso",
            DSO,
            "--passport",
            "CHEN WEI",
            "--dependent",
            "last=Chen,first=Mei,birth-date=2019-03-02,gender=F,birth-country=CH,"
            "citizenship=CH,relationship=child,visa=F-2",
            "--json",
        )
        assert code == 0, out
        added = orjson.loads(out)
        assert [e["kind"] for e in added["records"]] == ["PersonalInfo", "Dependent.Add"]
        assert added["dso_user_id"] == DSO and added["codes"][0]["birth country"] == "China (CH)"
        code, _, err = cli(capsys, cfg, "student", "add-info", "S1", "--passport", "X1234567")
        assert code == 1 and "digits" in err
        code, _, err = cli(
            capsys,
            cfg,
            "student",
            "add-info",
            "S1",
            "--dependent",
            "last=Chen,birth-date=2019-03-02,gender=F,birth-country=ZZ,citizenship=CH,relationship=child",
        )
        assert code == 1 and "not a SEVIS country code" in err

        evs = wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 4)
        dep = next(r for r in build_view(ORG, evs).records.values() if r["kind"] == "Dependent.Add")
        assert dep["origin"] == "dso" and dep["payload"]["Relationship"] == "02"
        assert dep["payload"]["@printForm"] == "true" and dep["sevis_id"] == "N0000000001"

        code, _, err = cli(capsys, cfg, "batch", "close", "--dso", "short", "--yes")
        assert code == 1 and "exactly 10" in err
        code, out, _ = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0
        closed = orjson.loads(out)
        assert len(closed["batches"]) == 1 and closed["batches"][0]["records"] == 3 and closed["closed_by"] == DSO
        batch_id = closed["batches"][0]["batch_id"]
        assert len(batch_id) == 14

        code, out, _ = cli(capsys, cfg, "batch", "show")
        assert "[held]" in out and "Okafor, Ada" in out and "Ready to send: 0" in out
        code, out, _ = cli(capsys, cfg, "batch", "release", "S2", "--dso", DSO)
        assert code == 0 and "1 record(s) are back" in out
        code, _, err = cli(capsys, cfg, "batch", "release", "S2", "--dso", DSO)
        assert code == 1 and "student S2 is not on hold; nothing to release" in err
        code, out, _ = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes")
        assert code == 0 and "Closed 1 record into 1 batch" in out

        code, out, _ = cli(capsys, cfg, "batch", "list")
        assert code == 0 and batch_id in out and "no SEVIS result yet" in out
        code, out, _ = cli(capsys, cfg, "batch", "list", "--json")
        assert len(orjson.loads(out)["batches"]) == 2
        code, out, _ = cli(capsys, cfg, "batch", "status", batch_id)
        assert code == 0 and "Dependent/Add" in out and "no SEVIS result yet" in out
        code, out, _ = cli(capsys, cfg, "batch", "status", batch_id, "--json")
        assert {r["element"] for r in orjson.loads(out)["records"]} == {"PersonalInfo", "Dependent/Add"}
        code, _, err = cli(capsys, cfg, "batch", "status", "S0000000000000")
        assert code == 1 and "no closed batch" in err
    finally:
        batcher.stop()
    assert len(closed_of(batch_events(env))) == 2


def test_close_says_when_the_batcher_is_not_running(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        send_events(env, [event("S1", n=1)])
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 1)
    finally:
        batcher.stop()
    code, _, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--timeout", "2")
    assert code == 1 and "did not answer" in err and "not running" in err


def test_kafka_not_reachable_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch_cli, "KAFKA_TIMEOUT_S", 2.0)
    cfg = tmp_path / "sevisflow.toml"
    cfg.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:1"\n[school]\norg_id = "ZZZ214F99999000"\n')
    code, _, err = cli(capsys, cfg, "batch", "show")
    assert code == 1 and "not reachable" in err and "127.0.0.1:1" in err
