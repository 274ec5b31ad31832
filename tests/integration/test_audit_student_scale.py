"""``audit student`` decodes only the records that can concern the student, and its timeline is the whole log's.

Three schools' histories on a real Kafka, in topics of 3 partitions, one school per partition: the
synthetic audit scenario (testkit/audit_scenario.py, with its change topics) and two runs of the real
batcher (:func:`testkit.audit_scenario.batcher_run`) whose student keys overlap the scenario's and each
other's, and whose BatchIDs are the same in both (so joins by BatchID cross schools and partitions),
plus SEVIS results, a failed batch and a requeue command for them. For every student, the timeline
built from the decoded subset must equal the one built by decoding every record (``--decode-all``).
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from sevisflow.app.cli import main
from sevisflow.app.cli.audit import student_from_log
from sevisflow.core.config import Settings, load_settings
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer
from sevisflow.core.serde import registry
from testkit.audit_scenario import BATCH_1, OTHER, STUDENT, batcher_run, scenario_records
from tests.audit_scenario import scenario_config

pytestmark = pytest.mark.integration

ORG_B, ORG_C = "ZZZ214F99999001", "ZZZ214F99999002"
PARTITIONS = 3


def _results_and_failures(org: str, batches: list[tuple[bytes, bytes, int]]) -> Iterator[tuple[str, bytes, int]]:
    """("results"|"batches"|"commands", value, timestamp) for a school's closed batches: a result per record
    (the first batch's first record rejected; the last batch's without a student key, as SEVIS need not
    echo it), and the last batch failed and requeued."""
    closed = [(registry().decode(v), ts) for _, v, ts in batches]
    closed = [(ev, ts) for ev, ts in closed if ev["type"] == "closed"]
    for n, (ev, ts) in enumerate(closed):
        for i, r in enumerate(orjson.loads(ev["records_json"])):
            bad = n == 0 and i == 0
            res = {
                "org_id": org,
                "batch_id": ev["batch_id"],
                "request_id": r["request_id"],
                "student_key": None if n == len(closed) - 1 else r["student_key"],  # joined by BatchID + requestID
                "kind": r["kind"],
                "status": "failure" if bad else "success",
                "error_code": "S1056" if bad else None,
                "processed_at": "2025-06-20",
            }
            yield "results", registry().encode("sevisflow.results.SevisResult", res), ts + 3_600_000
    last, ts = closed[-1]
    bid = last["batch_id"]
    failed = {"org_id": org, "batch_id": bid, "type": "failed", "revision": 0, "at_ms": ts + 1, "reason": "upload"}
    yield "batches", registry().encode("sevisflow.batches.BatchEvent", failed), ts + 1
    cmd = {
        "command_id": f"requeue-{org}",
        "org_id": org,
        "kind": "requeue",
        "batch_id": bid,
        "requested_at_ms": ts + 2,
        "reason": "upload failed",
    }
    yield "commands", registry().encode("sevisflow.commands.BatchCommand", cmd), ts + 2


@pytest.fixture
def three_schools(kafka_stack, unique, tmp_path) -> tuple[Settings, list[str]]:
    cfg = scenario_config(tmp_path, kafka_stack.bootstrap, unique)
    settings = load_settings(cfg, env={})
    t = settings.topics
    names = {"events": t.events, "batches": t.batches, "commands": t.commands, "results": t.results}
    scenario = scenario_records(prefix=f"sis{unique}", **names)
    changes = sorted({topic for topic, *_ in scenario} - set(names.values()))
    ensure_topics(settings.kafka, [TopicSpec(n, PARTITIONS, 1) for n in [*names.values(), *changes]])
    producer = make_producer(settings.kafka)
    for topic, key, value, ts in scenario:
        # change records stay on partition 0 (the scenario's lineage names them there); the school on 0 too
        producer.produce(topic, key=key, value=value, timestamp=ts, partition=0)
    for partition, org in ((1, ORG_B), (2, ORG_C)):
        run = batcher_run(updates=6, creates=2, batches=4, org=org, student_base=36 + 4 * partition)
        extra: dict[str, list[tuple[bytes, bytes, int]]] = {k: list(v) for k, v in run.items()}
        extra["results"] = []
        for name, value, ts in _results_and_failures(org, run["batches"]):
            extra[name].append((org.encode(), value, ts))
        for k, recs in extra.items():
            for key, value, ts in recs:
                producer.produce(names[k], key=key, value=value, timestamp=ts, partition=partition)
    assert producer.flush(30) == 0
    students = [STUDENT, OTHER, "S00000041", "S00000044", "S00000071", "S00000080", "S99999999", "42"]
    return settings, students


def test_student_timeline_from_the_decoded_subset_is_the_whole_logs(three_schools):
    settings, students = three_schools
    partitions_seen: set[str] = set()
    for student in students:
        fast, read = student_from_log(settings, student, timeout_s=60)
        whole, none = student_from_log(settings, student, decode_all=True, timeout_s=60)
        assert none is None and read is not None
        assert fast.to_json() == whole.to_json(), student
        assert read.records.byte_test and read.records.decoded < read.records.read / 4, (student, read.to_json())
        partitions_seen |= {s.ref.split("[")[1][0] for s in fast.steps if "[" in s.ref}
    # the comparison covered records on every partition, the joins by BatchID across schools included
    assert partitions_seen == {"0", "1", "2"}
    s42, _ = student_from_log(settings, STUDENT, timeout_s=60)
    whats = [s.what for s in s42.steps]
    assert {"sis", "event", "batch", "command", "result"} <= {s.stage for s in s42.steps}
    assert any(w.startswith(f"closed into batch {BATCH_1}") for w in whats)
    # a student of the last batch of both batcher schools: the failed batch and its requeue, found by BatchID
    s71 = [s.what for s in student_from_log(settings, "S00000071", timeout_s=60)[0].steps]
    assert any(" failed: " in w for w in s71) and any(w.startswith("requeue of batch") for w in s71)


def test_the_output_says_what_was_read_whole_and_why(three_schools, capsys, tmp_path):
    settings, _ = three_schools
    cfg = tmp_path / "sevisflow.toml"
    capsys.readouterr()
    assert main(["--config", str(cfg), "audit", "student", STUDENT]) == 0
    out = capsys.readouterr().out
    assert f"read whole: {settings.topics.events}, " in out and "(keyed by OrgID, not by student); decoded " in out
    assert "(keyed by the row's primary key); decoded all 6 records" in out
    assert main(["--config", str(cfg), "audit", "student", STUDENT, "--json", "--no-changes"]) == 0
    read = orjson.loads(capsys.readouterr().out)["read"]
    assert read["change_topics"] == [] and read["byte_test"] is True
    assert 0 < read["sevis_records_decoded"] < read["sevis_records_read"]
    assert main(["--config", str(cfg), "audit", "student", STUDENT, "--json", "--decode-all"]) == 0
    assert orjson.loads(capsys.readouterr().out)["read"] == {"decode_all": True}
