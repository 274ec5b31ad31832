"""runner.Pipeline: a stage that fails with a transient error is started again after a backoff;
any other error stops the pipeline and is reported. Fake stage functions, no Kafka."""

from __future__ import annotations

import io
import itertools
import threading
import time

import orjson
import pytest

from sevisflow.app.runner import Pipeline
from sevisflow.core.config import settings_from_mapping
from sevisflow.core.errors import TerminalError, TransientError, UnreachableError
from sevisflow.core.kafka_io import InstanceFenced
from sevisflow.core.observability import _all_probes, probe_names
from tests.helpers import captured_logs

SETTINGS = settings_from_mapping({}, env={})


def _pipeline(**fns) -> Pipeline:
    return Pipeline(SETTINGS, list(fns), functions=fns, serve_metrics=False, restart_base_s=0.05, restart_max_s=0.2)


def _wait(pred, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def logs():
    """The JSON log lines written while the test runs."""
    with captured_logs() as buf:
        yield buf


def _events(buf: io.StringIO) -> list[dict]:
    out = []
    for line in buf.getvalue().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


def test_transient_errors_restart_the_stage_with_backoff_and_are_logged_by_class(logs):
    calls: list[float] = []
    running = threading.Event()

    def flaky(settings, stop):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise UnreachableError("Kafka at 127.0.0.1:1 is not reachable: student Jane Doe")
        if len(calls) <= 3:
            raise TransientError("broker gone", retry_after_s=0.0)
        running.set()
        stop.wait()

    def steady(settings, stop):
        stop.wait()

    p = _pipeline(flaky=flaky, steady=steady).start()
    try:
        _wait(running.is_set)
        assert not p.failed() and not p.stop_event.is_set()
        assert p.restarts() == {"flaky": 3, "steady": 0}
    finally:
        assert p.stop(5) == []
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.09 and gaps[2] >= 0.18, gaps  # 0.05, 0.1, 0.2 (the cap)
    restarts = [e for e in _events(logs) if e.get("event") == "stage.restarting"]
    assert [(e["stage"], e["error"], e["attempt"]) for e in restarts] == [
        ("flaky", "UnreachableError", 1),
        ("flaky", "TransientError", 2),
        ("flaky", "TransientError", 3),
    ]
    assert "Jane" not in logs.getvalue() and "127.0.0.1:1" not in logs.getvalue()  # class only, no message


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after():
    p = Pipeline(SETTINGS, [], restart_base_s=1.0, restart_max_s=30.0, serve_metrics=False)
    assert [p.backoff_s(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 4, 8, 16, 30, 30]
    assert p.backoff_s(1, retry_after_s=5.0) == 5.0
    assert p.backoff_s(1, retry_after_s=500.0) == 30.0


def test_a_terminal_error_stops_every_stage_and_is_reported(logs):
    def broken(settings, stop):
        raise TerminalError("SASL authentication failed")

    stopped = threading.Event()

    def other(settings, stop):
        stop.wait()
        stopped.set()

    p = _pipeline(broken=broken, other=other).start()
    _wait(p.stop_event.is_set)
    failed = p.stop(5)
    assert [(t.name, type(t.error)) for t in failed] == [("broken", TerminalError)]
    assert stopped.is_set() and p.restarts() == {"broken": 0, "other": 0}
    ev = [e for e in _events(logs) if e.get("event") == "stage.failed"]
    assert ev and ev[0]["stage"] == "broken" and ev[0]["error"] == "TerminalError"


def test_stop_during_the_backoff_ends_the_stage_without_a_failure():
    attempts = []

    def always_down(settings, stop):
        attempts.append(1)
        raise UnreachableError("PostgreSQL is not reachable")

    p = Pipeline(
        SETTINGS, ["pg"], functions={"pg": always_down}, serve_metrics=False, restart_base_s=30.0, restart_max_s=30.0
    ).start()
    _wait(lambda: p.threads[0].restarts == 1)
    t0 = time.monotonic()
    assert p.stop(5) == []
    assert time.monotonic() - t0 < 2 and not p.threads[0].thread.is_alive() and attempts == [1]


def test_a_transient_error_while_stopping_is_not_a_failure_and_not_restarted():
    attempts = []

    def dies_on_stop(settings, stop):
        attempts.append(1)
        stop.wait()
        raise TransientError("broker went away during shutdown")

    p = _pipeline(s=dies_on_stop).start()
    _wait(lambda: attempts == [1])
    assert p.stop(5) == [] and attempts == [1] and p.restarts() == {"s": 0}


class _Fenced(InstanceFenced):
    """An InstanceFenced whose "is the identity still in use?" answers come from the test."""

    def __init__(self, answers: list[bool]) -> None:
        super().__init__(SETTINGS.kafka, "g", "g-1", "producer: fenced by a newer instance")
        self.answers = answers

    def identity_in_use(self) -> bool:
        return self.answers.pop(0) if self.answers else False


def test_a_fenced_stage_stands_by_until_its_identity_is_free_then_takes_over(logs):
    runs: list[int] = []
    answers = [True, True, True]
    seen_ready: list = []

    def stage(settings, stop):
        runs.append(1)
        if len(runs) == 1:
            raise _Fenced(answers)
        stop.wait()

    p = Pipeline(SETTINGS, ["proc"], functions={"proc": stage}, serve_metrics=False, standby_check_s=0.05).start()
    try:
        _wait(lambda: p.threads[0].standby or len(runs) == 2)
        seen_ready.append(_all_probes("ready"))
        seen_ready.append(_all_probes("health"))
        _wait(lambda: len(runs) == 2)
        assert answers == [], "it took over before the identity was free"
        assert not p.failed() and not p.stop_event.is_set() and p.threads[0].standbys == 1
        assert p.restarts() == {"proc": 0}, "a standby is not a restart loop"
    finally:
        assert p.stop(5) == []
    assert seen_ready[0][0] is False and "standby: g-1 is active in another process" in seen_ready[0][1]
    assert seen_ready[1] == (True, "ok"), "a standby is alive"
    ev = [e["event"] for e in _events(logs) if e.get("event", "").startswith("stage.")]
    assert ev.count("stage.standby") == 1 and ev.count("stage.taking_over") == 1


def test_a_standby_stops_on_request():
    def stage(settings, stop):
        raise _Fenced([True] * 1000)

    p = Pipeline(SETTINGS, ["proc"], functions={"proc": stage}, serve_metrics=False, standby_check_s=0.05).start()
    _wait(lambda: p.threads[0].standby)
    assert p.stop(5) == [] and not p.threads[0].thread.is_alive()
    assert "stage:proc:standby" not in probe_names()


def test_a_failed_stage_turns_health_false_with_its_name_until_the_pipeline_stops():
    def broken(settings, stop):
        raise TerminalError("SASL authentication failed")

    p = _pipeline(broken=broken).start()
    _wait(p.stop_event.is_set)
    ok, why = _all_probes("health")
    assert not ok and why == "stage:broken: stage broken failed: TerminalError"
    p.stop(5)
    assert "stage:broken" not in probe_names()
