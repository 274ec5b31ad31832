"""Audit tooling: replay any topic, trace a student or a batch, verify archived batches.

Everything here *reads*: Kafka topics with manual assignment and no offset commits
(so nothing an auditor runs moves a pipeline consumer group), and the outbox folders.
The only thing written is the audit ledger (:mod:`sevisflow.core.ledger`), a hash
chain over the outbox manifests kept next to the outbox.

Modules:

* :mod:`~sevisflow.app.audit.decode`   — one Kafka record → plain JSON (Avro by fingerprint, Debezium JSON)
* :mod:`~sevisflow.app.audit.replay`   — positions (time/offset) → records, student filter, JSON lines
* :mod:`~sevisflow.app.audit.timeline` — pure: a student's timeline, a batch's report
* :mod:`~sevisflow.app.audit.sources`  — the thin reader that feeds the pure functions from Kafka
* :mod:`~sevisflow.core.ledger`   — the hash chain over outbox manifests
* :mod:`~sevisflow.app.audit.verify`   — re-derive a batch and compare it with the archive
"""
