"""The whole pipeline (runner.Pipeline) on real services, checked against the pure pipeline + pure batcher.

Settings with per-test topic names, the expected outcome of a school and its activity, the
comparison of what reached sevis.events and the closed batch with it, and a DSO close through the
CLI. Shared by the broker-loss and secure-cluster pipeline tests. A plain module (not a test
module), so importing it pulls in no other module's tests.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from sevisflow.app.cli import main
from sevisflow.core.config import Settings, settings_toml
from sevisflow.core.kafka_io import read_topic
from sevisflow.core.serde import registry
from sevisflow.deploy.sis.replay import canonical_payload, event_content, expected_events
from sevisflow.processors.batcher.core import CommandIn, EventIn, Publish, School, apply
from tests.helpers import REPO, TEST_ORG_ID, XSD_DIR, connector_section

DSO = "dsotest001"


def pipeline_raw(kafka: dict[str, Any], pg: Any, unique: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Settings for a full pipeline run with per-test topic names (also written to a file for the CLI)."""
    topics = {
        name: f"{default}.{unique}"
        for name, default in [
            ("students", "sevisflow.students"),
            ("events", "sevis.events"),
            ("commands", "sevis.batch.commands"),
            ("batches", "sevis.batches"),
            ("results", "sevis.results"),
            ("dlq", "sevisflow.dlq"),
            ("open_batches", "sevis.batch.open"),
            ("ledger", "sevis.audit.ledger"),
        ]
    }
    return {
        "kafka": kafka,
        "postgres": {"host": pg.host, "port": pg.port, "dbname": pg.dbname, "user": pg.user},
        "connector": connector_section(
            unique, tmp_path, **{"topic.prefix": f"sis{unique}", "slot.name": f"slot_{unique}"}
        ),
        "school": {
            "org_id": TEST_ORG_ID,
            "mapping_file": str(REPO / "deploy" / "sis" / "mapping.toml"),
            "dso_user_ids": [DSO],
        },
        "sevis": {
            "xsd_dir": str(XSD_DIR),
            "outbox_dir": str(tmp_path / "outbox"),
            "quarantine_dir": str(tmp_path / "quarantine"),
        },
        "topics": topics,
    }


def write_config(raw: dict[str, dict[str, Any]], path: Path) -> Path:
    path.write_text(settings_toml(raw))
    path.chmod(0o600)
    return path


def decoded(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [registry().decode(m.value()) for m in read_topic(settings.kafka, topic, timeout_s=30)]


def expected_outcome(
    org_id: str, close_at_ms: int, students: int, share: float, seed: int, activity: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    """(events, closed records, students with a snapshot Create) the pure pipeline + pure batcher give
    for the reference school (`generate_school(students, share, seed)`) and `activity` SIS transactions."""
    events, snapshot_creates = expected_events(students, share, seed, activity)
    state = School(org_id=org_id)
    for ev in events:
        state, _ = apply(state, EventIn({**ev, "org_id": org_id}, at_ms=close_at_ms))
    state, outs = apply(
        state,
        CommandIn(
            {
                "command_id": "expected-close",
                "kind": "close",
                "org_id": org_id,
                "dso_user_id": DSO,
                "requested_at_ms": close_at_ms,
            }
        ),
    )
    closed = [o.event for o in outs if isinstance(o, Publish) and o.event["type"] == "closed"]
    assert len(closed) == 1
    return events, orjson.loads(closed[0]["records_json"]), snapshot_creates


def shape(rec: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree between a real and a pure record (ids, request ids and source positions differ)."""
    return (
        rec["record_id"],
        rec["section"],
        rec["kind"],
        canonical_payload(rec["payload"], rec["lineage"]),
        len(rec["event_ids"]),
        len(rec["lineage"]),
    )


def compare_with_pure(
    events: list[dict[str, Any]],
    records: list[dict[str, Any]],
    expected_events: list[dict[str, Any]],
    expected_records: list[dict[str, Any]],
    snapshot_creates: set[str],
) -> dict[str, Any]:
    """Events on sevis.events and records of the closed batch(es) against the pure pipeline's.

    A snapshot Create is compared by student and kind only: its content depends on the order the
    snapshot rows arrive in (known, connector + normalize; see tests/integration/test_verify_pipeline.py)."""

    def ev(e: dict[str, Any]) -> tuple[Any, ...]:
        c = event_content(e)
        return c[:3] if e["kind"] == "Create" and e["student_key"] in snapshot_creates else c

    def rec(r: dict[str, Any]) -> tuple[Any, ...]:
        c = shape(r)
        return c[:3] if r["kind"] == "Create" and r["student_key"] in snapshot_creates else c

    ids = Counter(e["event_id"] for e in events)
    got, want = Counter(map(ev, events)), Counter(map(ev, expected_events))
    in_batch = Counter(i for r in records for i in r["event_ids"])
    rgot, rwant = Counter(map(rec, records)), Counter(map(rec, expected_records))
    report = {
        "events_expected": len(expected_events),
        "events_on_topic": len(events),
        "duplicate_event_ids": sum(1 for n in ids.values() if n > 1),
        "events_missing": sum((want - got).values()),
        "events_unexpected": sum((got - want).values()),
        "records_expected": len(expected_records),
        "records_closed": len(records),
        "records_missing": sum((rwant - rgot).values()),
        "records_unexpected": sum((rgot - rwant).values()),
        "event_ids_in_batch": len(in_batch),
        "event_ids_twice_in_batch": sum(1 for n in in_batch.values() if n > 1),
        "batch_event_ids_not_on_topic": len(set(in_batch) - set(ids)),
        "differences": {
            "events_missing": [k[:2] for k in want - got],
            "events_unexpected": [k[:2] for k in got - want],
            "records_missing": [k[:3] for k in rwant - rgot],
            "records_unexpected": [k[:3] for k in rgot - rwant],
        },
    }
    report["ok"] = (
        report["duplicate_event_ids"]
        == report["events_missing"]
        == report["events_unexpected"]
        == report["records_missing"]
        == report["records_unexpected"]
        == report["event_ids_twice_in_batch"]
        == report["batch_event_ids_not_on_topic"]
        == 0
        and len(events) == len(expected_events)
        and len(records) == len(expected_records)
    )
    return report


def close_with_cli(config: Path, capsys: Any) -> list[str]:
    capsys.readouterr()
    # the DSO reviews (`batch show`), then closes exactly the revision shown
    assert main(["--config", str(config), "batch", "show", "--json"]) == 0
    revision = orjson.loads(capsys.readouterr().out)["revision"]
    assert (
        main(
            [
                "--config",
                str(config),
                "batch",
                "close",
                "--revision",
                str(revision),
                "--dso",
                DSO,
                "--json",
                "--timeout",
                "60",
            ]
        )
        == 0
    )
    out = orjson.loads(capsys.readouterr().out)
    ids = out.get("batch_ids") or [b["batch_id"] for b in out.get("batches", [])]
    assert ids, out
    return ids
