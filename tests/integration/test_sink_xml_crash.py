"""The XML sink has a stable identity: kill -9 mid-transaction, restart, everything once, nobody stuck.

The real ``sevisflow sink xml`` process is armed to die (exit 137, like kill -9) just before its
first ``commit_transaction`` (``SEVISFLOW_CRASH_AT=kafka.before_commit:1``): both batch folders are
written, and its open transaction holds a dead letter and a ``requeue`` command. The restarted sink
has the same ``transactional.id`` (``<group>-$SEVISFLOW_INSTANCE``), so its ``init_transactions``
makes the broker abort that transaction at once: a read_committed reader of the commands topic sees
the redone command within seconds, not after ``transaction.timeout.ms`` (60 s) as with a new random
id. The good batch is written exactly once, the bad one quarantined once, one command, one dead letter.
The restarted sink also reads the audit ledger's anchors (read_committed) before its loop starts: it
fences its predecessor first (``fence_predecessor``), or that read would wait for the same 60 s.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from sevisflow.core.errors import UnreachableError
from sevisflow.core.kafka_io import ensure_topics, flush_or_raise, make_producer, produce, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import pipeline_topics
from sevisflow.deploy.local.stack import free_port
from sevisflow.sinks.xml.render import ClosedBatch
from testkit.xml_samples import DSO, ORG_ID, create_record, update_record
from tests.crashing import ENV_VAR, EXIT_CODE
from tests.helpers import REPO, XSD_DIR, make_settings, stage_env
from tests.integration.test_sink_kafka import closed_event

pytestmark = pytest.mark.integration


def _commands(settings):
    try:
        return [registry().decode(m.value()) for m in read_topic(settings.kafka, settings.topics.commands, timeout_s=3)]
    except UnreachableError:  # a read_committed reader stuck behind an open transaction
        return None


def test_kill_9_of_the_xml_sink_mid_transaction_then_restart_writes_once_and_blocks_no_reader(
    kafka_stack, unique, tmp_path
):
    outbox, quarantine = tmp_path / "outbox", tmp_path / "quarantine"
    settings = make_settings(
        kafka_stack,
        unique=unique,
        sevis={"outbox_dir": str(outbox), "quarantine_dir": str(quarantine), "xsd_dir": str(XSD_DIR)},
        topics={"ledger": f"sevis.audit.ledger.{unique}"},
    )
    ensure_topics(settings.kafka, pipeline_topics(settings))
    good = ClosedBatch(
        ORG_ID,
        f"KG{unique:0>12}",
        DSO,
        1748921400000,
        (create_record(1), update_record(2, "Status.Complete", sevis_id="N0000000002")),
    )
    bad = ClosedBatch(
        ORG_ID,
        f"KB{unique:0>12}",
        DSO,
        1748921400000,
        (create_record(4, last="N4me"), update_record(5, "Status.Complete")),
    )
    producer = make_producer(settings.kafka)
    errors: list = []
    for b in (bad, good):
        produce(producer, settings.topics.batches, ORG_ID.encode(), closed_event(b))
    flush_or_raise(producer, errors)

    env = stage_env(settings, free_port())
    env.update(
        {
            "SEVISFLOW_SEVIS_OUTBOX_DIR": str(outbox),
            "SEVISFLOW_SEVIS_QUARANTINE_DIR": str(quarantine),
            "SEVISFLOW_SEVIS_XSD_DIR": str(XSD_DIR),
            "SEVISFLOW_SCHOOL_ORG_ID": ORG_ID,
            "SEVISFLOW_INSTANCE": "xml-1",
            "SEVISFLOW_TOPICS_LEDGER": settings.topics.ledger,
        }
    )
    cmd = [sys.executable, "-m", "tests.crashing", "sevisflow", "--log-level", "INFO", "sink", "xml"]
    first = subprocess.run(
        cmd, cwd=REPO, env={**env, ENV_VAR: "kafka.before_commit:1"}, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == EXIT_CODE, first.stderr[-2000:]
    assert '"point":"kafka.before_commit"' in first.stderr
    assert list(outbox.rglob(f"{good.batch_id}.xml")), "the crash came after the outbox write"

    log_path = tmp_path / "second.log"
    with open(log_path, "w") as log:
        second = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
    restarted = time.monotonic()
    try:
        cmds = None
        while time.monotonic() - restarted < 90:
            cmds = _commands(settings)
            if cmds:
                break
            assert second.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.5)
        visible_after = time.monotonic() - restarted
        time.sleep(2)  # a duplicate would show up now
        cmds = _commands(settings)
        dead = [registry().decode(m.value()) for m in read_topic(settings.kafka, settings.topics.dlq)]
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(60)
        except subprocess.TimeoutExpired:
            second.kill()
    assert second.returncode == 0, log_path.read_text()[-2000:]
    # well below transaction.timeout.ms (60 s): the restart aborted the crashed transaction itself
    assert visible_after < 45, (
        f"read_committed readers were stuck for {visible_after:.0f}s; the first run: "
        f"{first.stderr[-1500:]}\n--- the restart: {log_path.read_text()[-4000:]}"
    )
    assert [(c["kind"], c["batch_id"], c["record_ids"]) for c in cmds] == [
        ("requeue", bad.batch_id, [bad.records[1]["record_id"]])
    ]
    assert [(d["stage"], d["student_key"]) for d in dead] == [("sink_xml", "S00000004")]
    assert len(list(outbox.rglob(f"{good.batch_id}.xml"))) == 1
    assert len(list(quarantine.rglob(f"{bad.batch_id}.xml"))) == 1
    assert not list(outbox.rglob(f"{bad.batch_id}*"))


@pytest.mark.parametrize("point", ["outbox.before_rename:1", "outbox.after_rename:1"])
def test_a_crash_on_either_side_of_the_outbox_rename_writes_the_batch_exactly_once(
    kafka_stack, unique, tmp_path, point
):
    """The outbox write is one rename of a fsynced temp folder, and the Kafka offsets move only after it:
    killed just before the rename, the batch is not in ready/ and the restart writes it; killed just after,
    it is in ready/ and the restart (reading the same closed event again) finds it and writes nothing."""
    outbox, quarantine = tmp_path / "outbox", tmp_path / "quarantine"
    settings = make_settings(
        kafka_stack,
        unique=unique,
        sevis={"outbox_dir": str(outbox), "quarantine_dir": str(quarantine), "xsd_dir": str(XSD_DIR)},
        topics={"ledger": f"sevis.audit.ledger.{unique}"},
    )
    ensure_topics(settings.kafka, pipeline_topics(settings))
    good = ClosedBatch(
        ORG_ID,
        f"KR{unique:0>12}",
        DSO,
        1748921400000,
        (create_record(1), update_record(2, "Status.Complete", sevis_id="N0000000002")),
    )
    producer = make_producer(settings.kafka)
    produce(producer, settings.topics.batches, ORG_ID.encode(), closed_event(good))
    flush_or_raise(producer, [])
    env = stage_env(settings, free_port())
    env.update(
        {
            "SEVISFLOW_SEVIS_OUTBOX_DIR": str(outbox),
            "SEVISFLOW_SEVIS_QUARANTINE_DIR": str(quarantine),
            "SEVISFLOW_SEVIS_XSD_DIR": str(XSD_DIR),
            "SEVISFLOW_SCHOOL_ORG_ID": ORG_ID,
            "SEVISFLOW_INSTANCE": "xml-1",
            "SEVISFLOW_TOPICS_LEDGER": settings.topics.ledger,
        }
    )
    cmd = [sys.executable, "-m", "tests.crashing", "sevisflow", "--log-level", "INFO", "sink", "xml"]
    first = subprocess.run(cmd, cwd=REPO, env={**env, ENV_VAR: point}, capture_output=True, text=True, timeout=120)
    assert first.returncode == EXIT_CODE, first.stderr[-2000:]
    written = list(outbox.glob(f"*/ready/{good.batch_id}/{good.batch_id}.xml"))
    assert len(written) == (0 if "before" in point else 1)

    log_path = tmp_path / "second.log"
    with open(log_path, "w") as log:
        second = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 90
        # the batch in ready/ and the restarted sink running (after the crash past the rename, the batch is
        # there before the sink has even started: a SIGTERM then would stop it before its handler exists)
        while not (
            list(outbox.glob(f"*/ready/{good.batch_id}/{good.batch_id}.xml"))
            and '"sink_xml.started"' in log_path.read_text()
        ):
            assert second.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.3)
        time.sleep(3)  # the redelivered event is handled: a second copy would show up now
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert second.returncode == 0, log_path.read_text()[-2000:]
    copies = [p for p in outbox.rglob(f"{good.batch_id}*") if p.is_dir()]
    assert len(copies) == 1, copies  # exactly once, in ready/, no stray temp folder left
    assert not [p for p in outbox.rglob(".tmp/*") if good.batch_id in p.name]
    xml = (copies[0] / f"{good.batch_id}.xml").read_bytes()
    manifest = (copies[0] / "manifest.json").read_text()
    import hashlib

    assert hashlib.sha256(xml).hexdigest() in manifest
