"""One student changed over and over while the batch is open: the record's size and the batcher's CPU per event.

``python -m bench.batcher.hot_record [--changes 10000] [--repeat 3] [--compare-with REV] [--json-out FILE]``

One open record (a PersonalInfo e-mail change, SEVIS ID known) is replaced ``--changes`` times through
``BatcherStage.handle``, committed every 200 events with the open-batch view published, as the stage's
transactional loop does (memory store, no Kafka). Per fifth of the run: the CPU microseconds per event,
the largest state value the commit wrote (a changelog record; the limit is 8 MiB) and the largest output.
With ``--compare-with REV`` the code of git revision REV is measured in turn with the working tree, each
repeat in a fresh child process (medians of ``--repeat``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMMIT_EVERY = 200
PARTS = 5


def measure(changes: int) -> dict[str, Any]:
    """One run in this process (the child's entry point)."""
    from bench.batcher.big_open_batch import _Msg
    from sevisflow.core.serde import registry
    from sevisflow.core.state import open_committed
    from sevisflow.processors.batcher.stage import BatcherStage, BatcherStore
    from testkit.batcher import BASE_MS, ORG, event
    from testkit.settings import make_settings

    school = {"org_id": ORG, "dso_user_ids": ["DSOUSER001"]}
    settings = make_settings(
        None,
        unique="hot",
        school=school,
        state={"backend": "memory"},  # no folder: the memory store writes none
    )
    stage, store = BatcherStage(settings), BatcherStore(open_committed(settings.state, "bench-hot"))
    store.partitions.add(0)
    part = max(changes // PARTS, COMMIT_EVERY)
    parts: list[dict[str, float]] = []
    biggest_state = biggest_output = 0
    started = time.process_time()
    for i in range(changes):
        ev = event("S0000001", n=i, sevis_id="N0000000001")
        msg = _Msg(
            settings.topics.events, registry().encode("sevisflow.events.SevisEvent", ev), ORG.encode(), i, BASE_MS
        )
        outs = stage.handle(msg, store)
        if i % COMMIT_EVERY == COMMIT_EVERY - 1:
            outs += stage.view_outputs(store)
            staged = store.staged()
            biggest_state = max([biggest_state, *(len(v) for kv in staged.values() for v in kv.values() if v)])
            store.commit()
        biggest_output = max([biggest_output, *(len(o.value or b"") for o in outs)])
        if (i + 1) % part == 0:
            now = time.process_time()
            parts.append(
                {
                    "after": i + 1,
                    "cpu_us_per_event": (now - started) / part * 1e6,
                    "largest_state_value_kib": biggest_state / 1024,
                    "largest_output_kib": biggest_output / 1024,
                }
            )
            started, biggest_state, biggest_output = now, 0, 0
    return {"changes": changes, "parts": parts}


def main(argv: list[str] | None = None) -> int:
    # imported here, not at the top: a child process runs measure() over an older tree's bench package
    from bench.common import side_by_side_main

    return side_by_side_main(argv, "python -m bench.batcher.hot_record", __file__, "changes", 10_000, _line, REPO)


def _line(part: dict[str, Any]) -> str:
    return (
        f"after {part['after']:>7,.0f} changes: {part['cpu_us_per_event']:>8,.0f} µs/event, largest state value "
        f"{part['largest_state_value_kib']:>7,.0f} KiB, largest output {part['largest_output_kib']:>7,.0f} KiB"
    )


if __name__ == "__main__":
    raise SystemExit(main())
