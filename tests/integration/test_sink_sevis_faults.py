"""The SEVIS sink against the simulator's fault knobs (real HTTPS; publisher faked, Kafka in the crash tests).

Each test makes SEVIS take (or not take) an upload in a way the client cannot see, and checks that
the batch is resolved by downloading — never posted twice, never re-queued — or, for hostile
downloads, refused with a clear error, nothing published, and resolvable.
"""

from __future__ import annotations

import time

import pytest

from sevisflow.sinks.sevis.uploader import SevisSink, describe, posts_of
from tests.upload_support import FakePublisher, outbox_of, put_batch, settings_for, states

pytestmark = pytest.mark.integration

BATCH = "UPLTEST0000001"


def drive(sink: SevisSink, done, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sink.step()
        if done():
            return
        time.sleep(0.02)
    raise AssertionError(f"did not get there: {states(sink.settings)}")


def finished_once(sim, pub: FakePublisher, settings) -> None:
    """The end state every fault must reach: processed, accepted once, 3 results, nothing re-queued."""
    assert states(settings) == {"processed": [BATCH]}
    assert sim.upload_count(BATCH, "S0000") == 1 and len([b for b in sim.batches if b[1] == BATCH]) == 1
    assert sorted(r["request_id"] for r in pub.published) == sorted({r["request_id"] for r in pub.published})
    assert len(pub.published) == 3 and not pub.requeued


@pytest.mark.parametrize("mode", ["slow_accept", "drop_after"])
def test_accepted_but_the_client_never_saw_the_answer(sim, tmp_path, mode):
    """Slow acceptance (the client times out) and a reset after processing: SEVIS has the batch."""
    settings = settings_for(sim, tmp_path, http_timeout_s=1.0, repost_after_s=3600.0)
    put_batch(settings)
    sim.fail("upload", mode, 1, delay_s=3.0)
    pub = FakePublisher()
    sink = SevisSink(settings, outbox_of(settings), pub)
    sink.step()
    # the POST happened, its outcome is unknown: the batch waits in sending/, visible as such
    assert states(settings) == {"sending": [BATCH]} and sim.post_count(BATCH) == 1
    assert describe(next(outbox_of(settings).batches("sending"))).startswith("outcome unknown since")
    drive(sink, lambda: "processed" in states(settings))
    finished_once(sim, pub, settings)
    assert sim.post_count(BATCH) == 1
    assert [r["op"] for r in sim.requests][:2] == ["upload", "download"]


def test_delayed_registration_within_the_grace_is_waited_out(sim, tmp_path):
    """S0031 right after our own (unanswered) POST means "not registered yet": no re-post before the grace."""
    settings = settings_for(sim, tmp_path, http_timeout_s=1.0, repost_after_checks=6, repost_after_s=0.0, max_posts=3)
    put_batch(settings)
    sim.registration_delay_downloads = 4
    sim.fail("upload", "slow_accept", 1, delay_s=3.0)
    pub = FakePublisher()
    drive(SevisSink(settings, outbox_of(settings), pub), lambda: "processed" in states(settings))
    finished_once(sim, pub, settings)
    assert sim.post_count(BATCH) == 1
    assert [r["code"] for r in sim.requests if r["op"] == "download"][:4] == ["S0031"] * 4


def test_registration_slower_than_the_grace_never_makes_sevis_process_twice(sim, tmp_path):
    """Past the grace the same BatchID is posted again: SEVIS answers S0010 (it has it), which after our
    own POST is "unknown" again: resolved by download, not re-queued. SEVIS processed it once."""
    settings = settings_for(sim, tmp_path, http_timeout_s=1.0, repost_after_checks=2, repost_after_s=0.0, max_posts=3)
    put_batch(settings)
    sim.registration_delay_downloads = 3
    sim.fail("upload", "drop_after", 1)
    pub = FakePublisher()
    drive(SevisSink(settings, outbox_of(settings), pub), lambda: "processed" in states(settings))
    finished_once(sim, pub, settings)
    assert sim.post_count(BATCH) == 2 and sim.upload_count(BATCH, "S0010") == 1
    folder = next(outbox_of(settings).batches("processed"))
    assert [p.code for p in posts_of(folder)] == [None, "S0010"]


def test_unknown_outcome_waits_visibly_and_posts_at_most_max_posts(sim, tmp_path):
    """Every POST dropped before SEVIS looked at it, S0031 forever: re-posted after the grace, at most
    max_posts times, then it waits for the operator; nothing is ever re-queued on its own."""
    settings = settings_for(sim, tmp_path, max_posts=2)
    put_batch(settings)
    sim.fail("upload", "drop", 100)
    pub = FakePublisher()
    sink = SevisSink(settings, outbox_of(settings), pub)
    for _ in range(30):
        sink.step()
        time.sleep(0.02)
    assert states(settings) == {"sending": [BATCH]} and sim.post_count(BATCH) == 2 and not pub.requeued
    status = describe(next(outbox_of(settings).batches("sending")), max_posts=2)
    assert "outcome unknown since" in status and "S0031" in status and "sink requeue" in status


def test_a_refusal_after_an_unknown_post_requeues_nothing(sim, tmp_path):
    """The first POST is lost (unknown), the re-post is refused (S0013): the first may still have been
    taken, so nothing is re-queued and nothing is posted again; the status asks for the operator."""
    settings = settings_for(sim, tmp_path, max_posts=3)  # a school that allows re-posting
    put_batch(settings)
    sim.fail("upload", "drop", 1)  # the first POST: no answer
    sim.fail("upload", "S0013", 1)  # the re-post (after S0031; grace 0 in this test): refused
    pub = FakePublisher()
    sink = SevisSink(settings, outbox_of(settings), pub)
    for _ in range(30):
        sink.step()
        time.sleep(0.02)
    bd = next(outbox_of(settings).batches("sending"))
    assert [p.code for p in posts_of(bd)] == [None, "S0013"]
    assert states(settings) == {"sending": [BATCH]} and not pub.requeued and sim.post_count(BATCH) == 2
    assert "a later POST was refused (S0013)" in describe(bd)
    assert [r["code"] for r in sim.requests if r["op"] == "download"][-1] == "S0031"  # still checked by download


def test_s0010_to_our_first_post_is_someone_elses_batch_id_and_requeues(sim, tmp_path):
    settings = settings_for(sim, tmp_path)
    batch = put_batch(settings)
    sim.fail("upload", "S0010", 1)
    pub = FakePublisher()
    drive(SevisSink(settings, outbox_of(settings), pub), lambda: "failed" in states(settings))
    assert pub.requeued == [{"batch_id": BATCH, "record_ids": [r["record_id"] for r in batch.records], "code": "S0010"}]
    assert sim.post_count(BATCH) == 1 and not pub.published


@pytest.mark.parametrize(
    "mode, kind, over",
    [
        ("foreign_log", "sevis_mismatch", {}),
        ("bomb", "sevis_limit", {}),
        ("huge", "sevis_limit", {"max_response_bytes": 1024 * 1024}),
    ],
)
def test_hostile_downloads_publish_nothing_and_stay_resolvable(sim, tmp_path, mode, kind, over):
    settings = settings_for(sim, tmp_path, **over)
    put_batch(settings)
    pub = FakePublisher()
    sink = SevisSink(settings, outbox_of(settings), pub)
    sim.fail("download", mode, 1)
    sink.step()  # upload
    sink.step()  # download: refused
    assert states(settings) == {"uploaded": [BATCH]} and not pub.published
    bd = next(outbox_of(settings).batches("uploaded"))
    assert bd.state_data()["history"][-1] == {
        "at": bd.state_data()["history"][-1]["at"],
        "what": "download_refused",
        "kind": kind,
    }
    assert "last error: unusable results" in describe(bd)
    assert not (bd.path / "results").exists() and not list(bd.path.glob(".results-*"))
    # the next download is a good one: resolved without the operator
    drive(sink, lambda: "processed" in states(settings))
    finished_once(sim, pub, settings)
