"""processors/batcher: one open batch per school (OrgID), closed by commands into ≤250+≤250 documents.

``run(settings, stop_event)`` runs it (the all-in-one runner uses this);
``python -m sevisflow.processors.batcher`` runs it as its own process.
The state machine is :mod:`sevisflow.processors.batcher.core`; the Kafka adapter is
:mod:`sevisflow.processors.batcher.stage`; :mod:`sevisflow.processors.batcher.view` folds
``sevis.batches`` back into what the DSO sees.
"""

from __future__ import annotations

from sevisflow.processors.batcher.stage import batcher_topics, build_loop, group_id, run, state_topic

__all__ = ["batcher_topics", "build_loop", "group_id", "run", "state_topic"]
