"""Operating `sevisflow run` and the stages: start-up and progress lines at the default log level, a
crash logged with its traceback but without the record it was processing, one stage's bad setting
named with its stage and key before anything starts, and the path without a SEVIS upload.

Stage functions are this module's small functions wired in through the runner's stage table
(``runner.STAGES``, the same import path a real stage takes); the CLI runs in-process.
"""

from __future__ import annotations

import io
import logging
import time

import orjson
import pytest

from sevisflow.app import runner
from sevisflow.app.cli import main
from sevisflow.core import log as sflog
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.observability import (
    ProgressReporter,
    RateLimit,
    progress_interval,
    set_progress_interval,
    tally,
)
from tests.helpers import TEST_ORG_ID

# a record a stage was processing when it broke: none of it may reach a log line or the terminal
RECORD = {
    "student_key": "S00000042",
    "given_name": "Zenobia",
    "surname": "Quixley",
    "birth_date": "2001-02-03",
    "passport_number": "X98765432",
}
PII = ("Zenobia", "Quixley", "2001-02-03", "X98765432")
STARTED: list[str] = []


def _parse_passport(record: dict) -> int:
    return int(record["passport_number"])  # ValueError: the message quotes the passport number


def _handle(record: dict) -> None:
    try:
        _parse_passport(record)
    except ValueError as exc:
        raise RuntimeError(f"cannot convert {record}") from exc


def crashing_stage(settings, stop) -> None:
    STARTED.append("crashing")
    _handle(RECORD)


def idle_stage(settings, stop) -> None:
    STARTED.append("idle")
    stop.wait(30)


def quick_stage(settings, stop) -> None:
    STARTED.append("quick")


def misconfigured_stage(settings, stop) -> None:
    from sevisflow.core.errors import ConfigError

    raise ConfigError("school.mapping_file = /nowhere/mapping.toml: no such file; point it at the SIS mapping")


def _lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A settings file of a school; no SEVISFLOW_* variable of the caller's shell counts."""
    import os

    for key in [k for k in os.environ if k.startswith("SEVISFLOW_")]:
        monkeypatch.delenv(key)
    path = tmp_path / "sevisflow.toml"
    path.write_text(
        f'[school]\norg_id = "{TEST_ORG_ID}"\n[metrics]\nport = 0\n'
        f'[sevis]\nclient_cert = "{tmp_path}/no-such-cert.pem"\n'
    )
    path.chmod(0o600)
    STARTED.clear()
    return path


def _wire(monkeypatch, **stages: str) -> None:
    for name, fn in stages.items():
        monkeypatch.setitem(runner.STAGES, name, f"tests.unit.test_run_operations:{fn}")


def test_status_lines_show_at_the_default_level_and_only_they(monkeypatch):
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(sflog.JsonFormatter())
    root = logging.getLogger()
    old = root.level
    sflog.configure("WARNING")  # the CLI's default (the first call installs the JSON handler)
    root.addHandler(handler)
    try:
        sflog.get_status_logger().info("pipeline.starting", stages=["normalize"])
        sflog.get_logger("sevisflow.x").info("chatty.detail")
        sflog.configure("ERROR")  # asked for quiet: no status lines either
        sflog.get_status_logger().info("progress")
    finally:
        root.removeHandler(handler)
        sflog.configure(logging.getLevelName(old))
    events = [e["event"] for e in _lines(buf.getvalue())]
    assert events == ["pipeline.starting"]


def test_progress_lines_are_rate_limited():
    now = [0.0]
    limit = RateLimit(10.0, clock=lambda: now[0])
    fired = []
    for step in range(200):  # work reporting every 0.5 s for 100 s
        now[0] = step * 0.5
        fired.append(limit.due())
    assert sum(fired) == 10 and fired[0]  # the first at once, then one per 10 s


def test_the_progress_line_gives_records_rate_and_lag_per_stage():
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(sflog.JsonFormatter())
    status = logging.getLogger(sflog.STATUS_LOGGER)
    status.addHandler(handler)
    old_level, old_interval = status.level, progress_interval()
    status.setLevel(logging.INFO)
    set_progress_interval(0.3)
    reporter = ProgressReporter(["ops-test-stage"]).start()
    try:
        for _ in range(12):
            tally("ops-test-stage").add(records_in=10, records_out=5)
            tally("ops-test-stage").set(lag=3, partitions=2)
            time.sleep(0.1)
    finally:
        reporter.stop()
        status.removeHandler(handler)
        status.setLevel(old_level)
        set_progress_interval(old_interval)
    lines = [e for e in _lines(buf.getvalue()) if e["event"] == "progress"]
    assert 2 <= len(lines) <= 5, lines  # ~1.2 s at one line per 0.3 s: not one per record
    last = lines[-1]["stages"]["ops-test-stage"]
    assert last["lag"] == 3 and last["partitions"] == 2 and last["records_in"] >= 30
    assert last["records_in_per_s"] > 0 and "records_out_per_s" in last


def test_a_crashing_stage_logs_its_traceback_but_not_the_record(config, monkeypatch, capsys):
    _wire(monkeypatch, normalize="crashing_stage", events="idle_stage")
    started = time.monotonic()
    assert main(["--config", str(config), "run", "--stages", "normalize,events"]) == 1
    assert time.monotonic() - started < 20, "the idle stage was not stopped"
    err = capsys.readouterr().err
    for value in PII:
        assert value not in err, f"{value} reached the output"
    lines = _lines(err)
    failed = [e for e in lines if e["event"] == "stage.failed"]
    assert len(failed) == 1 and failed[0]["stage"] == "normalize" and failed[0]["error"] == "RuntimeError"
    tb = failed[0]["traceback"]
    # where it broke, both exceptions of the chain, in order: enough for a bug report
    assert tb.index("in _parse_passport") < tb.index("direct cause") < tb.index("in crashing_stage")
    assert "ValueError (message left out" in tb and "RuntimeError (message left out" in tb
    assert "test_run_operations.py" in tb
    stopping = [e for e in lines if e["event"] == "pipeline.stopping"]
    assert stopping and stopping[0]["stopping"] == ["events"]
    assert (
        "sevisflow: error: stage normalize failed: RuntimeError (traceback in the stage.failed log line); "
        "stopped the other stages too: events"
    ) in err


def test_the_json_formatter_logs_an_exception_without_its_message():
    try:
        _handle(RECORD)
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "stage.crashed", None, exc_info=True)
        import sys

        record.exc_info = sys.exc_info()
    line = orjson.loads(sflog.JsonFormatter().format(record))
    assert line["error"] == "RuntimeError" and "in _parse_passport" in line["traceback"]
    assert not any(v in orjson.dumps(line).decode() for v in PII)


def test_a_stage_setting_error_names_stage_and_key_and_starts_nothing(config, monkeypatch, capsys):
    _wire(
        monkeypatch,
        connector="quick_stage",
        normalize="quick_stage",
        events="quick_stage",
        batcher="quick_stage",
        **{"sink-xml": "quick_stage"},
    )
    assert main(["--config", str(config), "run"]) == 1
    err = capsys.readouterr().err
    assert STARTED == [], "a stage was started although another one's setting is wrong"
    msg = err.strip().splitlines()[-1]
    assert msg.startswith("sevisflow: error: stage sink-sevis: ") and "[sevis] client_cert" in msg
    assert "no stage was started" in msg and "sevisflow run --skip sink-sevis" in msg


def test_skip_sink_sevis_runs_the_rest_without_a_certificate_and_says_what_runs(config, monkeypatch, capsys):
    _wire(
        monkeypatch,
        connector="quick_stage",
        normalize="quick_stage",
        events="quick_stage",
        batcher="quick_stage",
        **{"sink-xml": "quick_stage"},
    )
    assert main(["--config", str(config), "run", "--skip", "sink-sevis"]) == 0
    lines = _lines(capsys.readouterr().err)
    assert STARTED == ["quick"] * 5
    starting = [e for e in lines if e["event"] == "pipeline.starting"]
    assert starting and starting[0]["stages"] == ["connector", "normalize", "events", "batcher", "sink-xml"]
    assert starting[0]["metrics"].startswith("off")
    started = {e["stage"]: e["role"] for e in lines if e["event"] == "stage.started"}
    assert list(started) == starting[0]["stages"] and "outbox" in started["sink-xml"]


def test_stage_names_validate_and_keep_pipeline_order():
    from sevisflow.app.cli.run import stage_names
    from sevisflow.core.errors import SevisflowError

    assert stage_names("sink-xml,connector", "") == ["connector", "sink-xml"]
    assert "sink-sevis" not in stage_names(",".join(runner.STAGES), "sink-sevis")
    with pytest.raises(SevisflowError, match="unknown stage 'sink_sevis'"):
        stage_names("connector", "sink_sevis")
    with pytest.raises(SevisflowError, match="no stage left"):
        stage_names("sink-sevis", "sink-sevis")


def test_progress_interval_is_a_checked_setting():
    from sevisflow.core.errors import ConfigError

    assert settings_from_mapping({"metrics": {"progress_interval_s": 5}}, env={}).metrics.progress_interval_s == 5
    with pytest.raises(ConfigError, match=r"metrics\.progress_interval_s"):
        settings_from_mapping({"metrics": {"progress_interval_s": 0}}, env={})


def test_a_caller_that_narrates_itself_can_turn_the_status_lines_off(config, monkeypatch, capsys):
    from sevisflow.core.config import load_settings
    from sevisflow.core.observability import progress_lines

    sflog.configure("WARNING")
    p = runner.Pipeline(
        load_settings(str(config)),
        ["normalize"],
        functions={"normalize": quick_stage},
        serve_metrics=False,
        status_lines=False,
    ).start()
    try:
        assert not progress_lines()  # the connector's snapshot lines are off too
    finally:
        p.stop(5)
        runner.set_progress_lines(True)
    assert STARTED == ["quick"]
    assert not [e for e in _lines(capsys.readouterr().err) if e.get("logger") == sflog.STATUS_LOGGER]


def test_a_setting_error_inside_a_running_stage_names_stage_key_and_the_stopped_ones(config, monkeypatch, capsys):
    _wire(monkeypatch, normalize="misconfigured_stage", events="idle_stage", batcher="idle_stage")
    assert main(["--config", str(config), "run", "--stages", "normalize,events,batcher"]) == 1
    err = capsys.readouterr().err
    failed = next(e for e in _lines(err) if e["event"] == "stage.failed")
    assert failed["detail"].startswith("school.mapping_file = /nowhere/mapping.toml")  # a setting's message is kept
    assert err.strip().splitlines()[-1] == (
        "sevisflow: error: stage normalize failed: ConfigError: school.mapping_file = /nowhere/mapping.toml: "
        "no such file; point it at the SIS mapping; stopped the other stages too: events, batcher"
    )
