"""Settings that point at a test or benchmark stack: per-run topic names, the test school and its DSOs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sevisflow.core.config import Settings, settings_from_mapping

REPO = Path(__file__).resolve().parent.parent
XSD_DIR = Path(os.environ.get("SEVISFLOW_TEST_XSD_DIR", REPO.parent / "shared" / "sevis" / "xsd"))
"""The SEVIS XSDs the tests and benchmarks validate against (``SEVISFLOW_TEST_XSD_DIR`` names the folder)."""


@dataclass
class PgHandle:
    dsn: str
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"
    dbname: str = "sis"

    def dsn_for(self, dbname: str) -> str:
        return f"host={self.host} port={self.port} dbname={dbname} user={self.user}"


@dataclass
class KafkaHandle:
    bootstrap: str


TEST_ORG_ID = "ZZZ214F99999000"  # the test school's OrgID (there is no default: a school must set its own)
TEST_DSO_USER_IDS = ("DSOUSER001", "dsotest001", "JSMITH0001", "dsouser001")
"""The SEVIS user ids the tests' DSOs use: the batcher refuses commands of anyone not in school.dso_user_ids."""

_TOPICS = [
    ("students", "sevisflow.students"),
    ("events", "sevis.events"),
    ("commands", "sevis.batch.commands"),
    ("batches", "sevis.batches"),
    ("results", "sevis.results"),
    ("dlq", "sevisflow.dlq"),
    ("open_batches", "sevis.batch.open"),
    ("worklist", "sevis.worklist"),
    ("ledger", "sevis.audit.ledger"),
]


def make_settings(
    kafka: KafkaHandle | None = None, pg: PgHandle | None = None, unique: str = "", **sections: Any
) -> Settings:
    """Settings pointing at the test stack; per-test topic names when ``unique`` is given (a list section,
    ``exchange_programs`` or ``schools``, is given as a list of tables)."""
    raw: dict[str, Any] = {k: list(v) if isinstance(v, (list, tuple)) else dict(v) for k, v in sections.items()}
    if kafka:
        raw.setdefault("kafka", {})["bootstrap_servers"] = kafka.bootstrap
    if pg:
        raw.setdefault("postgres", {}).update({"host": pg.host, "port": pg.port, "dbname": pg.dbname, "user": pg.user})
    raw.setdefault("sevis", {}).setdefault("xsd_dir", str(XSD_DIR))
    raw.setdefault("school", {}).setdefault("org_id", TEST_ORG_ID)
    raw["school"].setdefault("dso_user_ids", list(TEST_DSO_USER_IDS))
    if unique:
        raw.setdefault("topics", {})
        for name, default in _TOPICS:
            raw["topics"].setdefault(name, f"{default}.{unique}")
        raw.setdefault("connector", {}).setdefault("topic.prefix", f"sis{unique}")
        raw["connector"].setdefault("slot.name", f"slot_{unique}")
    return settings_from_mapping(raw, env={})


def connector_section(unique: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """A test connector's ``[connector]`` table: its publication, name and offsets per test, quick heartbeats and
    offset flushes (so a test does not wait on them); ``extra`` adds or overrides keys (dotted names as in the
    settings file, e.g. ``**{"snapshot.fetch.size": 5000}``)."""
    return {
        "publication.name": f"pub_{unique}",
        "name": f"conn-{unique}",
        "offsets_dir": str(tmp_path / "connector"),
        "heartbeat.interval.ms": 500,
        "offset.flush.interval.ms": 200,
        **extra,
    }


def run_bench_on_stack(
    main: Callable[[list[str]], int], args: list[str], kafka: KafkaHandle, pg: PgHandle, work_dir: Path
) -> tuple[int, dict[str, Any]]:
    """Run a bench that starts its own stages (the ``main`` of ``bench.scale`` or ``bench.vendor``) with ``args`` on
    the test stack, its runs under ``work_dir``: (exit code, the JSON results it wrote). Why one place: the small CI
    runs of those benches point them at the stack and read their results alike."""
    out = work_dir / "bench-results.json"
    rc = main([*args, "--kafka", kafka.bootstrap, "--pg", pg.dsn, "--work-dir", str(work_dir), "--json-out", str(out)])
    return rc, json.loads(out.read_text())
