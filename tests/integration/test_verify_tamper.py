"""An insider with file-system access against ``sevisflow verify --all``: each tamper case of the audit issue.

One world per module, made by the real stages: the batcher's closed batches on Kafka, the real XML sink
(``sevisflow.sinks.xml.stage.run``: files each batch, seals it on the audit ledger and anchors the head on the
ledger topic in its transaction), the real SEVIS sink stage against the HTTPS simulator (uploads,
downloads, publishes results, seals every file it writes and anchors the head). Each test starts from a
copy of that outbox (restored at the same path: the anchors name the ledger file), tampers with it, and
runs the CLI as an auditor would. Before the change every case below exited 0.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import orjson
import pytest

from sevisflow.app.cli import main
from sevisflow.core.errors import TerminalError
from sevisflow.core.kafka_io import ensure_topics, make_producer
from sevisflow.core.ledger import Ledger, chain
from sevisflow.core.serde import registry
from sevisflow.core.topics import pipeline_topics
from sevisflow.sinks.outbox import Outbox
from sevisflow.sinks.sevis_sim import SevisSimulator
from testkit.audit_scenario import batcher_run
from tests.helpers import XSD_DIR, make_settings
from tests.upload_support import FakePublisher, sim_sevis

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (XSD_DIR / "Create-UpdateStudent.xsd").exists(), reason="no SEVIS XSDs"),
]


def _config(path: Path, settings, xsd_dir: Path = XSD_DIR) -> Path:
    t, s = settings.topics, settings.sevis
    path.write_text(f"""
[kafka]
bootstrap_servers = "{settings.kafka.bootstrap_servers}"
[school]
org_id = "{settings.school.org_id}"
timezone = "{settings.school.timezone}"
[topics]
{
        chr(10).join(
            f'{k} = "{getattr(t, k)}"'
            for k in (
                "students",
                "events",
                "commands",
                "batches",
                "results",
                "dlq",
                "open_batches",
                "worklist",
                "ledger",
            )
        )
    }
[sevis]
outbox_dir = "{s.outbox_dir}"
quarantine_dir = "{s.quarantine_dir}"
xsd_dir = "{xsd_dir}"
""")
    return path


class World:
    def __init__(self, base: Path, settings, sim: SevisSimulator, ids: list[str]) -> None:
        self.base, self.settings, self.sim, self.ids = base, settings, sim, ids
        self.outbox_dir = Path(settings.sevis.outbox_dir)
        self.quarantine_dir = Path(settings.sevis.quarantine_dir)
        self.pristine = base / "pristine"
        self.older_ledger = base / "older-ledger.jsonl"
        self.cfg = _config(base / "sevisflow.toml", settings)

    def restore(self) -> Outbox:
        for d in (self.outbox_dir, self.quarantine_dir):
            shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.pristine / "outbox", self.outbox_dir)
        self.quarantine_dir.mkdir(mode=0o700)
        return Outbox(self.outbox_dir, self.quarantine_dir, self.settings.school.timezone)

    def verify(self, capsys, *extra: str, cfg: Path | None = None) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--config", str(cfg or self.cfg), "verify", "--all", "--no-sources", *extra])
        out = capsys.readouterr()
        return code, out.out + out.err


@pytest.fixture(scope="module")
def world(kafka_stack, tmp_path_factory):
    import uuid

    from sevisflow.sinks.sevis.stage import run as run_sevis
    from sevisflow.sinks.xml.stage import run as run_xml

    base = tmp_path_factory.mktemp("tamper")
    sim = SevisSimulator(base / "certs", XSD_DIR, accept_any_sevis_id=True)
    sim.start()
    unique = uuid.uuid4().hex[:10]
    settings = make_settings(
        kafka_stack,
        unique=unique,
        sevis={
            **sim_sevis(sim, base),
            "poll_interval_s": 0.0,
            "retry_base_s": 0.01,
            "retry_max_s": 0.05,
            "http_timeout_s": 10.0,
        },
    )
    ensure_topics(settings.kafka, pipeline_topics(settings))
    run = batcher_run(updates=4, creates=1, batches=2)
    t = settings.topics
    names = {"events": t.events, "commands": t.commands, "batches": t.batches}
    producer = make_producer(settings.kafka)
    for k, recs in run.items():
        for key, value, ts in recs:
            producer.produce(names[k], key=key, value=value, timestamp=ts)
    assert producer.flush(30) == 0
    ids = [registry().decode(v)["batch_id"] for _, v, _ in run["batches"] if registry().decode(v)["type"] == "closed"]
    assert len(ids) == 2

    w = World(base, settings, sim, ids)
    # until both batches are sealed, not for a number of idle polls: on a busy CI box the group join alone
    # outlasted 8 idle polls and the sink stopped before it had read anything
    xml_stop = threading.Event()
    xml = threading.Thread(target=run_xml, args=(settings, xml_stop), kwargs={"instance": f"tamper-{unique}"})
    xml.start()
    deadline = time.monotonic() + 120
    while len(Ledger(w.outbox_dir).entries()) < len(ids) and xml.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    xml_stop.set()
    xml.join(60)
    assert [e["batch_id"] for e in Ledger(w.outbox_dir).entries()] == ids, "the XML sink sealed both batches"
    shutil.copy(Ledger(w.outbox_dir).path, w.older_ledger)

    stop = threading.Event()
    errors: list[BaseException] = []

    def sevis() -> None:
        try:
            run_sevis(settings, stop, tick_s=0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    th = threading.Thread(target=sevis, daemon=True)
    th.start()
    outbox = Outbox(w.outbox_dir, w.quarantine_dir, settings.school.timezone)
    deadline = time.monotonic() + 90
    while len(list(outbox.batches("processed"))) < 2 and time.monotonic() < deadline and not errors:
        time.sleep(0.1)
    stop.set()
    th.join(30)
    assert not errors and len(list(outbox.batches("processed"))) == 2, errors
    w.quarantine_dir.mkdir(mode=0o700, exist_ok=True)
    shutil.copytree(w.outbox_dir, w.pristine / "outbox")
    yield w
    sim.stop()


def _processed(ob: Outbox, bid: str):
    bd = ob.find(bid)
    assert bd is not None and bd.state == "processed"
    return bd


def test_untouched_archive_verifies_with_the_anchored_head(world, capsys):
    world.restore()
    code, out = world.verify(capsys)
    assert code == 0, out
    assert out.count("VERIFIED") == 2 and "ledger intact" in out and "on " + world.settings.topics.ledger in out
    entries = Ledger(world.outbox_dir).entries()
    kinds = {(e["batch_id"], e["kind"]) for e in entries}
    assert kinds == {(b, k) for b in world.ids for k in ("archive", "evidence")}
    sealed = {rel for e in entries for rel in (e.get("files") or {})}
    assert {"upload-response.xml", "post-1.json", "post-1.answer.json", "results/sevis_transaction_log.xml"} <= sealed
    assert any(rel.startswith("results/") and rel.endswith(".pdf") for rel in sealed)
    assert f"anchored line {len(entries)} " in out, "every seal was anchored"


def test_answered_batch_moved_into_quarantine_with_a_relinked_ledger_fails(world, capsys):
    """Tamper case 1: before, '0 missing, ledger intact' and exit 0."""
    ob = world.restore()
    bd = _processed(ob, world.ids[0])
    q = world.quarantine_dir / bd.day / bd.name
    q.parent.mkdir(parents=True)
    shutil.move(str(bd.path), q)
    ledger = Ledger(world.outbox_dir)
    kept: list[dict] = []
    for e in ledger.entries():
        if e["batch_id"] != world.ids[0]:
            kept.append(chain(kept, {k: v for k, v in e.items() if k not in ("seq", "prev", "hash")}))
    ledger.path.write_bytes(b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in kept))
    code, out = world.verify(capsys)
    assert code == 1, out
    assert f"batch {world.ids[0]}: SEVIS answered it" in out and "in the quarantine" in out
    assert "validates against the XSDs" in out
    assert "ledger was rewritten" in out or "truncated" in out


@pytest.mark.parametrize("how", ["emptied", "deleted"])
def test_emptied_or_deleted_ledger_fails_against_the_anchor(world, capsys, how):
    """Tamper case 2: before, 'ledger intact, head 0000…' and exit 0."""
    world.restore()
    path = Ledger(world.outbox_dir).path
    if how == "emptied":
        path.write_bytes(b"")
    else:
        path.unlink()
    code, out = world.verify(capsys)
    assert code == 1, out
    assert "the ledger has 0 line(s): it was truncated, emptied or replaced by an older copy" in out


def test_changed_document_and_rewritten_ledger_without_xsds_fails(world, capsys):
    """Tamper case 3: XSDs not loadable, a document changed with its manifest, the ledger re-sealed from scratch."""
    import hashlib

    ob = world.restore()
    bd = _processed(ob, world.ids[1])
    xml = bd.xml_path.read_bytes().replace(b"Springfield", b"Shelbyville", 1)
    assert xml != bd.xml_path.read_bytes()
    bd.xml_path.write_bytes(xml)
    m = bd.manifest()
    m["sha256"] = hashlib.sha256(xml).hexdigest()
    (bd.path / "manifest.json").write_text(orjson.dumps(m).decode())
    ledger = Ledger(world.outbox_dir)
    rewritten: list[dict] = []
    for e in ledger.entries():
        fields = {k: v for k, v in e.items() if k not in ("seq", "prev", "hash")}
        if e["batch_id"] == world.ids[1] and e["kind"] == "archive":
            fields.update(
                xml_sha256=m["sha256"],
                manifest_sha256=hashlib.sha256((bd.path / "manifest.json").read_bytes()).hexdigest(),
            )
        rewritten.append(chain(rewritten, fields))
    ledger.path.write_bytes(b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in rewritten))
    no_xsd = world.base / "no-xsd"
    no_xsd.mkdir(exist_ok=True)
    cfg = _config(world.base / "no-xsd.toml", world.settings, no_xsd)
    code, out = world.verify(capsys, cfg=cfg)
    assert code == 1, out
    assert "skipped render" in out and "SEVIS XSDs not loadable" in out
    assert "ledger was rewritten" in out
    # even --allow-skipped does not hide the rewritten chain
    assert world.verify(capsys, "--allow-skipped", cfg=cfg)[0] == 1


def test_a_check_that_cannot_run_fails_the_verdict_unless_allowed(world, capsys):
    """Tamper case 3, the other half: with nothing changed, missing XSDs no longer count as VERIFIED."""
    world.restore()
    no_xsd = world.base / "no-xsd"
    no_xsd.mkdir(exist_ok=True)
    cfg = _config(world.base / "no-xsd.toml", world.settings, no_xsd)
    code, out = world.verify(capsys, cfg=cfg)
    assert code == 3, out
    assert "INCOMPLETE" in out and "skipped render" in out and "quarantine" not in out
    assert world.verify(capsys, "--allow-skipped", cfg=cfg)[0] == 0
    # the batches topic unreadable (a name that does not exist): the batching check cannot run
    bad = world.base / "no-topic.toml"
    bad.write_text(
        world.cfg.read_text().replace(
            f'batches = "{world.settings.topics.batches}"', 'batches = "sevis.batches.does-not-exist"'
        )
    )
    code, out = world.verify(capsys, cfg=bad)
    assert code in (1, 3) and "does not exist or is not readable" in out, out


@pytest.mark.parametrize(
    "target", ["manifest.json", "results/sevis_transaction_log.xml", "upload-response.xml", "post-1.answer.json", "pdf"]
)
def test_edits_to_sealed_files_fail(world, capsys, target):
    """Tamper case 4: manifest fields other than sha256, the transaction log, the upload response, the I-20s."""
    ob = world.restore()
    bd = _processed(ob, world.ids[0])
    if target == "manifest.json":
        m = bd.manifest()
        m["closed_by"] = "SOMEONE001"
        (bd.path / "manifest.json").write_text(orjson.dumps(m).decode())
        expect = "manifest.json differs from the one sealed"
    else:
        path = next((bd.path / "results").glob("*.pdf")) if target == "pdf" else bd.path / target
        path.write_bytes(path.read_bytes() + b" ")
        rel = path.relative_to(bd.path).as_posix()
        expect = f"{rel} differs from the copy sealed on the ledger"
    code, out = world.verify(capsys)
    assert code == 1, out
    assert expect in out


def test_state_json_is_not_evidence(world, capsys):
    """state.json is timing and display data the sink rewrites (docs/AUDIT.md): editing it proves nothing."""
    ob = world.restore()
    bd = _processed(ob, world.ids[0])
    (bd.path / "state.json").write_text("{}")
    assert world.verify(capsys)[0] == 0


def test_processed_batch_moved_back_to_ready_fails_and_is_never_posted_again(world, capsys):
    """Tamper case 5: before, verify passed and the SEVIS sink could upload it again."""
    from sevisflow.sinks.sevis.uploader import SevisSink

    ob = world.restore()
    bd = _processed(ob, world.ids[0])
    ready = world.outbox_dir / bd.day / "ready" / bd.name
    ready.parent.mkdir(exist_ok=True)
    shutil.move(str(bd.path), ready)
    code, out = world.verify(capsys)
    assert code == 1, out
    assert f"batch {world.ids[0]} was sealed in processed/" in out and "moved backwards" in out
    assert "SEVIS answered it" in out and f"back in {bd.day}/ready/" in out
    # even with the evidence files removed too, the ledger keeps the sink from posting it again
    for p in list(ready.iterdir()):
        if p.name not in ("manifest.json", bd.xml_path.name):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    posts = world.sim.post_count(world.ids[0])
    sink = SevisSink(world.settings, ob, FakePublisher())
    sink.step()
    assert world.sim.post_count(world.ids[0]) == posts and (ob.find(world.ids[0]).state == "ready")
    with pytest.raises(ValueError, match="backwards"):
        ob.move(ob.find(world.ids[1]), "ready")


def test_anchored_head_survives_a_restart_and_catches_an_older_copy(world, capsys):
    """The head lives on Kafka, not in the sinks: restarted sinks accept the true ledger and refuse an older copy;
    verify names the older copy without being given a head."""
    from sevisflow.sinks.sevis.stage import run as run_sevis
    from sevisflow.sinks.xml.stage import ledger_writer

    ob = world.restore()
    ledger_writer(world.settings, ob)  # a restarted XML sink: the ledger holds its anchor
    stop = threading.Event()
    stop.set()
    run_sevis(world.settings, stop)  # a restarted SEVIS sink: reconciles, re-anchors, stops
    assert world.verify(capsys)[0] == 0

    shutil.copy(world.older_ledger, Ledger(world.outbox_dir).path)  # the copy taken before the uploads
    code, out = world.verify(capsys)
    assert code == 1, out
    assert "replaced by an older copy" in out
    with pytest.raises(TerminalError, match="not the one anchored"):
        ledger_writer(world.settings, ob)
    with pytest.raises(TerminalError, match="not the one anchored"):
        run_sevis(world.settings, stop)


def test_a_copy_of_the_outbox_is_verified_against_the_anchors_of_the_original(world, capsys):
    """An auditor's copy elsewhere: the anchors name the original ledger path; without it the anchor check
    cannot run (exit 3, named), with --anchored-as it runs and still catches an older copy."""
    world.restore()
    copy = world.base / "auditor-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(world.outbox_dir, copy / "outbox")
    (copy / "quarantine").mkdir()
    cfg = world.base / "copy.toml"
    cfg.write_text(
        world.cfg.read_text()
        .replace(str(world.outbox_dir), str(copy / "outbox"))
        .replace(str(world.quarantine_dir), str(copy / "quarantine"))
    )
    code, out = world.verify(capsys, cfg=cfg)
    assert code == 3 and "--anchored-as" in out, out
    original = str(Ledger(world.outbox_dir).path)
    assert world.verify(capsys, "--anchored-as", original, cfg=cfg)[0] == 0
    shutil.copy(world.older_ledger, copy / "outbox" / "audit-ledger.jsonl")
    code, out = world.verify(capsys, "--anchored-as", original, cfg=cfg)
    assert code == 1 and "replaced by an older copy" in out, out


def test_xml_sink_killed_between_sealing_and_commit_anchors_the_head_on_restart(kafka_stack, unique, tmp_path):
    """Crash safety of the seal: the ledger line is fsynced before the transaction that anchors it commits.
    Killed at ``kafka.before_commit`` the file is one line ahead of the anchor (never behind); the restarted
    sink replays the closed event, seals nothing new and anchors the head."""
    import subprocess
    import sys

    from sevisflow.core.kafka_io import fence_predecessor, flush_or_raise, produce
    from sevisflow.core.ledger import GENESIS, anchored_head, anchors_for, check_anchors, read_anchors
    from sevisflow.deploy.local.stack import free_port
    from sevisflow.sinks.xml.render import ClosedBatch
    from sevisflow.sinks.xml.stage import run as run_xml
    from sevisflow.sinks.xml.stage import transactional_id
    from testkit.xml_samples import DSO, ORG_ID, create_record
    from tests.crashing import ENV_VAR, EXIT_CODE
    from tests.helpers import REPO, stage_env
    from tests.integration.test_sink_kafka import closed_event

    outbox = tmp_path / "outbox"
    settings = make_settings(
        kafka_stack,
        unique=unique,
        sevis={"outbox_dir": str(outbox), "quarantine_dir": str(tmp_path / "quarantine"), "xsd_dir": str(XSD_DIR)},
    )
    ensure_topics(settings.kafka, pipeline_topics(settings))
    batch = ClosedBatch(ORG_ID, f"LG{unique:0>12}", DSO, 1748921400000, (create_record(1),))
    producer = make_producer(settings.kafka)
    produce(producer, settings.topics.batches, ORG_ID.encode(), closed_event(batch))
    flush_or_raise(producer, [])
    env = {
        **stage_env(settings, free_port()),
        "SEVISFLOW_SEVIS_OUTBOX_DIR": str(outbox),
        "SEVISFLOW_SEVIS_QUARANTINE_DIR": str(tmp_path / "quarantine"),
        "SEVISFLOW_SEVIS_XSD_DIR": str(XSD_DIR),
        "SEVISFLOW_SCHOOL_ORG_ID": settings.school.org_id,
        "SEVISFLOW_INSTANCE": "xml-1",
        ENV_VAR: "kafka.before_commit:1",
    }
    first = subprocess.run(
        [sys.executable, "-m", "tests.crashing", "sevisflow", "sink", "xml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == EXIT_CODE, first.stderr[-2000:]
    ledger = Ledger(outbox)
    entries = ledger.entries()
    assert [e["batch_id"] for e in entries] == [batch.batch_id], "sealed (fsynced) before the commit"
    fence_predecessor(settings.kafka, transactional_id(settings, "xml-1"))  # abort its open transaction now
    before = anchors_for(read_anchors(settings.kafka, settings.topics.ledger) or {}, ledger.path)
    assert anchored_head(before) == (0, GENESIS) and check_anchors(entries, before) == [], "ahead, never behind"

    run_xml(settings, threading.Event(), max_idle_polls=6, instance="xml-1")  # fences the dead one, replays
    assert ledger.entries() == entries, "the replay found the batch sealed: no second line"
    anchors = anchors_for(read_anchors(settings.kafka, settings.topics.ledger) or {}, ledger.path)
    assert check_anchors(entries, anchors) == []
    assert anchored_head(anchors) == (1, entries[0]["hash"]) != (0, GENESIS)
