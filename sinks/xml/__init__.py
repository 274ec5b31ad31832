"""The XML sink: closed batches → XSD-valid SEVISBatchCreateUpdateStudent files in the outbox.

``render`` is the format (a pure batch → bytes function), ``sinks.outbox`` the
destination, ``stage`` the Kafka loop. The lead's all-in-one runner calls :func:`run`.
"""

from __future__ import annotations

import threading

from sevisflow.config import Settings


def run(settings: Settings, stop_event: threading.Event) -> None:
    """Run the XML sink stage until ``stop_event`` is set (see :func:`sinks.xml.stage.run`)."""
    from sinks.xml.stage import run as _run

    _run(settings, stop_event)
