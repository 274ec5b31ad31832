"""The whole pipeline under ``kill -9``, shortened for CI (the long run is ``python -m bench.chaos``).

Every stage runs as its own ``sevisflow`` process (connector, normalize, events, batcher, XML sink,
SEVIS sink) against the session's real Kafka and PostgreSQL and the SEVIS simulator over mutual
TLS, with slow answers, delayed results and a dropped connection. While a small school's activity
is committed and a DSO closes batches with ``sevisflow batch close``, a seeded schedule SIGKILLs
stages and starts them again — the SEVIS sink at least once while the simulator holds its upload
or download. After quiescence the end state is counted against the pure pipeline for the same
school (testkit/chaos.py): nothing lost, nothing duplicated, nothing sent to SEVIS twice,
every document XSD-valid, every accepted batch's results published. Then the counts are shown
not to be blind: a second POST of an accepted BatchID, a batch SEVIS never got and a broken
document each move the figure that must catch them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from testkit.chaos import ORG_ID, Chaos, Plan
from tests.helpers import XSD_DIR

pytestmark = pytest.mark.integration

# 45 s of activity and four kills (every stage dies once per two runs on average): kills 2 and 4 hit the
# SEVIS sink while the simulator holds its upload or download, kill 3 also arms a SEVIS fault.
PLAN = Plan(
    students=40,
    share=0.5,
    activity=30,
    minutes=0.75,
    kills=4,
    seed=5,
    close_every_s=15.0,
    in_flight_share=0.5,
    results_delay_s=2.0,
    fault_every=3,
    settle_timeout_s=240.0,
    verify=False,
)


@pytest.mark.timeout(900)
def test_stages_killed_at_random_lose_nothing_and_send_nothing_twice(kafka_stack, fresh_db, unique, tmp_path):
    pg = {"host": fresh_db.host, "port": fresh_db.port, "dbname": fresh_db.dbname, "user": fresh_db.user}
    chaos = Chaos(PLAN, kafka_stack.bootstrap, pg, fresh_db.dsn, tmp_path / "chaos", str(XSD_DIR), unique)
    report = chaos.run()
    print(report.table(), report.timings)
    f, why = report.figures, json.dumps(report.as_json(), indent=1, default=str)[:6000]
    assert report.total_kills >= 3, why
    assert sum(report.in_flight_kills.values()) >= 1, why
    assert not report.unplanned_exits, why
    assert f["events_expected"] > 0 and f["events_on_topic"] == f["events_expected"], why
    assert f["batches_accepted"] >= 1 and f["records_accepted"] > 0, why
    assert f["lost"] == 0, why
    assert f["duplicated"] == 0, why
    assert f["sent_twice"] == 0, why
    assert f["invalid"] == 0 and f["documents_checked"] >= f["batches_accepted"], why
    assert f["events_unexpected"] == 0 and f["results_missing"] == 0, why
    assert not report.details.get("settle_timed_out"), why

    # the counts are not blind: SEVIS gets a second POST of an accepted BatchID, forgets an accepted
    # batch, and one document in the outbox is broken
    sim = chaos.sim
    with sim.lock:
        key = sorted(sim.batches)[0]
        sim.requests.append({"op": "upload", "org_id": ORG_ID, "batch_id": key[1], "code": "S0010", "at": time.time()})
        del sim.batches[key]
    doc = next(p for p in Path(chaos.settings.sevis.outbox_dir).glob("*/processed/*/*.xml") if p.stem == p.parent.name)
    doc.write_bytes(b"<SEVISBatchCreateUpdateEVStudent/>")
    after, _ = chaos.count()
    assert after["sent_twice"] == 1 and after["lost"] >= 1 and after["invalid"] == 1, after
