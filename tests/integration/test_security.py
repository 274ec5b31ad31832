"""A local Kafka that requires TLS (client certificates from the stack's CA) and SASL/SCRAM-SHA-512.

The session's secure broker (``secure_stack``) also runs the StandardAuthorizer; these tests use its
operator principal (a super user). What each other principal may do is tests/integration/test_acls.py.

Everything goes through sevisflow.core.config and sevisflow.core.kafka_io, the way a stage reaches
a production cluster: settings from SEVISFLOW_* variables (as ``sevisflow stack up --secure``
writes them), topics applied, records produced and read, and an exactly-once
``TransactionalLoop`` run. The secrets (SASL password, client-key password) must never show
up in printed config, in ``repr``, in the stack's saved files, or in the logs — librdkafka's
own debug output included.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from sevisflow.app.cli import main
from sevisflow.core.config import Settings, settings_from_mapping
from sevisflow.core.kafka_io import (
    Output,
    TopicSpec,
    TransactionalLoop,
    client_config,
    ensure_topics,
    make_producer,
    read_topic,
)
from sevisflow.deploy.local.stack import StackInfo
from tests.helpers import captured_logs

pytestmark = pytest.mark.integration


def _secrets(info: StackInfo) -> list[str]:
    assert info.kafka is not None
    tls = Path(info.kafka.tls_dir)
    return [Path(info.kafka.sasl_password_file).read_text().strip(), (tls / "client.key.password").read_text().strip()]


def _env(info: StackInfo, literal: bool = False) -> dict[str, str]:
    """The stack's SEVISFLOW_* variables; with ``literal`` the secrets are put in as values, not file: refs."""
    env = dict(info.env())
    if literal:
        for key in ("SEVISFLOW_KAFKA_SASL_PASSWORD", "SEVISFLOW_KAFKA_SSL_KEY_PASSWORD"):
            env[key] = Path(env[key][len("file:") :]).read_text().strip()
    return env


def _settings(info: StackInfo, literal: bool = False) -> Settings:
    return settings_from_mapping({}, env=_env(info, literal))


def test_stack_writes_no_secret_and_requires_tls_and_sasl(secure_stack):
    env = secure_stack.env()
    assert env["SEVISFLOW_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["SEVISFLOW_KAFKA_SASL_PASSWORD"].startswith("file:")
    saved = (Path(secure_stack.base) / "stack.json").read_text()
    for secret in _secrets(secure_stack):
        assert secret not in saved and secret not in repr(env)
    for name in ("sasl.password", "client.key.password", "client.key", "broker.pem"):
        assert (Path(secure_stack.kafka.tls_dir) / name).stat().st_mode & 0o077 == 0, name
    # one SCRAM user per principal of the ACL model: passwords and env files 0600, never in stack.json
    files = secure_stack.kafka.principal_password_files
    assert len(files) >= 8
    envs = sorted(Path(secure_stack.extra["principals_dir"]).glob("*.env"))
    assert {p.stem for p in envs} == set(files)
    for path in [Path(f) for f in files.values()] + envs:
        assert path.stat().st_mode & 0o077 == 0, path
    for path in files.values():
        assert Path(path).read_text().strip() not in saved
    dso_env = (Path(secure_stack.extra["principals_dir"]) / "sevisflow-dso.env").read_text()
    assert "SEVISFLOW_KAFKA_SASL_USERNAME=sevisflow-dso" in dso_env and "SASL_PASSWORD=file:" in dso_env


def _metadata_error(conf: dict[str, object]) -> str | None:
    """None when ``conf`` can read cluster metadata within a few seconds, else the error seen."""
    errors: list[str] = []
    admin = AdminClient(
        {
            **conf,
            "error_cb": lambda e: errors.append(e.str()),
            "log_level": 0,
            "logger": logging.getLogger("test.quiet"),
        }
    )
    try:
        admin.list_topics(timeout=3)
        return None
    except Exception as exc:  # noqa: BLE001 - the point is that it fails
        return "; ".join(errors) or str(exc)


def test_plaintext_wrong_password_and_no_client_cert_are_refused(secure_stack):
    settings = _settings(secure_stack)
    good = client_config(settings.kafka)
    good.pop("logger")
    assert _metadata_error(good) is None
    assert _metadata_error({"bootstrap.servers": settings.kafka.bootstrap_servers}) is not None
    assert _metadata_error({**good, "sasl.password": "not-the-password"}) is not None
    no_cert = {
        k: v for k, v in good.items() if k not in ("ssl.certificate.location", "ssl.key.location", "ssl.key.password")
    }
    assert _metadata_error(no_cert) is not None


def test_topics_produce_consume_and_transactional_loop_over_sasl_ssl(secure_stack, unique, capsys, monkeypatch):
    settings = _settings(secure_stack, literal=True)
    kafka = settings.kafka
    inp, out, state, group = f"sec.in.{unique}", f"sec.out.{unique}", f"sec.state.{unique}", f"sec-{unique}"
    secrets = _secrets(secure_stack)
    with captured_logs() as logs:
        # the CLI, with the secrets given as literal environment values: config print, topics as code
        for key, value in _env(secure_stack, literal=True).items():
            monkeypatch.setenv(key, value)
        for name, default in [
            ("students", "sevisflow.students"),
            ("events", "sevis.events"),
            ("commands", "sevis.batch.commands"),
            ("batches", "sevis.batches"),
            ("results", "sevis.results"),
            ("dlq", "sevisflow.dlq"),
        ]:
            monkeypatch.setenv(f"SEVISFLOW_TOPICS_{name.upper()}", f"{default}.{unique}")
        assert main(["--log-level", "DEBUG", "config"]) == 0
        assert main(["--log-level", "DEBUG", "topics", "apply", "--pipeline-only"]) == 0
        assert main(["--log-level", "DEBUG", "topics", "apply", "--pipeline-only", "--dry-run"]) == 0

        ensure_topics(
            kafka, [TopicSpec(inp, 2, 1), TopicSpec(out, 2, 1), TopicSpec(state, 2, 1, {"cleanup.policy": "compact"})]
        )
        producer = make_producer(kafka, debug="security,broker,conf")
        keys = [f"k{i}".encode() for i in range(10)]
        for i in range(200):
            producer.produce(inp, key=keys[i % 10], value=f"m{i}".encode())
        assert producer.flush(30) == 0

        def handler(msg, st):
            n = int(st.get(msg.partition(), msg.key()) or b"0") + 1
            st.put(msg.partition(), msg.key(), str(n).encode())
            yield Output(out, msg.key(), msg.value() + b"#" + str(n).encode())

        loop = TransactionalLoop(kafka, group, [inp], handler, transactional_id=f"{group}-0", state_topic=state)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                loop.run()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while loop.processed < 200 and time.monotonic() < deadline and not errors:
            time.sleep(0.2)
        loop.stop()
        worker.join(30)
        assert not errors, errors
        outputs = list(read_topic(kafka, out))
    printed = capsys.readouterr()
    values = Counter(m.value().split(b"#")[0] for m in outputs)
    assert len(outputs) == 200 and all(n == 1 for n in values.values())
    assert "****" in printed.out, "the config print should show masked secrets"
    text = logs.getvalue() + printed.out + printed.err + repr(settings) + str(settings.masked())
    assert "sasl" in logs.getvalue().lower(), "librdkafka's debug output should have been captured"
    for secret in secrets:
        assert secret not in text, "a secret leaked into printed config or logs"


@pytest.mark.usefixtures("no_log_handler_swap")
def test_a_refused_sasl_login_and_a_wrong_key_password_are_named_as_such(secure_stack, tmp_path, capsys, monkeypatch):
    """Exit 1 with what is wrong and which setting to fix — not "Kafka unreachable", not a traceback."""
    cfg = tmp_path / "sevisflow.toml"
    cfg.write_text('[school]\norg_id = "ABC214F12345000"\n')
    for key, value in _env(secure_stack, literal=True).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SEVISFLOW_KAFKA_SASL_PASSWORD", "not-the-password")
    code = main(["--config", str(cfg), "batch", "list"])
    err = capsys.readouterr().err
    assert code == 1 and "refused the login of SASL user" in err and "kafka.sasl_password" in err, err
    assert "not-the-password" not in err and "Traceback" not in err
    monkeypatch.setenv(
        "SEVISFLOW_KAFKA_SASL_PASSWORD", _env(secure_stack, literal=True)["SEVISFLOW_KAFKA_SASL_PASSWORD"]
    )
    monkeypatch.setenv("SEVISFLOW_KAFKA_SSL_KEY_PASSWORD", "wrong-key-password")
    code = main(["--config", str(cfg), "batch", "list"])
    err = capsys.readouterr().err
    assert code == 1 and "check kafka.ssl_key_password" in err and "wrong-key-password" not in err, err
