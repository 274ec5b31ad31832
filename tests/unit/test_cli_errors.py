"""Every way a user can get the configuration or the command line wrong ends in a message that names the fix:
exit 1 for a bad setting, 64 for a usage error — never 2 (a bug) with a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sevisflow.app.cli import EXIT_EXPECTED, EXIT_USAGE, main
from sevisflow.core.config import KafkaSettings, Secret, load_settings, settings_from_mapping
from sevisflow.core.errors import ConfigError
from sevisflow.core.kafka_io import make_producer
from sevisflow.core.observability import ObservabilityServer


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_a_config_file_that_is_not_utf8_names_the_byte_and_the_fix(tmp_path, capsys):
    cfg = tmp_path / "sevisflow.toml"
    cfg.write_bytes(b'[school]\norg_id = "ABC214F12345000"\n# caf\xe9\n')
    code, err = _run(capsys, "--config", str(cfg), "batch", "show")
    assert code == EXIT_EXPECTED
    assert "not UTF-8" in err and "0xe9" in err and "save the file as UTF-8" in err


def test_a_config_path_that_is_a_folder_says_so(tmp_path, capsys):
    code, err = _run(capsys, "--config", str(tmp_path), "batch", "show")
    assert code == EXIT_EXPECTED and "is a folder, not a settings file" in err


def test_an_unknown_time_zone_is_refused_when_the_config_loads(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[school]\norg_id = "ABC214F12345000"\ntimezone = "America/Chicag"\n')
    code, err = _run(capsys, "--config", str(cfg), "batch", "show")
    assert code == EXIT_EXPECTED and "'America/Chicag' is not a known time zone" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "LOUD", "batch", "show"],
        ["batch", "shwo"],
        ["batch", "close", "--no-such-flag"],
        ["config", "--nope"],
    ],
)
def test_usage_errors_have_their_own_exit_code(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"postgres": {"port": 70000}}, "postgres.port = 70000 is not a TCP port"),
        ({"metrics": {"port": -1}}, "metrics.port = -1 is not a TCP port"),
        ({"kafka": {"partitions": 0}}, "kafka.partitions = 0: must be at least 1"),
        ({"kafka": {"replication_factor": 1, "min_insync_replicas": 2}}, "no write could ever succeed"),
        ({"school": {"close_at": "5pm"}}, "use local HH:MM"),
    ],
)
def test_values_are_checked_when_the_config_loads(raw, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(raw, env={})


def test_a_file_secret_must_exist_when_the_config_loads(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[kafka]\nsasl_password = "file:{tmp_path}/missing"\n')
    with pytest.raises(ConfigError, match=r"kafka.sasl_password names the secret file .*missing, which does not exist"):
        load_settings(cfg, env={})
    (tmp_path / "missing").write_text("s3cret\n")
    (tmp_path / "missing").chmod(0o600)
    assert load_settings(cfg, env={}).kafka.sasl_password.reveal() == "s3cret"


def test_a_metrics_port_in_use_is_a_clear_error():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"metrics.port {port} on 127.0.0.1: cannot listen .* pick a free port"):
            ObservabilityServer(port=port, host="127.0.0.1").start()


def test_a_wrong_ssl_key_password_is_a_config_error_naming_the_setting(tmp_path: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"the-right-password"),
    )
    (tmp_path / "client.key").write_bytes(pem)
    kafka = KafkaSettings(
        security_protocol="SSL",
        ssl_key_location=str(tmp_path / "client.key"),
        ssl_key_password=Secret("a-wrong-password"),
    )
    with pytest.raises(ConfigError, match=r"the Kafka client refused its settings: .*check kafka.ssl_key_password"):
        make_producer(kafka)
