"""``sevisflow audit student|batch`` against a real Kafka holding the synthetic scenario."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.app.cli import main
from testkit.audit_scenario import BATCH_1, BATCH_2, DSO, OTHER, STUDENT
from tests.audit_scenario import load_scenario, scenario_config

pytestmark = pytest.mark.integration


def test_audit_student_and_batch(kafka_stack, unique, tmp_path, capsys):
    load_scenario(kafka_stack, unique)
    cfg = scenario_config(tmp_path, kafka_stack.bootstrap, unique)

    capsys.readouterr()
    assert main(["--config", str(cfg), "audit", "student", STUDENT]) == 0
    text = capsys.readouterr().out
    for needle in (
        "record replaced",
        "record held",
        "record released",
        f"closed into batch {BATCH_1}",
        "failure S1056",
        f"closed into batch {BATCH_2}",
        f"{BATCH_2} request 4.{STUDENT}: success",
        "DSO command hold",
        f"DSO command close of batch {BATCH_1} by {DSO}",
    ):
        assert needle in text, needle
    assert "Exampel" not in text and OTHER not in text

    assert main(["--config", str(cfg), "audit", "student", STUDENT, "--json"]) == 0
    tl = orjson.loads(capsys.readouterr().out)
    assert tl["batches"] == [BATCH_1, BATCH_2] and tl["unreported_changes"] == 1

    assert main(["--config", str(cfg), "audit", "batch", BATCH_1]) == 0
    text = capsys.readouterr().out
    assert f"closed by     {DSO}" in text and "1 success, 1 failure, 0 pending" in text
    assert "failure S1056" in text

    assert main(["--config", str(cfg), "audit", "batch", "S0000000000000"]) == 1
    assert "no 'closed' event" in capsys.readouterr().err
