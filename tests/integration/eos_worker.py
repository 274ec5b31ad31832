"""A tiny processor for the exactly-once test: copies input to output and counts per key in state.

Run as ``python -m tests.integration.eos_worker BOOTSTRAP IN OUT STATE GROUP`` so the test can kill -9 it.
"""

from __future__ import annotations

import signal
import sys

from sevisflow.config import KafkaSettings
from sevisflow.kafka_io import Output, StateStore, TransactionalLoop


def main(bootstrap: str, inp: str, out: str, state_topic: str, group: str) -> None:
    def handler(msg, state: StateStore):
        count = int(state.get(msg.partition(), msg.key()) or b"0") + 1
        state.put(msg.partition(), msg.key(), str(count).encode())
        yield Output(out, msg.key(), msg.value() + b"#" + str(count).encode())

    loop = TransactionalLoop(KafkaSettings(bootstrap_servers=bootstrap), group, [inp], handler,
                             transactional_id=f"{group}-worker", state_topic=state_topic, batch_size=50)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    loop.run()


if __name__ == "__main__":
    main(*sys.argv[1:6])
