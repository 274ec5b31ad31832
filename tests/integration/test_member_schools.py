"""Many schools in one deployment on real Kafka: students of two member schools ([[schools]]) flow through the
sevis_events stage and the batcher into two open batches keyed by their own OrgIDs; a student whose school code is
not configured is a dead letter, not an event; school A's DSO closes A's batch only — the CLI refuses A's DSO for
school B, and the batcher refuses it when the CLI is bypassed."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.core.config import settings_toml
from sevisflow.processors.batcher.ids import member_batch_prefix
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, command
from tests.batcher_support import (
    Batcher,
    batch_events,
    batcher_settings,
    cli,
    closed_of,
    records_of,
    send_command,
    setup_topics,
    wait_for,
    write_config,
)
from tests.integration.events_support import decoded, run_events_stage, view

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]
EAST, WEST = "EAS214F10000001", "WES214F20000002"
EAST_DSO, WEST_DSO = "EASTDSO001", "WESTDSO001"
SCHOOLS = [
    {"org_id": EAST, "sis_school": "EAST", "dso_user_ids": [EAST_DSO]},
    {"org_id": WEST, "sis_school": "WEST", "dso_user_ids": [WEST_DSO]},
]


def admit(key: str, n: int, code: str | None) -> dict:
    """A new admit (no SEVIS ID, programme initial) of school ``code``: its first view is a Create."""
    return view(
        key, n, {("student", "sevis_id"): None, ("program", "status"): "initial", ("student", "school_code"): code}
    )


def test_two_member_schools_batch_apart_and_a_dso_closes_only_their_own(kafka_stack, unique, tmp_path, capsys):
    settings = batcher_settings(kafka_stack, unique, schools=SCHOOLS)
    setup_topics(settings)
    views = [admit("E1", 1, "EAST"), admit("E2", 2, "EAST"), admit("W1", 3, "WEST"), admit("N1", 4, "NORTH")]

    def events():
        return decoded(settings, settings.topics.events, "sevisflow.events.SevisEvent")

    def letters():  # the reference student's accented names are name_altered letters: not what is checked here
        dead = decoded(settings, settings.topics.dlq, "sevisflow.dlq.DeadLetter")
        return [d for d in dead if d["code"] != "name_altered"]

    run_events_stage(
        settings, views, "schools", lambda: len(events()) >= 3 and letters(), "the member schools' Creates"
    )
    assert sorted((e["student_key"], e["org_id"]) for e in events()) == [("E1", EAST), ("E2", EAST), ("W1", WEST)]
    dead = letters()
    assert [(d["code"], d["student_key"]) for d in dead] == [("unknown_school", "N1")]
    assert 'sis_school = "NORTH"' in dead[0]["reason"]

    cfg = write_config(settings, tmp_path / "sevisflow.toml")
    cfg.write_text(cfg.read_text() + settings_toml({"schools": SCHOOLS}))
    batcher = Batcher(settings)
    try:
        evs = wait_for(
            settings,
            lambda evs: (
                build_view(EAST, evs).counts()["records"] == 2 and build_view(WEST, evs).counts()["records"] == 1
            ),
            timeout=60,
        )
        assert build_view(ORG, evs).counts()["records"] == 0  # the main school has none of them
        code, out, err = cli(capsys, cfg, "batch", "--org", EAST, "show", "--json")
        assert code == 0, err
        assert sorted(r["student_key"] for r in orjson.loads(out)["records"]) == ["E1", "E2"]
        # the CLI refuses school A's DSO for school B before anything is sent
        code, _, err = cli(capsys, cfg, "batch", "--org", WEST, "close", "--dso", EAST_DSO, "--yes")
        assert code == 1 and f"{EAST_DSO} is not one of the DSOs of member school {WEST}" in err
        code, out, err = cli(capsys, cfg, "batch", "--org", EAST, "close", "--dso", EAST_DSO, "--yes", "--json")
        assert code == 0, err
        closed = orjson.loads(out)
        assert closed["closed_by"] == EAST_DSO and [b["records"] for b in closed["batches"]] == [2]
        # the CLI bypassed: the batcher refuses school A's DSO for school B
        send_command(settings, command("close", "forged-west", org=WEST, dso_user_id=EAST_DSO, at_ms=closed["at_ms"]))
        evs = wait_for(settings, lambda evs: any(e["type"] == "command_rejected" for e in evs))
    finally:
        batcher.stop()
    (refused,) = [e for e in evs if e["type"] == "command_rejected"]
    assert refused["org_id"] == WEST and f"not one of the DSOs of member school {WEST}" in refused["reason"]
    (east_batch,) = closed_of(evs, EAST)
    assert east_batch["closed_by"] == EAST_DSO and east_batch["batch_id"].startswith(member_batch_prefix(EAST))
    assert sorted(r["student_key"] for r in records_of(east_batch)) == ["E1", "E2"]
    assert closed_of(evs, WEST) == [] and closed_of(evs, ORG) == []
    assert build_view(WEST, batch_events(settings)).counts()["records"] == 1  # B's batch stays open
