"""`sevisflow todo` against a running batcher and real Kafka: due days, a SEVIS rejection, a DSO data item,
marking an item done (recorded, then hidden)."""

from __future__ import annotations

import orjson
import pytest

from sevisflow.core.dlq import dead_letter
from sevisflow.core.kafka_io import delivery_raiser, flush_or_raise, make_producer, produce, read_topic
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import BASE_MS, ORG, event
from tests.batcher_support import DSO, Batcher, cli, send, send_events, wait_for, write_config

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]
TODAY = "2025-07-01"  # BASE_MS is 2025-06-15: a change then is due 2025-07-06 (21 days), 5 days left


def test_the_worklist_shows_due_days_rejections_and_data_items_and_records_done_marks(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        send_events(
            env, [event("S1", n=1, display_name="Chen, Wei"), event("S2", "Create", n=2, display_name="Okafor, Ada")]
        )
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 2)
        code, out, _ = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0, out
        batch_id = orjson.loads(out)["batches"][0]["batch_id"]
        closed = next(
            e for e in wait_for(env, lambda evs: any(e["type"] == "closed" for e in evs)) if e["type"] == "closed"
        )
        rec = next(r for r in orjson.loads(closed["records_json"]) if r["student_key"] == "S1")
        send(
            env,
            env.topics.results,
            "sevisflow.results.SevisResult",
            [
                {
                    "org_id": ORG,
                    "batch_id": batch_id,
                    "request_id": rec["request_id"],
                    "student_key": "S1",
                    "kind": rec["kind"],
                    "status": "failure",
                    "sevis_id": "N0000000001",
                    "error_code": "S1003",
                    "error_message": "SEVIS ID not found",
                    "process_code": None,
                    "processed_at": None,
                    "dependents_json": None,
                }
            ],
        )
        send_events(env, [event("S3", n=3, display_name="Rossi, Gia")])
        letters = [
            dead_letter(
                env.topics.dlq,
                "sevis_events",
                "missing_field",
                f"change {n}: US address city missing",
                BASE_MS + n,
                student_key="S4",
                field="address.us_physical.city",
            )
            for n in range(3)
        ]
        letters.append(dead_letter(env.topics.dlq, "normalize", "bad_json", "not JSON", BASE_MS))
        producer, errors = make_producer(env.kafka), []
        for d in letters:
            produce(producer, d.topic, d.key, d.value, on_delivery=delivery_raiser(errors))
        flush_or_raise(producer, errors)
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 1)

        code, out, _ = cli(capsys, cfg, "todo", "--today", TODAY, "--json")
        assert code == 0, out
        todo = orjson.loads(out)
        by_what = {(i["student_key"], i["what"]): i for i in todo["items"]}
        rejected = by_what[("S1", "rejected")]
        assert rejected["due_on"] == "2025-07-06" and rejected["band"] == "soon"
        assert "S1003" in rejected["detail"][0] and f"batch resend {batch_id}" in rejected["action"]
        assert by_what[("S3", "send")]["rule"]["source"].startswith("8 CFR 214.3(g)(3)")
        assert ("S2", "rejected") not in by_what  # no result for the Create yet: nothing to do
        data = by_what[("S4", "fix data")]  # three dead letters of one student: one item
        assert len(data["detail"]) == 3 and "address.us_physical.city" in data["title"]
        assert not any(i["what"] == "fix data" and i["student_key"] is None for i in todo["items"])

        code, out, _ = cli(capsys, cfg, "todo", "--today", TODAY)
        assert code == 0 and "Chen, Wei — student S1" in out and "soon: due 2025-07-06 (in 5 day(s))" in out

        code, _, err = cli(capsys, cfg, "todo", "done", "wnope", "--dso", DSO, "--note", "x")
        assert code == 1 and "there is no item 'wnope'" in err
        code, out, _ = cli(
            capsys,
            cfg,
            "todo",
            "done",
            rejected["item_id"],
            "--dso",
            DSO,
            "--note",
            "SEVIS ID corrected in RTI",
            "--today",
            TODAY,
        )
        assert code == 0 and "marked done" in out
        marks = [orjson.loads(m.value()) for m in read_topic(env.kafka, env.topics.worklist)]
        assert marks[-1]["item_id"] == rejected["item_id"] and marks[-1]["by"] == DSO
        code, out, _ = cli(capsys, cfg, "todo", "--today", TODAY, "--json")
        assert rejected["item_id"] not in {i["item_id"] for i in orjson.loads(out)["items"]}
        code, out, _ = cli(capsys, cfg, "todo", "--today", TODAY, "--all", "--json")
        shown = {i["item_id"]: i for i in orjson.loads(out)["items"]}
        assert shown[rejected["item_id"]]["done"]["note"] == "SEVIS ID corrected in RTI"
    finally:
        batcher.stop()
