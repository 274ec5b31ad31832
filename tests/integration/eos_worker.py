"""A tiny processor for the exactly-once tests: copies input to output and counts per key in state.

Run as ``python -m tests.integration.eos_worker BOOTSTRAP IN OUT STATE GROUP`` so a test can kill -9 it
(or arm ``SEVISFLOW_CRASH_AT``: it installs :mod:`tests.crashing`'s handler). It runs under :class:`sevisflow.app.runner.Pipeline`, like every stage
process, so a fenced instance stands by the way a real one does. Optional environment:
``EOS_INSTANCE`` (default ``worker``: the identity is ``<GROUP>-<instance>``), ``EOS_METRICS_PORT``
(serve /health and /ready), ``EOS_SESSION_TIMEOUT_MS``, ``EOS_STANDBY_CHECK_S``, ``EOS_STATE_DIR`` (keep the
committed state in RocksDB under this folder, ``[state] backend = "rocksdb"``, instead of in memory),
``EOS_REORDER_WINDOW_BYTES`` (the loop's ``reorder_window_bytes``: records held back across its transactions).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from sevisflow.app.runner import Pipeline
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.kafka_io import Output, StateStore, TransactionalLoop
from sevisflow.core.log import configure
from sevisflow.core.state import open_committed
from tests import crashing


def main(bootstrap: str, inp: str, out: str, state_topic: str, group: str) -> int:
    def handler(msg, state: StateStore):
        count = int(state.get(msg.partition(), msg.key()) or b"0") + 1
        state.put(msg.partition(), msg.key(), str(count).encode())
        yield Output(out, msg.key(), msg.value() + b"#" + str(count).encode())

    overrides = {}
    if os.environ.get("EOS_SESSION_TIMEOUT_MS"):
        overrides["session.timeout.ms"] = int(os.environ["EOS_SESSION_TIMEOUT_MS"])
        overrides["heartbeat.interval.ms"] = max(500, int(os.environ["EOS_SESSION_TIMEOUT_MS"]) // 6)
    instance = os.environ.get("EOS_INSTANCE", "worker")

    def stage(settings, stop: threading.Event) -> None:
        loop = TransactionalLoop(
            settings.kafka,
            group,
            [inp],
            handler,
            transactional_id=f"{group}-{instance}",
            state_topic=state_topic,
            batch_size=50,
            consumer_overrides=overrides,
            dlq_topic=f"{out}.dlq",
            state=StateStore(open_committed(settings.state, f"{group}-{instance}")),
            reorder_window_bytes=int(os.environ.get("EOS_REORDER_WINDOW_BYTES", "0")),
        )
        loop.stop_when(stop, "eos")
        loop.run()

    crashing.install()  # SEVISFLOW_CRASH_AT, when a test arms it
    configure()  # JSON lines on stderr: the tests read the stage's events from them
    port = int(os.environ.get("EOS_METRICS_PORT", "0"))
    state_dir = os.environ.get("EOS_STATE_DIR", "")
    state = {"backend": "rocksdb", "dir": state_dir, "block_cache_mb": 8, "write_buffer_mb": 4} if state_dir else {}
    settings = settings_from_mapping(
        {"kafka": {"bootstrap_servers": bootstrap}, "metrics": {"port": port, "host": "127.0.0.1"}, "state": state},
        env={},
    )
    pipeline = Pipeline(
        settings, ["eos"], functions={"eos": stage}, standby_check_s=float(os.environ.get("EOS_STANDBY_CHECK_S", "15"))
    ).start()
    signal.signal(signal.SIGTERM, lambda *_: pipeline.stop_event.set())
    while not pipeline.stop_event.wait(0.2) and any(t.thread.is_alive() for t in pipeline.threads):
        pass
    return 1 if pipeline.stop() else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
