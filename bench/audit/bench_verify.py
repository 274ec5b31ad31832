"""How long `sevisflow verify` takes per batch (the pure part: render + guided batcher replay + hashing).

Builds ``--batches`` batches of ``--size`` records with the real batcher and XML sink in a temp
outbox, then times :func:`sevisflow.app.audit.verify.verify_batch` for each (reading Kafka is not
included: it is printed by the CLI as "Read the log in … s"). Run:

    .venv/bin/python -m bench.audit.bench_verify --batches 5 --size 250
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from sevisflow.app.audit.decode import decode_record
from sevisflow.app.audit.verify import verify_all, verify_batch
from sevisflow.core.ledger import Ledger, LedgerWriter
from sevisflow.core.serde import registry
from testkit.audit_scenario import batcher_run, batcher_verify_context
from testkit.settings import XSD_DIR


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--size", type=int, default=250, help="update records per batch (plus 10 creates)")
    a = ap.parse_args()
    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import load_schema

    t0 = time.perf_counter()
    run = batcher_run(updates=a.size, creates=10, batches=a.batches)
    topics = {"events": "sevis.events", "commands": "sevis.batch.commands", "batches": "sevis.batches"}
    d = {
        k: [decode_record(topics[k], 0, i, key, v, (1, ts)) for i, (key, v, ts) in enumerate(recs)]
        for k, recs in run.items()
    }
    schema = load_schema(XSD_DIR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    atexit.register(shutil.rmtree, tmp, True)  # it holds rendered batches: removed however the bench ends
    outbox = Outbox(tmp / "outbox", tmp / "q", "America/Chicago")
    ids = []
    for x in d["batches"]:
        if x.value["type"] == "closed":
            ev = registry().decode(x.raw)
            sink_closed_batch(ClosedBatch.from_event(ev, orjson.loads(ev["records_json"])), schema, outbox)
            LedgerWriter(Ledger(tmp / "outbox"), "sink-xml", ev["org_id"]).seal_archive(
                outbox.find(ev["batch_id"]), ev["batch_id"]
            )
            ids.append(ev["batch_id"])
    build = time.perf_counter() - t0
    ctx = batcher_verify_context(d, outbox, schema)
    t1 = time.perf_counter()
    ctx.replay_for(d["batches"][0].value["org_id"])
    replay = time.perf_counter() - t1
    times = []
    for bid in ids:
        v = verify_batch(bid, ctx)
        assert v.ok, v.to_json()
        times.append(v.seconds)
    t2 = time.perf_counter()
    rep = verify_all(ctx, Ledger(tmp / "outbox"), anchors={})
    assert rep.ok
    print(
        f"{len(ids)} batches x {a.size + 10} records ({len(d['events'])} events, {len(d['batches'])} batch events); "
        f"built in {build:.1f} s"
    )
    print(f"guided batcher replay of the whole school: {replay * 1000:.0f} ms (once per run)")
    print(
        f"verify per batch (archive + render + compare): median {statistics.median(times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms"
    )
    print(f"verify --all incl. the ledger check: {(time.perf_counter() - t2) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
