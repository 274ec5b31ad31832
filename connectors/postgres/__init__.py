"""PostgreSQL change-data-capture connector: pgoutput logical replication → Debezium-compatible Kafka topics.

Entry points: :func:`run_connector` (used by ``sevisflow connector run`` and the all-in-one
``sevisflow run``) and ``python -m sevisflow.connectors.postgres`` (the same, configured by SEVISFLOW_*
variables or ``--config``). Module map:

* :mod:`.pgoutput` — pure decoder of the replication messages;
* :mod:`.convert` — PostgreSQL text values → Debezium JSON values and Connect schemas;
* :mod:`.envelope` — Debezium envelopes, keys, tombstones, transaction metadata;
* :mod:`.snapshot` — snapshot policy per ``snapshot.mode`` and the chunked COPY reader;
* :mod:`.offsets` — the persisted snapshot progress and its resume rule;
* :mod:`.replication` — the replication-protocol client (psycopg 3, CopyBoth);
* :mod:`.admin` — pre-flight checks, publication, slot and catalog;
* :mod:`.errors` — transient vs terminal classification;
* :mod:`.metrics` — Prometheus metrics and the status file;
* :mod:`.task` — the task that wires them, and the retry wrapper.
"""

from __future__ import annotations

from sevisflow.connectors.postgres.task import ConnectorTask, run_connector

__all__ = ["ConnectorTask", "run_connector"]
