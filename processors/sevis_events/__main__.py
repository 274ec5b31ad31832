"""``python -m sevisflow.processors.sevis_events``: run the sevis_events stage (settings from $SEVISFLOW_CONFIG / ./sevisflow.toml)."""

from __future__ import annotations

import signal
import threading

from sevisflow.core import log
from sevisflow.core.config import load_settings
from sevisflow.processors.sevis_events import run

if __name__ == "__main__":
    log.configure("INFO")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(load_settings(), stop)
