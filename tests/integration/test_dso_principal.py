"""The DSO's Kafka principal, end to end on a broker that authenticates (TLS + SASL/SCRAM) and authorizes every
request: the CLI puts the principal it logged in as into the command, and the batcher (school.dso_principals)
applies a DSO command only when that principal is mapped to the command's SEVIS user id."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from sevisflow.core.acls import principals
from sevisflow.core.config import settings_from_mapping, settings_toml
from sevisflow.core.kafka_io import ensure_topics
from sevisflow.core.topics import all_topics
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, command, event
from tests.batcher_support import Batcher, batch_events, cli, closed_of, send_command, send_events, wait_for
from tests.helpers import XSD_DIR, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]
DSO, OTHER = "DSOUSER001", "DSOUSER002"


def test_a_dso_command_is_applied_only_for_the_user_id_its_principal_is_mapped_to(
    secure_stack, unique, tmp_path, capsys
):
    import time

    from sevisflow.deploy.local.stack import apply_stack_acls

    assert secure_stack.kafka is not None
    topics = dataclasses.asdict(make_settings(unique=unique).topics)
    base = {
        "school": {"org_id": ORG, "timezone": "America/Chicago", "dso_user_ids": [DSO, OTHER]},
        "sevis": {"xsd_dir": str(XSD_DIR)},
        "topics": topics,
    }
    plain = settings_from_mapping(dict(base, kafka=secure_stack.kafka.kafka_settings()), env={})
    dso_principal = principals(plain)["dso"][0]
    # the batcher's settings: the DSO principal may act as DSOUSER001 only
    raw = dict(
        base,
        kafka=secure_stack.kafka.kafka_settings(),
        school=dict(base["school"], dso_principals=[f"User:{dso_principal}={DSO}"]),
    )
    settings = settings_from_mapping(raw, env={})
    ensure_topics(settings.kafka, all_topics(settings))
    apply_stack_acls(secure_stack, settings)
    # the DSO's own settings: its own SASL user (the CLI sends "User:<that name>" as the principal)
    dso_cfg = tmp_path / "dso.toml"
    dso_cfg.write_text(settings_toml(dict(base, kafka=secure_stack.kafka.kafka_settings(dso_principal))))

    batcher = Batcher(settings)
    try:
        send_events(settings, [event("S1", n=1), event("S2", n=2)])
        wait_for(settings, lambda evs: build_view(ORG, evs).counts()["ready"] == 2, timeout=90)
        # a DSO of the school, but not the one this principal is mapped to
        code, _, err = cli(capsys, dso_cfg, "batch", "close", "--dso", OTHER, "--yes", "--json")
        assert code == 1 and f"principal 'User:{dso_principal}' acts as {DSO}, not as '{OTHER}'" in err, err
        # a command without a principal (written by a tool that is not sevisflow's CLI)
        send_command(settings, command("close", "no-principal", dso_user_id=DSO, at_ms=int(time.time() * 1000)))
        wait_for(
            settings,
            lambda evs: any(
                e["type"] == "command_rejected"
                and e["command_id"] == "no-principal"
                and "no authenticated principal" in e["reason"]
                for e in evs
            ),
            timeout=60,
        )
        assert closed_of(batch_events(settings)) == []
        code, out, err = cli(capsys, dso_cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0, err
        assert orjson.loads(out)["batches"][0]["records"] == 2
    finally:
        batcher.stop()
