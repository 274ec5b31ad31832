"""``sevisflow verify <BatchID>`` resumes the batcher re-run from the checkpoint an earlier verify recorded,
on a real Kafka; an altered checkpoint is reported and not used; ``verify --all`` writes checkpoints and
catches a forged one.

The batches are made by the real batcher (:func:`testkit.audit_scenario.batcher_run`) and filed by the XML
sink's own function, as in ``test_verify_scoped.py``. The pure equivalence (every batch, two schools
interleaved) is in ``tests/unit/test_verify_checkpoint.py``; bench/audit measures the time.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import stat

import orjson
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from sevisflow.app.audit.checkpoint import CheckpointStore, decode
from sevisflow.app.cli import main
from sevisflow.core.config import load_settings
from sevisflow.core.ledger import Ledger, LedgerWriter
from sevisflow.core.serde import registry
from testkit.audit_scenario import batcher_run, produce_batcher_run
from tests.audit_scenario import scenario_config
from tests.helpers import XSD_DIR

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (XSD_DIR / "Create-UpdateStudent.xsd").exists(), reason="no SEVIS XSDs"),
]

ROUNDS = 5
ORG = "ZZZ214F99999000"  # batcher_run's school


@pytest.fixture
def world(kafka_stack, unique, tmp_path):
    """Five closed batches on Kafka (events, commands, batches) and in a sealed outbox."""
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema

    cfg = scenario_config(tmp_path, kafka_stack.bootstrap, unique)
    cfg.write_text(cfg.read_text().replace("[sevis]", f'[sevis]\nxsd_dir = "{XSD_DIR}"'))
    settings = load_settings(cfg, env={})
    t = settings.topics
    run = batcher_run(updates=5, creates=1, batches=ROUNDS)
    produce_batcher_run(settings.kafka, t, run)
    outbox = Outbox(settings.sevis.outbox_dir, settings.sevis.quarantine_dir, settings.school.timezone)
    writer = LedgerWriter(Ledger(settings.sevis.outbox_dir), "sink-xml", ORG)
    ids = []
    for _, value, _ in run["batches"]:
        ev = registry().decode(value)
        if ev["type"] == "closed":
            ids.append(ev["batch_id"])
            sink_closed_batch(
                ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), load_schema(XSD_DIR), outbox
            )
            writer.seal_archive(outbox.find(ev["batch_id"]), ev["batch_id"])
    assert len(ids) == ROUNDS
    return {"cfg": cfg, "settings": settings, "ids": ids, "store": CheckpointStore(settings.sevis.outbox_dir)}


def _verify(capsys, cfg, batch_id: str, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["--config", str(cfg), "verify", batch_id, "--json", "--allow-skipped", *extra])
    return code, orjson.loads(capsys.readouterr().out)


def _checks(v: dict) -> dict[str, tuple[str, str]]:
    return {c["check"]: (c["status"], c["message"]) for c in v["checks"]}


def test_each_batch_resumes_from_the_previous_ones_checkpoint_as_from_the_start(world, capsys):
    cfg, ids, store = world["cfg"], world["ids"], world["store"]
    code, v = _verify(capsys, cfg, ids[0])
    assert code == 0 and v["ok"] and v["read"].startswith("read the log up to"), v
    assert "checkpoint written" in v["read"] and store.path_of(ORG, ids[0]).is_file()
    for prev, bid in itertools.pairwise(ids):
        code, resumed = _verify(capsys, cfg, bid)
        assert code == 0 and resumed["ok"], resumed
        assert resumed["read"].startswith(f"resumed the batcher from the checkpoint after batch {prev}"), resumed
        code, fresh = _verify(capsys, cfg, bid, "--from-start")
        assert code == 0 and fresh["ok"] and "--from-start: no checkpoint used" in fresh["read"], fresh
        a, b = _checks(resumed), _checks(fresh)
        assert {k: s for k, (s, _) in a.items()} == {k: s for k, (s, _) in b.items()}
        assert a["render"] == b["render"] and a["archive"] == b["archive"]  # same document, same sha256
        assert a["batching"][0] == "ok" and f"resumed from the checkpoint after batch {prev}" in a["batching"][1]
        assert "from an empty state" in b["batching"][1]
    # the files: 0600 in 0700 folders, one index line per checkpoint written
    for p in [store.index.path, *store.root.rglob("*.json.gz")]:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert {b for _, b in store.latest()} == set(ids)


def test_an_altered_checkpoint_is_reported_and_the_batcher_rerun_from_empty(world, capsys):
    cfg, ids, store = world["cfg"], world["ids"], world["store"]
    assert _verify(capsys, cfg, ids[2])[0] == 0
    path = store.path_of(ORG, ids[2])
    blob = path.read_bytes()
    path.write_bytes(blob[:100] + bytes([blob[100] ^ 0x20]) + blob[101:])
    code, v = _verify(capsys, cfg, ids[3])
    assert code == 0 and v["ok"], v
    assert v["read"].startswith("read the log up to"), v["read"]
    assert f"checkpoint NOT USED: checkpoint of batch {ids[2]}" in v["read"] and "altered or truncated" in v["read"]
    assert "the batcher was re-run from an empty state" in v["read"]
    assert "from an empty state" in _checks(v)["batching"][1]
    capsys.readouterr()
    assert main(["--config", str(cfg), "verify", ids[4], "--allow-skipped"]) == 0  # from ids[3]'s, written above
    assert f"resumed the batcher from the checkpoint after batch {ids[3]}" in capsys.readouterr().out


def test_verify_all_writes_checkpoints_and_fails_on_a_forged_one(world, capsys):
    cfg, ids, store = world["cfg"], world["ids"], world["store"]
    capsys.readouterr()
    assert main(["--config", str(cfg), "verify", "--all", "--allow-skipped"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint(s) written" in out and "checkpoint FAILED" not in out
    assert {b for _, b in store.latest()} == {ids[-1]}  # every 10th and the school's last: 5 batches → the last
    assert _verify(capsys, cfg, ids[1])[0] == 0  # writes ids[1]'s
    # a checkpoint forged consistently with its index line: one verify would trust it, --all re-derives it
    cp = decode(store.path_of(ORG, ids[1]).read_bytes())
    store.write(dataclasses.replace(cp, state=dataclasses.replace(cp.state, seq=cp.state.seq + 3)), "someone")
    code, v = _verify(capsys, cfg, ids[2])
    assert code == 0 and v["ok"]  # the forged state does not reproduce the batch: re-run from empty
    assert f"from the checkpoint after batch {ids[1]}" in v["read"] and "it did not verify" in v["read"], v["read"]
    capsys.readouterr()
    assert main(["--config", str(cfg), "verify", "--all", "--allow-skipped"]) == 1
    out = capsys.readouterr().out
    assert f"checkpoint FAILED  checkpoint of batch {ids[1]}" in out and "forged" in out
    capsys.readouterr()
    assert main(["--config", str(cfg), "verify", "--all", "--allow-skipped"]) == 0  # replaced by the re-derived one


def test_a_checkpoint_whose_records_left_the_log_is_not_used(world, capsys):
    cfg, ids, store = world["cfg"], world["ids"], world["store"]
    settings = world["settings"]
    assert _verify(capsys, cfg, ids[1])[0] == 0
    cp = decode(store.path_of(ORG, ids[1]).read_bytes())
    events_at = cp.offsets[settings.topics.events][0]
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for f in admin.delete_records([TopicPartition(settings.topics.events, 0, events_at)]).values():
        f.result(30)
    code, v = _verify(capsys, cfg, ids[2])
    assert f"{settings.topics.events}[0]@{events_at - 1}" in v["read"] and "no longer on the log" in v["read"], v
    assert code == 1 and _checks(v)["batching"][0] == "failed"  # and from empty the records are gone: it fails
