"""The SEVIS upload sink against the SEVIS simulator: settings, a batch in the outbox, outbox states.

Shared by the upload and sink-sevis observability integration tests. A plain module (not a test
module), so importing it pulls in no other module's tests.
"""

from __future__ import annotations

from pathlib import Path

from sevisflow.sinks.outbox import Outbox
from sevisflow.sinks.sevis_sim import SevisSimulator
from sevisflow.sinks.xml.render import ClosedBatch
from sevisflow.sinks.xml.stage import sink_closed_batch
from sevisflow.sinks.xml.xsd import load_schema
from testkit.xml_samples import DSO, ORG_ID, create_record, update_record
from tests.helpers import XSD_DIR, make_settings


class FakePublisher:
    """Stands in for the Kafka results publisher: remembers what the sink published and requeued."""

    def __init__(self) -> None:
        self.published: list[dict] = []
        self.requeued: list[dict] = []

    def results(self, org_id, records):
        self.published.extend(records)

    def requeue(self, org_id, batch_id, record_ids, reason, code):
        self.requeued.append({"batch_id": batch_id, "record_ids": record_ids, "code": code})


def sim_sevis(sim: SevisSimulator, tmp_path: Path, **over) -> dict:
    """The [sevis] settings that point at ``sim`` with an outbox under ``tmp_path``."""
    sevis = {
        "upload_url": sim.upload_url,
        "download_url": sim.download_url,
        "client_cert": str(sim.certs.client_cert),
        "client_key": str(sim.certs.client_key),
        "ca_bundle": str(sim.certs.ca_cert),
        "outbox_dir": str(tmp_path / "outbox"),
        "quarantine_dir": str(tmp_path / "quarantine"),
    }
    sevis.update(over)
    return sevis


def settings_for(sim: SevisSimulator, tmp_path: Path, **over):
    return make_settings(
        sevis=sim_sevis(
            sim,
            tmp_path,
            **{
                "poll_interval_s": 0.0,
                "retry_base_s": 0.01,
                "retry_max_s": 0.05,
                "http_timeout_s": 5.0,
                "repost_after_s": 0.0,
                "repost_after_checks": 1,
                "max_posts": 3,
                **over,
            },
        )
    )


def outbox_of(settings) -> Outbox:
    return Outbox(settings.sevis.outbox_dir, settings.sevis.quarantine_dir, settings.school.timezone)


def put_batch(settings, batch_id="UPLTEST0000001", records=None) -> ClosedBatch:
    records = records or (
        create_record(1),
        update_record(2, "Status.Complete", sevis_id="N0000000002"),
        update_record(3, "Status.Complete", sevis_id="N0000000003"),
    )
    batch = ClosedBatch(ORG_ID, batch_id, DSO, 1748921400000, tuple(records))
    assert sink_closed_batch(batch, load_schema(XSD_DIR), outbox_of(settings)).status == "written"
    return batch


def states(settings) -> dict[str, list[str]]:
    ob = outbox_of(settings)
    return {
        st: [b.name for b in ob.batches(st)]
        for st in ("ready", "sending", "uploaded", "processed", "failed")
        if list(ob.batches(st))
    }
