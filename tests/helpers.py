"""Plain helpers for tests: handles to the stack's services and settings that point at them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sevisflow.config import Settings, settings_from_mapping

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
XSD_DIR = Path(os.environ.get("SEVISFLOW_TEST_XSD_DIR", SHARED / "sevis" / "xsd"))
EXAMPLES_DIR = SHARED / "sevis" / "examples"


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



def make_settings(kafka: KafkaHandle | None = None, pg: PgHandle | None = None, unique: str = "",
                  **sections: dict) -> Settings:
    """Settings pointing at the test stack; per-test topic names when ``unique`` is given."""
    raw: dict[str, dict] = {k: dict(v) for k, v in sections.items()}
    if kafka:
        raw.setdefault("kafka", {})["bootstrap_servers"] = kafka.bootstrap
    if pg:
        raw.setdefault("postgres", {}).update({"host": pg.host, "port": pg.port, "dbname": pg.dbname, "user": pg.user})
    raw.setdefault("sevis", {}).setdefault("xsd_dir", str(XSD_DIR))
    if unique:
        raw.setdefault("topics", {})
        for name, default in [("students", "sevisflow.students"), ("events", "sevis.events"),
                              ("commands", "sevis.batch.commands"), ("batches", "sevis.batches"),
                              ("results", "sevis.results"), ("dlq", "sevisflow.dlq")]:
            raw["topics"].setdefault(name, f"{default}.{unique}")
        raw.setdefault("connector", {}).setdefault("topic.prefix", f"sis{unique}")
        raw["connector"].setdefault("slot.name", f"slot_{unique}")
    return settings_from_mapping(raw, env={})


