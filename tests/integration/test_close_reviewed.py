"""Closing exactly what a DSO reviewed, and what a DSO command may do, against a running batcher on real Kafka.

A change that arrives between `batch show` and `batch close --revision N` stays open (docs/DSO-GUIDE.md, "Close
the batch"); the audit trail records the revision the DSO reviewed; on a terminal the close asks for "yes";
hold/release/add-info refuse what the pipeline does not know, and say "already on hold"."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import orjson
import pytest

from sevisflow.core.kafka_io import delivery_raiser, flush_or_raise, make_producer, produce
from sevisflow.processors.batcher.view import build_view
from testkit.batcher import ORG, event
from tests.batcher_support import (
    DSO,
    Batcher,
    batch_events,
    cli,
    closed_of,
    records_of,
    send_events,
    wait_for,
    write_config,
)
from tests.helpers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_log_handler_swap")]


def _show(capsys, cfg) -> dict:
    code, out, err = cli(capsys, cfg, "batch", "show", "--json")
    assert code == 0, err
    return orjson.loads(out)


def test_a_change_between_show_and_close_stays_open_and_the_audit_records_the_reviewed_revision(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        send_events(env, [event("S1", n=1, display_name="Chen, Wei"), event("S2", n=2, display_name="Okafor, Ada")])
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["ready"] == 2)
        shown = _show(capsys, cfg)  # what the DSO reviewed
        revision = shown["revision"]
        assert shown["counts"]["ready"] == 2

        # meanwhile: a new student, and a new change of a record the DSO reviewed
        send_events(env, [event("S3", n=3), event("S1", n=4, payload={"@printForm": "false", "Email": "new@x.edu"})])
        wait_for(
            env,
            lambda evs: (
                build_view(ORG, evs).counts()["records"] == 3
                and build_view(ORG, evs).records["S1:PersonalInfo"]["rev"] > revision
            ),
        )

        # without a terminal, a close must name the revision (or --yes for an unreviewed script close)
        code, _, err = cli(capsys, cfg, "batch", "close", "--dso", DSO)
        assert code == 1 and "say which revision you reviewed" in err and "--revision N" in err
        code, _, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--revision", str(revision + 99))
        assert code == 1 and f"revision {revision + 99} does not exist" in err

        code, out, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--revision", str(revision), "--json")
        assert code == 0, err
        result = orjson.loads(out)
        assert [b["records"] for b in result["batches"]] == [1] and result["reviewed_revision"] == revision
        assert result["plan"]["closing"] == ["S2:PersonalInfo"]
        assert result["plan"]["changed_since"] == ["S1:PersonalInfo"] and result["plan"]["added_since"] == [
            "S3:PersonalInfo"
        ]
        note = result["batches"][0]["note"]
        assert "1 reviewed record(s) changed after revision" in note and f"{DSO} reviewed revision {revision}" in note
        batch_id = result["batches"][0]["batch_id"]

        left = _show(capsys, cfg)
        assert sorted(r["record_id"] for r in left["records"]) == ["S1:PersonalInfo", "S3:PersonalInfo"]

        code, out, err = cli(capsys, cfg, "audit", "batch", batch_id)
        assert code == 0, err
        assert f"reviewed by   {DSO} (revision {revision})" in out

        # a script's unreviewed close: recorded as such
        code, out, err = cli(capsys, cfg, "batch", "close", "--dso", DSO, "--yes", "--json")
        assert code == 0, err
        second = orjson.loads(out)
        assert second["reviewed_revision"] is None
        code, out, _ = cli(capsys, cfg, "audit", "batch", second["batches"][0]["batch_id"])
        assert "reviewed by   none (closed with --yes without a reviewed revision; bound to revision" in out
    finally:
        batcher.stop()
    closed = closed_of(batch_events(env))
    assert [sorted(r["record_id"] for r in records_of(c)) for c in closed] == [
        ["S2:PersonalInfo"],
        ["S1:PersonalInfo", "S3:PersonalInfo"],
    ]
    s1 = next(r for r in records_of(closed[1]) if r["record_id"] == "S1:PersonalInfo")
    assert s1["payload"]["Email"] == "new@x.edu"  # the content closed is the content the second close covered


def _run_on_a_terminal(
    argv: list[str], answer: str, timeout_s: float = 90.0, prompt: bytes = b"Type yes to close:"
) -> tuple[int, str]:
    """Run the CLI with stdin and stdout on a pseudo-terminal, type ``answer`` at the prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sevisflow.app.cli.__main__", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        close_fds=True,
    )
    os.close(slave)
    out, answered = b"", False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not answered and prompt in out:
                os.write(master, answer.encode() + b"\n")
                answered = True
        elif proc.poll() is not None:
            break
    code = proc.wait(30)
    os.close(master)
    return code, out.decode(errors="replace").replace("\r\n", "\n")


def test_on_a_terminal_the_close_shows_the_counts_and_needs_yes(env, tmp_path):
    cfg = write_config(env, tmp_path / "sevisflow.toml", school_extra=f'default_dso = "{DSO}"\n')
    batcher = Batcher(env)
    try:
        send_events(env, [event("S1", n=1), event("S2", n=2), event("S3", "Create", n=3)])
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["ready"] == 3)
        code, out = _run_on_a_terminal(["--config", str(cfg), "batch", "close"], "y")
        assert code == 1 and "Not closed; nothing was sent." in out, out
        assert f"acting as {DSO} (school.default_dso)" in out
        assert "1  CreateStudent (new student)" in out and "2  UpdateStudent PersonalInfo" in out, out
        assert "3  record(s) in all" in out
        assert closed_of(batch_events(env)) == []
        code, out = _run_on_a_terminal(["--config", str(cfg), "batch", "close"], "yes")
        assert code == 0 and "Closed 3 records into 1 batch" in out, out
        # add-info on a terminal: the meaning of each code, then "yes" or nothing is added
        code, out = _run_on_a_terminal(
            [
                "--config",
                str(cfg),
                "student",
                "add-info",
                "S1",
                "--dependent",
                "last=Li,birth-date=2019-03-02,gender=M,birth-country=CN,citizenship=CN,relationship=child",
            ],
            "",
            prompt=b"Type yes to add:",
        )
        assert code == 1 and "birth country   Comoros (CN)" in out and "Nothing was added." in out, out
    finally:
        batcher.stop()
    (closed,) = closed_of(batch_events(env))
    assert f"{DSO} reviewed revision" in closed["reason"]  # confirmed on a terminal: a person reviewed it


def _put_student(env, key: str) -> None:
    """A student normalize knows (sevisflow.students) but no event has brought into the open batch yet."""
    producer = make_producer(env.kafka)
    errors: list = []
    produce(
        producer,
        env.topics.students,
        key.encode(),
        b'{"student_key": "%s"}' % key.encode(),
        on_delivery=delivery_raiser(errors),
    )
    flush_or_raise(producer, errors)


def test_dso_actions_record_who_and_refuse_what_the_pipeline_does_not_know(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "sevisflow.toml")
    batcher = Batcher(env)
    try:
        send_events(
            env,
            [
                event(
                    "S1", n=1, sevis_id="N0000000042", payload={"@printForm": "false", "FullName": {"LastName": "Chen"}}
                )
            ],
        )
        _put_student(env, "S50")
        wait_for(env, lambda evs: build_view(ORG, evs).counts()["records"] == 1)

        # who: --dso or a configured default; nothing without one
        code, _, err = cli(capsys, cfg, "batch", "hold", "S1", "--reason", "check")
        assert code == 1 and "say who you are with --dso" in err
        # the hold reason is checked
        for reason, why in (
            ("", "the hold reason is missing"),
            ("x" * 501, "501 characters long"),
            ("ok\x1b[31m", "control or invisible character (U+001B"),
        ):
            code, _, err = cli(capsys, cfg, "batch", "hold", "S1", "--dso", DSO, "--reason", reason)
            assert code == 1 and why in err, err
        # unknown students are refused; a student normalize knows can be held before any record exists
        code, _, err = cli(capsys, cfg, "batch", "hold", "S404", "--dso", DSO, "--reason", "check")
        assert code == 1 and "student 'S404' is not known to the pipeline" in err
        code, out, err = cli(capsys, cfg, "batch", "hold", "S50", "--dso", DSO, "--reason", "visa question")
        assert code == 0 and "0 open record(s)" in out, err
        held = {h["student_key"]: h for h in _show(capsys, cfg)["held_students"]}
        assert held["S50"]["by"] == DSO and held["S50"]["why"] == "visa question" and held["S50"]["at_ms"]
        code, _, err = cli(capsys, cfg, "batch", "hold", "S50", "--dso", DSO, "--reason", "again")
        assert code == 1 and "already on hold" in err and "visa question" in err
        code, _, err = cli(capsys, cfg, "batch", "release", "S1", "--dso", DSO)
        assert code == 1 and "not on hold; nothing to release" in err

        # add-info: who, the meaning of every code, the known SEVIS ID, a known student
        dep = (
            "last=Chen,first=Mei,birth-date=2019-03-02,gender=F,birth-country=CN,citizenship=CH,"
            "relationship=child,visa=F-2"
        )
        code, _, err = cli(capsys, cfg, "student", "add-info", "S404", "--dso", DSO, "--dependent", dep)
        assert code == 1 and "not known to the pipeline" in err
        code, _, err = cli(
            capsys, cfg, "student", "add-info", "S1", "--dso", DSO, "--dependent", dep, "--sevis-id", "N0000000099"
        )
        assert code == 1 and "--sevis-id N0000000099 differs from N0000000042" in err and "nothing was added" in err
        code, out, err = cli(capsys, cfg, "student", "add-info", "S1", "--dso", DSO, "--dependent", dep)
        assert code == 0, err
        assert "birth country   Comoros (CN)" in out and "citizenship     China (CH)" in out
        assert "visa            F-2 (04)" in out and "relationship    child (02)" in out
        rec = next(r for r in _show(capsys, cfg)["records"] if r["kind"] == "Dependent.Add")
        assert rec["sevis_id"] == "N0000000042" and rec["source"]["dso_user_id"] == DSO
    finally:
        batcher.stop()
    assert not [e for e in batch_events(env) if e["type"] == "student_held" and "S404" in (e["record_json"] or "")]
