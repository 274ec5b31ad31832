"""Audit tooling: replay any topic, trace a student or a batch, verify archived batches.

Everything here *reads*: Kafka topics with manual assignment and no offset commits
(so nothing an auditor runs moves a pipeline consumer group), and the outbox folders.
The only things written are the audit ledger (:mod:`sevisflow.core.ledger`, by the sinks), a hash
chain over the outbox manifests kept next to the outbox, and verify's checkpoints of the batcher
re-run (:mod:`~sevisflow.app.audit.checkpoint`, ``<outbox_dir>/audit/``).

Modules:

* :mod:`~sevisflow.app.audit.decode`   — one Kafka record → plain JSON (Avro by fingerprint, Debezium JSON)
* :mod:`~sevisflow.app.audit.replay`   — positions (time/offset) → records, student filter, JSON lines
* :mod:`~sevisflow.app.audit.timeline` — pure: a student's timeline, a batch's report
* :mod:`~sevisflow.app.audit.sources`  — the thin reader that feeds the pure functions from Kafka
* :mod:`~sevisflow.core.ledger`   — the hash chain over outbox manifests
* :mod:`~sevisflow.app.audit.verify`   — re-derive a batch and compare it with the archive
* :mod:`~sevisflow.app.audit.checkpoint` — where ``verify <BatchID>`` resumes the batcher re-run
"""
