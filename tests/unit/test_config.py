"""The settings object: file + environment, strict about keys and types, secrets masked."""

from __future__ import annotations

import pytest

from sevisflow.core.config import Secret, describe, load_settings, settings_from_mapping
from sevisflow.core.errors import ConfigError


def test_defaults_without_any_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.connector.slot_name == "sevisflow"
    assert s.kafka.security_protocol == "PLAINTEXT"


def test_file_values_and_debezium_aliases(tmp_path):
    f = tmp_path / "sevisflow.toml"
    f.write_text(
        '[connector]\n"slot.name" = "myslot"\n"table.include.list" = "public.a, public.b"\n'
        '[kafka]\nbootstrap_servers = "k:1"\n'
    )
    s = load_settings(f, env={})
    assert s.connector.slot_name == "myslot"
    assert s.connector.table_include_list == ["public.a", "public.b"]
    assert s.kafka.bootstrap_servers == "k:1"


def test_environment_overrides_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[postgres]\nport = 5433\n")
    s = load_settings(
        f, env={"SEVISFLOW_POSTGRES_PORT": "6000", "SEVISFLOW_CONNECTOR_PROVIDE_TRANSACTION_METADATA": "false"}
    )
    assert s.postgres.port == 6000
    assert s.connector.provide_transaction_metadata is False


@pytest.mark.parametrize(
    "toml, key",
    [
        ('[kafka]\nbootstrap_server = "x"\n', "kafka.bootstrap_server"),
        ("[nosuch]\na = 1\n", "[nosuch]"),
        ('[postgres]\nport = "five"\n', "postgres.port"),
        ('[connector]\n"snapshot.mode" = "sometimes"\n', "connector.snapshot.mode"),
        ("[connector]\nheartbeat_interval_ms = true\n", "connector.heartbeat_interval_ms"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path, toml, key):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert key in str(err.value)


def test_unknown_environment_variable_is_rejected():
    with pytest.raises(ConfigError, match="SEVISFLOW_KAFKA_BOOTSTRAP"):
        settings_from_mapping({}, env={"SEVISFLOW_KAFKA_BOOTSTRAP": "x"})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="SEVISFLOW_POSTGRES_PORT"):
        settings_from_mapping({}, env={"SEVISFLOW_POSTGRES_PORT": "lots"})


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_secrets_are_masked_everywhere(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\nsasl_password = "hunter2"\n[postgres]\npassword = "pgpass"\n')
    s = load_settings(f, env={})
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.masked())
    assert "pgpass" not in repr(s.postgres)
    assert s.kafka.sasl_password.reveal() == "hunter2"
    assert "password=pgpass" in s.postgres.conninfo()


def test_secret_from_file(tmp_path):
    p = tmp_path / "pw"
    p.write_text("from-file\n")
    assert Secret(f"file:{p}").reveal() == "from-file"
    assert str(Secret(f"file:{p}")) == "****"


def test_every_setting_is_documented():
    rows = describe()
    assert len(rows) > 30
    assert all(help_text for _, _, help_text in rows)


def test_example_file_uncommented_gives_the_defaults():
    import re

    from sevisflow.core.config import Settings, example_toml

    text = re.sub(r"(?m)^# (\w+ = )", r"\1", example_toml())
    assert settings_from_mapping(__import__("tomllib").loads(text), env={}) == Settings()


def test_committed_example_is_current():
    from pathlib import Path

    from sevisflow.core.config import example_toml

    committed = Path(__file__).resolve().parents[2] / "sevisflow.example.toml"
    assert committed.read_text() == example_toml(), "regenerate: sevisflow config --example > sevisflow.example.toml"


@pytest.mark.parametrize("toml", ["[connector]\nmetrics_port = 9400\n", '[connector]\n"metrics.port" = 9400\n'])
def test_connector_metrics_port_moved_to_the_metrics_section(tmp_path, toml):
    f = tmp_path / "old.toml"
    f.write_text(toml)
    with pytest.raises(
        ConfigError,
        match=r"connector\.metrics[._]port is no longer a setting: use \[metrics\] port "
        r"instead \(env SEVISFLOW_METRICS_PORT\)",
    ):
        load_settings(f, env={})
    with pytest.raises(
        ConfigError, match=r"SEVISFLOW_CONNECTOR_METRICS_PORT is no longer a setting: use \[metrics\] port"
    ):
        settings_from_mapping({}, env={"SEVISFLOW_CONNECTOR_METRICS_PORT": "9400"})
    f.write_text("[metrics]\nport = 9400\n")
    assert load_settings(f, env={}).metrics.port == 9400


def test_org_id_has_no_made_up_default_and_a_stage_refuses_to_start_without_it():
    from sevisflow.processors.sevis_events.stage import EventsStage

    s = settings_from_mapping({}, env={})
    assert s.school.org_id == ""
    with pytest.raises(ConfigError, match=r"school.org_id is not set: add org_id = .* under \[school\]"):
        EventsStage(s)
    assert (
        EventsStage(settings_from_mapping({"school": {"org_id": "ABC214F12345000"}}, env={})).org_id
        == "ABC214F12345000"
    )


@pytest.mark.parametrize("org", ["ABC214F12345000", "P-1-12345", "G-7-00001"])
def test_org_id_accepts_school_codes_and_program_numbers(org):
    assert settings_from_mapping({"school": {"org_id": org}}, env={}).school.org_id == org


@pytest.mark.parametrize("org", ["abc214F12345000", "ABC214F1234500", "ABC214M12345000", "P-5-12345", "ZZZ"])
def test_org_id_in_the_wrong_format_is_refused_when_the_config_loads(org):
    with pytest.raises(ConfigError, match="is not a SEVIS OrgID"):
        settings_from_mapping({"school": {"org_id": org}}, env={"SEVISFLOW_SCHOOL_TIMEZONE": "UTC"})
    with pytest.raises(ConfigError, match="is not a SEVIS OrgID"):
        settings_from_mapping({}, env={"SEVISFLOW_SCHOOL_ORG_ID": org})


@pytest.mark.parametrize("value", [-1, 60_001])
def test_commit_interval_out_of_range_is_refused_with_its_name(value):
    from sevisflow.core.config import KafkaSettings

    with pytest.raises(ConfigError, match=r"kafka\.commit_interval_ms"):
        KafkaSettings(commit_interval_ms=value)
