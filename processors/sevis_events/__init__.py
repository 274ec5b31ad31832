"""processors/sevis_events: (previous view, new view) → SEVIS events on ``sevis.events``.

``run(settings, stop_event)`` runs the Kafka stage; :func:`.derive.derive` is the pure rule set.
"""

from __future__ import annotations

from typing import Any


def run(settings: Any, stop_event: Any, instance: str | None = None) -> None:
    """Run the sevis_events stage until ``stop_event`` is set."""
    from sevisflow.processors.sevis_events.stage import run as _run

    _run(settings, stop_event, instance)


__all__ = ["run"]
