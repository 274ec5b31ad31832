"""The reference school replayed through the pure pipeline, shared by unit, integration and e2e tests.

What `make demo` loads (generate_school(300, 0.35, seed 7, today 2026-10-05) + 150 activity
transactions) as Debezium records: a snapshot, then one source transaction per activity
Transaction, with transaction metadata. The code lives in deploy/sis/replay.py (the chaos bench
uses it too and must not import tests); this plain module keeps the tests' import path.
"""

from __future__ import annotations

from sevisflow.deploy.sis.replay import MAPPING, PKS, TODAY, Replay, feed_ops

__all__ = ["MAPPING", "PKS", "TODAY", "Replay", "feed_ops"]
