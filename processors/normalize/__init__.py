"""processors/normalize: SIS row changes → canonical student views (``sevisflow.students``), by mapping file.

``run(settings, stop_event)`` runs the Kafka stage; the pure parts are :mod:`.mapping` (the mapping
file), :mod:`.canonical` (the model and value conversion), :mod:`.changes` (Debezium input) and
:mod:`.view` (applying changes in commit order, transaction by transaction).
"""

from __future__ import annotations

from typing import Any


def run(settings: Any, stop_event: Any, mapping: Any = None) -> None:
    """Run the normalize stage until ``stop_event`` is set."""
    from sevisflow.processors.normalize.stage import run as _run

    _run(settings, stop_event, mapping)


__all__ = ["run"]
