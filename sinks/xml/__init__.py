"""The XML sink: closed batches → XSD-valid SEVISBatchCreateUpdateStudent (F/M) or SEVISBatchCreateUpdateEV
(J-1 exchange visitors) files in the outbox.

``render`` / ``render_ev`` are the formats (pure batch → bytes functions; ``document`` picks one by the
batch's records), ``sevisflow.sinks.outbox`` the destination, ``stage`` the Kafka loop. The lead's all-in-one runner calls :func:`run`.
"""

from __future__ import annotations

import threading

from sevisflow.core.config import Settings


def run(settings: Settings, stop_event: threading.Event) -> None:
    """Run the XML sink stage until ``stop_event`` is set (see :func:`sevisflow.sinks.xml.stage.run`)."""
    from sevisflow.sinks.xml.stage import run as _run

    _run(settings, stop_event)
