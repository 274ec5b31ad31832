"""normalize encodes a published view once: the bytes of its ``view_json`` are also what the commit writes to the
state store (``StoreKV.encoded_as``), unless the view changed again before the commit. Whatever the commit points,
the state and the outputs are byte for byte those of encoding the state afresh, and every stored view is the last
one published. No services: the stage's own ``handle`` over the memory store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.batcher.big_open_batch import _Msg
from sevisflow.core.serde import registry
from sevisflow.core.state import open_committed
from sevisflow.processors.normalize.debezium import SisFeed
from sevisflow.processors.normalize.mapping import load_mapping
from sevisflow.processors.normalize.stage import NormalizeStage, NormalizeStore, StoreKV, cache_bound
from testkit.school import ORG, PKS, base_rows, school_history
from testkit.settings import make_settings

REPO = Path(__file__).resolve().parents[2]
STUDENTS = 12


def _feed() -> SisFeed:
    """A school, then per student two e-mail changes in two SIS transactions and one transaction changing the
    e-mail twice: one Kafka transaction may change a view several times."""
    settings = make_settings(school={"org_id": ORG})
    feed = SisFeed(prefix=settings.connector.topic_prefix, primary_keys=PKS)
    school_history(feed, STUDENTS)
    for pid in range(100, 100 + STUDENTS):
        person = {**base_rows(sevis_id=None, status="ADMITTED")["person"], "person_id": pid}
        person.update(school_id=f"S{pid:08d}", email=f"s{pid}@example.org")
        one, two, three = ({**person, "email": f"s{pid}.{j}@example.org"} for j in (1, 2, 3))
        feed.tx(("u", "public.person", person, one))
        feed.tx(("u", "public.person", one, two))
        feed.tx(("u", "public.person", two, three), ("u", "public.person", three, person))
    return feed


def _run(feed: SisFeed, commit_every: int) -> tuple[dict[bytes, bytes], list[tuple[Any, ...]]]:
    """The committed state and every output of the stage over ``feed``, committed every ``commit_every`` records."""
    settings = make_settings(school={"org_id": ORG}, state={"backend": "memory"})
    store = NormalizeStore(open_committed(settings.state, "test-view-encoding"), cache_bound(settings.state))
    stage = NormalizeStage(settings, load_mapping(REPO / "deploy/sis/mapping.toml"), store)
    stage._reached = lambda marks, idle: True  # type: ignore[method-assign]  # no Kafka: the snapshot is all here
    outputs: list[tuple[Any, ...]] = []
    offsets: dict[str, int] = {}
    for i, r in enumerate(feed.records):
        offsets[r.topic] = offsets.get(r.topic, -1) + 1
        outputs += [
            (o.topic, o.key, o.value) for o in stage.handle(_Msg(r.topic, r.value, r.key, offsets[r.topic], 0), store)
        ]
        if i % commit_every == commit_every - 1 or i == len(feed.records) - 1:
            outputs += [(o.topic, o.key, o.value) for o in stage.before_commit(store)]
            store.staged()
            store.commit()
            while stage.normalizer.releasing():
                outputs += [(o.topic, o.key, o.value) for o in stage.on_idle(store)]
                store.staged()
                store.commit()
    return dict(store.committed_partition(0)), outputs


@pytest.mark.parametrize("commit_every", [1, 4, 37, 10_000])
def test_a_view_encoded_for_its_output_is_stored_as_encoded_and_as_a_fresh_encoding_would(commit_every, monkeypatch):
    feed = _feed()
    state, outputs = _run(feed, commit_every)
    last_published: dict[str, bytes] = {}
    for topic, key, value in outputs:
        if topic.endswith("students"):
            last_published[key.decode()] = registry().decode(value)["view_json"].encode()
    views = {k[2:].decode(): v for k, v in state.items() if k.startswith(b"v:")}
    assert len(views) == STUDENTS and views == last_published

    monkeypatch.setattr(StoreKV, "encoded_as", lambda self, key, value, raw: None)
    assert _run(feed, commit_every) == (state, outputs)


def test_a_view_changed_after_it_was_encoded_is_encoded_again():
    kv = StoreKV(NormalizeStore())
    view = {"student_key": "S1", "email": "a"}
    kv.put("v:S1", view)
    kv.encoded_as("v:S1", view, orjson.dumps(view))
    kv.put("v:S1", {**view, "email": "b"})  # a new object: the next unit's copy
    kv.flush()
    assert orjson.loads(kv.store.staged_partition(0)[b"v:S1"]) == {"student_key": "S1", "email": "b"}
