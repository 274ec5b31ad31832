"""The SEVIS sink: upload validated batches over client-certificate TLS, download results.

``client`` is the destination (bytes over HTTPS), ``translog`` the lenient
transaction-log parser, ``uploader`` the outbox state machine, ``stage`` the
loop with its Kafka publisher. The lead's all-in-one runner calls :func:`run`.
"""

from __future__ import annotations

import threading

from sevisflow.core.config import Settings


def run(settings: Settings, stop_event: threading.Event) -> None:
    """Run the SEVIS upload/download stage until ``stop_event`` is set."""
    from sevisflow.sinks.sevis.stage import run as _run

    _run(settings, stop_event)
