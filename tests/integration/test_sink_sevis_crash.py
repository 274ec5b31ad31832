"""Crash `sevisflow sink sevis` (a real process on real Kafka and the HTTPS simulator) at every side
effect of the SEVIS sink, restart it, and check the end state.

Crashes are real: either ``kill -9`` while SEVIS holds the POST (slow acceptance), or the process's
own ``os._exit(137)`` at a named point just before / just after a side effect
(``SEVISFLOW_CRASH_AT``, see :mod:`tests.crashing`): the outbox moves, the HTTP POST, the
download, publishing results or the requeue command. After the restart:

* SEVIS received the batch exactly once (POSTs per BatchID counted at the simulator);
* an accepted batch's records were never re-queued; its results are on sevis.results (a result
  published twice has the same key and value);
* the batch ends in processed/ (or, when SEVIS refused it, in failed/ with one requeue command id).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sevisflow.core.kafka_io import ensure_topics, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import pipeline_topics
from sevisflow.deploy.local.stack import free_port
from tests.helpers import REPO, http_get, make_settings, stage_env
from tests.upload_support import put_batch, sim_sevis, states

pytestmark = pytest.mark.integration

ACCEPTED_PATH = [
    "sevis.before_move_sending",
    "sevis.after_move_sending",
    "sevis.before_post",
    "sevis.after_post",
    "sevis.before_move_uploaded",
    "sevis.after_move_uploaded",
    "sevis.before_download",
    "sevis.after_download",
    "sevis.before_publish",
    "sevis.after_publish",
    "sevis.before_move_processed",
    "sevis.after_move_processed",
]
REFUSED_PATH = ["sevis.before_requeue", "sevis.after_requeue", "sevis.before_move_failed", "sevis.after_move_failed"]


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the sink exited ({proc.returncode}) waiting for {what}: {log.read_text()[-3000:] if log else ''}"
            )
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Sink:
    """`sevisflow sink sevis` processes over one outbox, one SEVIS simulator, per-test topics."""

    def __init__(self, kafka_stack, unique: str, sim, tmp_path: Path, **sevis) -> None:
        over = {
            "poll_interval_s": 0.2,
            "retry_base_s": 0.1,
            "retry_max_s": 0.5,
            "http_timeout_s": 5.0,
            "repost_after_s": 0.0,
            "repost_after_checks": 1,
            "max_posts": 3,
            **sevis,
        }
        self.settings = make_settings(kafka_stack, unique=unique, sevis=sim_sevis(sim, tmp_path, **over))
        ensure_topics(self.settings.kafka, pipeline_topics(self.settings))
        self.sim = sim
        self.tmp = tmp_path
        self.runs = 0
        self.env = stage_env(self.settings, 0)
        self.env["SEVISFLOW_SCHOOL_ORG_ID"] = self.settings.school.org_id
        self.env.update(
            {
                f"SEVISFLOW_SEVIS_{k.upper()}": str(getattr(self.settings.sevis, k))
                for k in (
                    "xsd_dir",
                    "upload_url",
                    "download_url",
                    "client_cert",
                    "client_key",
                    "ca_bundle",
                    "outbox_dir",
                    "quarantine_dir",
                    *over,
                )
            }
        )

    def start(self, *args: str, crash: str | None = None) -> tuple[subprocess.Popen, Path]:
        self.runs += 1
        log = self.tmp / f"sink-{self.runs}.log"
        env = dict(self.env)
        if crash:
            env["SEVISFLOW_CRASH_AT"] = crash
        with open(log, "w") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.crashing", "sevisflow", "sink", *(args or ("sevis",))],
                cwd=REPO,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                text=True,
            )
        return proc, log

    def crash_at(self, point: str) -> None:
        proc, log = self.start(crash=point)
        try:
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert rc == 137 and f'"point":"{point}"' in log.read_text(), log.read_text()[-3000:]

    def run_until(self, state: str, batch_id: str) -> None:
        port = free_port()
        self.env["SEVISFLOW_METRICS_PORT"] = str(port)
        proc, log = self.start()
        try:
            _wait(lambda: states(self.settings) == {state: [batch_id]}, 120, f"{batch_id} in {state}/", proc, log)
            # stop it only once it is up (signal handlers installed, first pass done)
            _wait(lambda: _ready(port), 60, "/ready", proc, log)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def topic(self, name: str, batch_id: str) -> list[tuple[bytes, dict]]:
        out = []
        for m in read_topic(self.settings.kafka, name):
            if m.value():
                v = registry().decode(m.value())
                if v.get("batch_id") == batch_id:
                    out.append((m.key(), v))
        return out


def _ready(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/ready")[0] == 200
    except OSError:
        return False


def _requeues(sink: Sink, batch_id: str) -> list[dict]:
    return [v for _, v in sink.topic(sink.settings.topics.commands, batch_id) if v.get("kind") == "requeue"]


def _assert_accepted_once(sink: Sink, batch) -> None:
    bid = batch.batch_id
    assert states(sink.settings) == {"processed": [bid]}
    assert sink.sim.post_count(bid) == 1, sink.sim.requests
    assert sink.sim.upload_count(bid, "S0000") == 1
    results = sink.topic(sink.settings.topics.results, bid)
    by_request: dict[str, set] = {}
    for key, v in results:
        by_request.setdefault(v["request_id"], set()).add((key, repr(sorted(v.items()))))
    assert sorted(by_request) == sorted(r["request_id"] for r in batch.records)
    assert all(len(same) == 1 for same in by_request.values()), "a result was published twice with other content"
    assert not _requeues(sink, bid), "an accepted batch's records were re-queued"


@pytest.mark.parametrize("point", ACCEPTED_PATH)
def test_crash_on_the_way_to_processed(kafka_stack, unique, sim, tmp_path, point):
    sink = Sink(kafka_stack, unique, sim, tmp_path)
    batch = put_batch(sink.settings, f"CR{unique[:12]:0>12}")
    sink.crash_at(point)
    assert sim.post_count(batch.batch_id) <= 1
    sink.run_until("processed", batch.batch_id)
    _assert_accepted_once(sink, batch)


@pytest.mark.parametrize("point", REFUSED_PATH)
def test_crash_on_the_way_to_failed(kafka_stack, unique, sim, tmp_path, point):
    """SEVIS refuses the first POST (S0010: someone else's BatchID): re-queued, once, and never posted again."""
    sink = Sink(kafka_stack, unique, sim, tmp_path)
    batch = put_batch(sink.settings, f"RF{unique[:12]:0>12}")
    sim.fail("upload", "S0010", 1)
    sink.crash_at(point)
    sink.run_until("failed", batch.batch_id)
    assert sim.post_count(batch.batch_id) == 1 and not sim.batches
    cmds = _requeues(sink, batch.batch_id)
    assert cmds and {c["command_id"] for c in cmds} == {f"requeue-{batch.batch_id}"}
    # published again only when the crash came after it (same command id: the batcher applies it once)
    assert len(cmds) == (2 if point in ("sevis.after_requeue", "sevis.before_move_failed") else 1)
    assert not sink.topic(sink.settings.topics.results, batch.batch_id)


def test_kill_9_while_sevis_is_slow_to_accept_and_to_register(kafka_stack, unique, sim, tmp_path):
    """The field report: SEVIS holds the POST (it has accepted the file), the sink is killed -9, and after
    the restart SEVIS still answers S0031 for a while. The batch is resolved by download: one POST."""
    sink = Sink(kafka_stack, unique, sim, tmp_path, repost_after_checks=8, repost_after_s=2.0)
    batch = put_batch(sink.settings, f"K9{unique[:12]:0>12}")
    sim.fail("upload", "slow_accept", 1, delay_s=30.0)
    sim.registration_delay_downloads = 4
    proc, log = sink.start()
    try:
        _wait(lambda: sim.upload_count(batch.batch_id, "S0000") == 1, 60, "SEVIS to accept the POST", proc, log)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert states(sink.settings) == {"sending": [batch.batch_id]}
    sink.run_until("processed", batch.batch_id)
    _assert_accepted_once(sink, batch)
    downloads = [r["code"] for r in sim.requests if r["op"] == "download"]
    assert downloads[:4] == ["S0031"] * 4


def test_a_second_sink_on_the_same_outbox_is_refused(kafka_stack, unique, sim, tmp_path):
    sink = Sink(kafka_stack, unique, sim, tmp_path)
    first, log1 = sink.start()
    try:
        _wait(
            lambda: (
                (Path(sink.settings.sevis.outbox_dir) / ".sink-sevis.lock").exists()
                and str(first.pid) in (Path(sink.settings.sevis.outbox_dir) / ".sink-sevis.lock").read_text()
            ),
            60,
            "the first sink to hold the outbox",
            first,
            log1,
        )
        second, log2 = sink.start()
        assert second.wait(60) == 1
        text = log2.read_text()
        assert "in use by another SEVIS sink" in text and f"pid {first.pid}" in text and "Traceback" not in text
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)


def test_operator_requeue_only_when_sevis_has_nothing(kafka_stack, unique, sim, tmp_path):
    """A POST that never reached SEVIS (crash before it), a long grace: the batch waits in sending/ with its
    status; `sink requeue` checks SEVIS first (S0031), then re-queues it once. An accepted batch is refused."""
    sink = Sink(kafka_stack, unique, sim, tmp_path, repost_after_s=3600.0)
    lost = put_batch(sink.settings, f"OL{unique[:12]:0>12}")
    sink.crash_at("sevis.before_post")
    status, log = sink.start("status")
    assert status.wait(60) == 0
    assert "outcome unknown since" in log.read_text() and lost.batch_id in log.read_text()
    proc, log = sink.start("requeue", lost.batch_id)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert states(sink.settings) == {"failed": [lost.batch_id]} and sim.post_count(lost.batch_id) == 0
    cmds = _requeues(sink, lost.batch_id)
    assert len(cmds) == 1 and cmds[0]["command_id"] == f"requeue-{lost.batch_id}"

    taken = put_batch(sink.settings, f"OT{unique[:12]:0>12}")
    sink.crash_at("sevis.after_post")  # SEVIS has it; the sink never recorded the answer
    proc, log = sink.start("requeue", taken.batch_id)
    assert proc.wait(60) == 1 and "SEVIS has batch" in log.read_text()
    assert not _requeues(sink, taken.batch_id) and states(sink.settings)["sending"] == [taken.batch_id]
