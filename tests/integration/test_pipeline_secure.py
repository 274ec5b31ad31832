"""The whole pipeline against a Kafka that requires TLS (client certificate) and SASL/SCRAM-SHA-512
and authorizes every request (StandardAuthorizer, the ACLs of sevisflow/core/acls.py).

PostgreSQL (a small reference school) → connector → normalize → sevis_events → batcher, in one
process (``runner.Pipeline``) but each stage with its own principal and nothing but its ACLs — the
least-privilege deployment, one identity per stage — every client configured only through sevisflow
settings; the secrets are given as literal values (the hardest case for masking: no ``file:``
indirection). A few SIS transactions, then a close with ``sevisflow batch close`` as the DSO principal. The closed
batch must be what the pure pipeline + pure batcher close for the same school and activity, and
neither the SASL password nor the client-key password may appear in the JSON logs of the run
(DEBUG, every logger) or in what ``sevisflow config`` prints.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from sevisflow.app.cli import main
from sevisflow.app.cli.batch import load_view
from sevisflow.app.runner import Pipeline, stage_function
from sevisflow.core.acls import principals
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.kafka_io import ensure_topics
from sevisflow.core.topics import all_topics
from sevisflow.deploy.local.stack import apply_stack_acls
from sevisflow.deploy.sis.activity import generate_activity
from sevisflow.deploy.sis.generator import generate_school
from sevisflow.deploy.sis.load import create_schema, load_school, play_activity
from tests.helpers import captured_logs, count, settled, wait_for
from tests.pipeline_support import (
    DSO,
    close_with_cli,
    compare_with_pure,
    decoded,
    expected_outcome,
    pipeline_raw,
    write_config,
)
from tests.school_replay import TODAY

pytestmark = pytest.mark.integration
STAGES = ["connector", "normalize", "events", "batcher"]

STUDENTS, SHARE, SEED, ACTIVITY = 40, 0.5, 7, 15
SECRET_KEYS = {"sasl_password": "SEVISFLOW_KAFKA_SASL_PASSWORD", "ssl_key_password": "SEVISFLOW_KAFKA_SSL_KEY_PASSWORD"}


def test_pipeline_over_tls_and_sasl_closes_the_expected_batch_and_leaks_no_secret(
    secure_stack, fresh_db, unique, tmp_path, capsys, monkeypatch
):
    assert secure_stack.kafka is not None
    kafka = dict(secure_stack.kafka.kafka_settings())
    assert kafka["security_protocol"] == "SASL_SSL"
    # the secrets as literal values in the environment; the settings file holds none
    secrets = {key: Path(kafka.pop(key)[len("file:") :]).read_text().strip() for key in SECRET_KEYS}
    assert all(len(v) >= 8 for v in secrets.values())
    for key, var in SECRET_KEYS.items():
        monkeypatch.setenv(var, secrets[key])
    raw = pipeline_raw(kafka, fresh_db, unique, tmp_path)
    raw["school"].setdefault("dso_user_ids", [DSO])  # the batcher applies commands of the school's DSOs only
    config = write_config(raw, tmp_path / "sevisflow.toml")
    settings = settings_from_mapping(raw, env={var: secrets[key] for key, var in SECRET_KEYS.items()})
    t = settings.topics

    def as_principal(user: str) -> tuple[dict, dict[str, str]]:
        """(raw settings of ``user`` without its secrets, its secrets as literal env values)."""
        own = dict(secure_stack.kafka.kafka_settings(user))
        env = {var: Path(own.pop(key)[len("file:") :]).read_text().strip() for key, var in SECRET_KEYS.items()}
        return dict(raw, kafka=own), env

    # least privilege: every stage with its own principal; the ACLs of this test's topic names applied
    stage_settings = {}
    for name in STAGES:
        user_raw, user_env = as_principal(principals(settings)[name][0])
        stage_settings[name] = settings_from_mapping(user_raw, env=user_env)
        secrets[f"{name} sasl_password"] = user_env[SECRET_KEYS["sasl_password"]]
    dso_raw, dso_env = as_principal(principals(settings)["dso"][0])
    secrets["dso sasl_password"] = dso_env[SECRET_KEYS["sasl_password"]]
    dso_config = write_config(dso_raw, tmp_path / "dso.toml")
    functions = {name: (lambda _s, stop, n=name: stage_function(n)(stage_settings[n], stop)) for name in STAGES}

    create_schema(fresh_db.dsn)
    school = generate_school(STUDENTS, SHARE, SEED, TODAY)
    load_school(fresh_db.dsn, school)
    activity = generate_activity(school, ACTIVITY, SEED, TODAY)
    expected_events, expected_records, snapshot_creates = expected_outcome(
        settings.school.org_id, int(time.time() * 1000), STUDENTS, SHARE, SEED, ACTIVITY
    )
    assert expected_records, "the activity must leave records to close"

    started = time.monotonic()
    with captured_logs() as logs:
        capsys.readouterr()
        assert main(["--config", str(config), "--log-level", "DEBUG", "config"]) == 0
        printed = capsys.readouterr()
        ensure_topics(settings.kafka, all_topics(settings))  # the operator (a super user) makes the topics
        apply_stack_acls(secure_stack, settings)
        pipeline = Pipeline(
            settings, STAGES, serve_metrics=False, functions=functions, restart_base_s=1.0, restart_max_s=5.0
        ).start()
        try:
            wait_for("the snapshot's student views", settled(lambda: count(settings, t.students), 2.0), 90, pipeline)
            play_activity(fresh_db.dsn, activity)
            wait_for(
                f"all {len(expected_events)} SEVIS events",
                settled(lambda: count(settings, t.events), 2.0, len(expected_events)),
                90,
                pipeline,
            )
            want = {r["record_id"] for r in expected_records}
            wait_for(
                "the open batch to hold every expected record",
                lambda: (
                    want
                    <= {
                        r["record_id"]
                        for r in load_view(settings, settings.school.org_id).open_records()
                        if r["status"] == "open"
                    }
                ),
                60,
                pipeline,
            )
            for var, value in dso_env.items():  # the DSO's own credentials, literal values
                monkeypatch.setenv(var, value)
            batch_ids = close_with_cli(dso_config, capsys)
        finally:
            failed = pipeline.stop(60)
        assert not failed, [(f.name, type(f.error).__name__) for f in failed]
        restarts = pipeline.restarts()
    took = time.monotonic() - started

    events = decoded(settings, t.events)
    closed = [e for e in decoded(settings, t.batches) if e["type"] == "closed"]
    assert [e["batch_id"] for e in closed] == batch_ids
    records = [r for e in closed for r in orjson.loads(e["records_json"])]
    report = compare_with_pure(events, records, expected_events, expected_records, snapshot_creates)
    print(f"secure pipeline: {len(records)} records closed in {took:.1f}s, restarts {restarts}, {report}")
    assert report["ok"], report

    text = logs.getvalue()
    assert '"stage.started"' in text and "sasl" in (text + printed.out).lower()
    assert "****" in printed.out, "sevisflow config should show the secrets masked"
    for name, secret in secrets.items():
        assert secret not in text, f"the {name} appears in the logs"
        assert secret not in printed.out and secret not in printed.err, f"the {name} appears in `sevisflow config`"
        assert secret not in repr(settings) and secret not in str(settings.masked())
        assert secret not in config.read_text()
