"""processors/batcher: one open batch per school (OrgID), closed by commands into ≤250+≤250 documents.

``run(settings, stop_event)`` runs it (the all-in-one runner uses this);
``python -m processors.batcher`` runs it as its own process.
The state machine is :mod:`processors.batcher.core`; the Kafka adapter is
:mod:`processors.batcher.stage`; :mod:`processors.batcher.view` folds
``sevis.batches`` back into what the DSO sees.
"""

from __future__ import annotations

from processors.batcher.stage import batcher_topics, build_loop, group_id, run, state_topic

__all__ = ["run", "build_loop", "batcher_topics", "state_topic", "group_id"]
