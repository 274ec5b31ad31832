"""``make demo``: the whole pipeline on a generated school, on a stack the demo starts itself.

Each step prints what it does and what it found; the first failing step stops the
demo with exit 1 and its reason, and the stack is always stopped at the end.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from lxml import etree

from sevisflow.app.runner import STAGES, Pipeline
from sevisflow.core import PACKAGE_ROOT
from sevisflow.core.config import ConnectorSettings, Settings, settings_from_mapping, settings_toml
from sevisflow.core.errors import SevisflowError
from sevisflow.core.kafka_io import TopicSpec, ensure_topics, make_producer, read_topic
from sevisflow.core.serde import registry
from sevisflow.core.topics import all_topics
from sevisflow.deploy.local.stack import StackInfo, start_stack, stop_stack
from sevisflow.deploy.sis.activity import generate_activity, generate_authorizations
from sevisflow.deploy.sis.exchange import EXCHANGE_TABLES, SCHOLAR_PROGRAM, generate_exchange_activity, with_exchange
from sevisflow.deploy.sis.generator import generate_school
from sevisflow.deploy.sis.load import create_schema, load_school, play_activity

DEMO_ORG_ID = "ZZZ214F99999000"  # the generated school's OrgID (ZZZ: not a real school)
DEMO_TODAY = date(2026, 10, 5)  # a fixed "today" so every demo run generates the same school
DSO_USER_ID = "dsodemo001"  # the demo DSO's SEVIS user id (exactly 10 characters)
DEMO_PROGRAM = "P-1-99999"  # the J-1 research-scholar program the demo school sponsors (fictional number)
RO_USER_ID = "rodemo0001"  # the SEVIS user id of that program's Responsible Officer


class DemoFailed(SevisflowError):
    """A demo step did not give the result it should."""


@dataclass
class DemoContext:
    students: int
    international_share: float
    seed: int
    xsd_dir: str
    activity: int = 150
    scholars: int = 12
    exchange_activity: int = 40
    stack: StackInfo | None = None
    settings: Settings | None = None
    simulator: Any = None
    pipeline: Pipeline | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """Environment for a CLI subprocess: the demo's settings file, nothing else inherited from SEVISFLOW_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEVISFLOW_")}
        env["SEVISFLOW_CONFIG"] = str(self.facts["config_file"])
        return env


def _say(msg: str) -> None:
    print(msg, flush=True)


def _wait(what: str, predicate: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout_s:.0f}s waiting for {what}")
        if ctx_pipeline_failed():
            raise DemoFailed(f"a pipeline stage failed while waiting for {what}: {ctx_pipeline_failed()}")
        time.sleep(every_s)


_RUNNING: list[Pipeline] = []


def ctx_pipeline_failed() -> str:
    for p in _RUNNING:
        failed = p.failed()
        if failed:
            return "; ".join(f"{t.name}: {t.error!r}" for t in failed)
    return ""


def _settled(read: Callable[[], int], quiet_s: float) -> Callable[[], int]:
    """A predicate that is true once ``read()`` is above zero and has not changed for ``quiet_s``."""
    state = {"value": -1, "since": time.monotonic()}

    def check() -> int:
        value = read()
        now = time.monotonic()
        if value != state["value"]:
            state["value"], state["since"] = value, now
            return 0
        return value if value > 0 and now - state["since"] >= quiet_s else 0

    return check


def _count(settings: Settings, topic: str) -> int:
    return sum(1 for _ in read_topic(settings.kafka, topic))


def step_stack(ctx: DemoContext) -> str:
    ctx.stack = start_stack(name="demo", progress=lambda m: _say(f"    {m}"))
    assert ctx.stack.kafka and ctx.stack.postgres
    base = Path(ctx.stack.base)
    raw = {
        "kafka": {"bootstrap_servers": ctx.stack.kafka.bootstrap},
        "postgres": {"host": "127.0.0.1", "port": ctx.stack.postgres.port, "dbname": "sis", "user": "postgres"},
        "connector": {
            "offsets_dir": str(base / "connector"),
            "heartbeat.interval.ms": 2000,
            # the sponsor's J-1 records too (the default list is the F/M tables)
            "table.include.list": ConnectorSettings().table_include_list + [f"public.{t}" for t in EXCHANGE_TABLES],
        },
        "school": {
            "org_id": DEMO_ORG_ID,
            "mapping_file": str(PACKAGE_ROOT / "deploy" / "sis" / "mapping.toml"),
            "dso_user_ids": [DSO_USER_ID],
        },
        "sevis": {
            "xsd_dir": ctx.xsd_dir,
            "outbox_dir": str(base / "outbox"),
            "quarantine_dir": str(base / "quarantine"),
        },
        # the research-scholar program is configured; the J-1 students' program (STUD) is not
        "exchange_programs": [
            {"program_number": DEMO_PROGRAM, "sis_program": SCHOLAR_PROGRAM, "ro_user_id": RO_USER_ID}
        ],
    }
    ctx.settings = settings_from_mapping(raw, env={})
    ctx.facts["raw_settings"] = raw
    return f"Kafka {ctx.stack.kafka.bootstrap}, PostgreSQL 127.0.0.1:{ctx.stack.postgres.port}"


def step_sis(ctx: DemoContext) -> str:
    assert ctx.stack and ctx.stack.postgres
    dsn = ctx.stack.postgres.dsn
    create_schema(dsn)
    school = generate_school(ctx.students, ctx.international_share, ctx.seed, DEMO_TODAY)
    # the international office also sponsors J-1 exchange visitors: scholars (RSCH) and its J-1 students (STUD)
    full = with_exchange(school, ctx.seed, DEMO_TODAY, ctx.scholars)
    counts = load_school(dsn, full)
    ctx.facts["school"], ctx.facts["full"] = school, full
    return ", ".join(f"{t} {n}" for t, n in counts.items())


def step_topics(ctx: DemoContext) -> str:
    assert ctx.settings
    created = ensure_topics(ctx.settings.kafka, all_topics(ctx.settings))
    return f"{len(created)} topics created: {', '.join(sorted(created))}"


def step_prove_slot(ctx: DemoContext) -> str:
    """A logical slot sees a committed change (the path the connector will use)."""
    assert ctx.stack and ctx.stack.postgres
    with psycopg.connect(ctx.stack.postgres.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('demo_probe', 'test_decoding')")
        try:
            conn.execute("UPDATE person SET email = email WHERE person_id = (SELECT min(person_id) FROM person)")
            row = conn.execute(
                "SELECT count(*) FROM pg_logical_slot_get_changes('demo_probe', NULL, NULL) "
                "WHERE data LIKE 'table public.person: UPDATE%'"
            ).fetchone()
            changes = row[0] if row else 0
        finally:
            conn.execute("SELECT pg_drop_replication_slot('demo_probe')")
    if changes != 1:
        raise DemoFailed(f"the logical slot saw {changes} person updates, expected 1")
    return "a logical replication slot received the committed UPDATE"


def step_prove_kafka(ctx: DemoContext) -> str:
    """A message round-trips through the broker."""
    assert ctx.settings
    topic = "sevisflow.app.demo.probe"
    ensure_topics(ctx.settings.kafka, [TopicSpec(topic, 1, 1)])
    producer = make_producer(ctx.settings.kafka)
    producer.produce(topic, key=b"probe", value=b"hello")
    if producer.flush(30):
        raise DemoFailed("Kafka did not acknowledge the probe message")
    got = [m.value() for m in read_topic(ctx.settings.kafka, topic)]
    if got != [b"hello"]:
        raise DemoFailed(f"read back {got!r} instead of the probe")
    return "produced and read back one message"


def step_simulator(ctx: DemoContext) -> str:
    """A SEVIS batch simulator over mutual TLS that knows the school's existing SEVIS IDs (students and exchange
    visitors) and takes batches of the school's code and of its exchange program's number."""
    from sevisflow.sinks.sevis_sim.server import SevisSimulator

    assert ctx.stack and ctx.settings
    full = ctx.facts["full"]
    known = sorted({row["sevis_id"] for rows in full.values() for row in rows if row.get("sevis_id")})
    sim = SevisSimulator(
        Path(ctx.stack.base) / "sevis-certs",
        ctx.xsd_dir,
        known_sevis_ids=known,
        results_delay_s=1.0,
        org_ids=list(ctx.settings.org_ids()),
    )
    sim.start()
    ctx.simulator = sim
    certs = sim.certs
    raw = ctx.facts["raw_settings"]
    raw["sevis"].update(
        {
            "upload_url": sim.upload_url,
            "download_url": sim.download_url,
            "client_cert": str(certs.client_cert),
            "client_key": str(certs.client_key),
            "ca_bundle": str(certs.ca_cert),
            "user_id": DSO_USER_ID,
            "poll_interval_s": 1.0,
            "retry_base_s": 0.5,
            "retry_max_s": 2.0,
        }
    )
    ctx.settings = settings_from_mapping(raw, env={})
    config_file = Path(ctx.stack.base) / "sevisflow.toml"
    config_file.write_text(settings_toml(raw))
    config_file.chmod(0o600)
    ctx.facts["config_file"] = config_file
    return (
        f"listening on {sim.upload_url.rsplit('/', 2)[0]} (client certificate required), {len(known)} SEVIS IDs known"
    )


def step_pipeline(ctx: DemoContext) -> str:
    assert ctx.settings
    ctx.pipeline = Pipeline(ctx.settings, list(STAGES), status_lines=False).start()  # the demo narrates itself
    _RUNNING.append(ctx.pipeline)
    return f"stages running: {', '.join(STAGES)}"


def step_snapshot(ctx: DemoContext) -> str:
    """The connector snapshots the SIS; normalize builds each student's view; new admits become Creates."""
    assert ctx.settings
    s = ctx.settings
    views = _wait("the student views", _settled(lambda: _count(s, s.topics.students), quiet_s=4), 240)
    events = _count(s, s.topics.events)
    ctx.facts["events_after_snapshot"] = events
    return f"{views} student view updates on {s.topics.students}; {events} SEVIS events (Creates for new admits)"


def step_activity(ctx: DemoContext) -> str:
    assert ctx.stack and ctx.stack.postgres and ctx.settings
    school = ctx.facts["school"]
    # a term of changes, then the DSO's approvals of reduced course load, CPT and OPT (and a withdrawal)
    # and a season of the sponsor's J-1 records: arrivals, sites, extensions, early ends, dependents …
    txs = (
        generate_activity(school, ctx.activity, ctx.seed, DEMO_TODAY)
        + generate_authorizations(school, ctx.seed, DEMO_TODAY)
        + generate_exchange_activity(ctx.facts["full"], ctx.seed, DEMO_TODAY, ctx.exchange_activity)
    )
    played = play_activity(ctx.stack.postgres.dsn, txs)
    kinds: dict[str, int] = {}
    for tx in txs:
        kinds[tx.kind] = kinds.get(tx.kind, 0) + 1
    s = ctx.settings
    before = ctx.facts.get("events_after_snapshot", 0)
    events = _wait(
        "the SEVIS events of the activity",
        _settled(lambda: max(0, _count(s, s.topics.events) - before), quiet_s=5),
        300,
    )
    ctx.facts["activity_kinds"] = kinds
    summary = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    return f"{played} SIS transactions committed ({summary}) → {events} more SEVIS events"


def _cli(ctx: DemoContext, *args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sevisflow.app.cli.__main__", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ctx.env(), timeout=timeout_s)
    if check and proc.returncode != 0:
        raise DemoFailed(f"`sevisflow {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc


def step_dso_report(ctx: DemoContext) -> str:
    """A DSO reports what no SIS change triggers: `sevisflow student report <student> reprint`."""
    import orjson

    data = orjson.loads(_cli(ctx, "batch", "show", "--json").stdout)
    records = data.get("records", []) if isinstance(data, dict) else data
    known = sorted({r["student_key"] for r in records if r.get("section") == "update" and r.get("sevis_id")})
    if not known:
        raise DemoFailed("no student with a SEVIS ID in the open batch to report a reprint for")
    student = known[0]
    _say(f"    $ sevisflow student report {student} reprint --reason 02 --dso {DSO_USER_ID}")
    out = orjson.loads(
        _cli(ctx, "student", "report", student, "reprint", "--reason", "02", "--dso", DSO_USER_ID, "--json").stdout
    )
    ctx.facts["reported"] = out
    return f"{out['kind']} for student {student}: {out['outcome']} (origin: DSO {DSO_USER_ID})"


def step_dso_review(ctx: DemoContext) -> str:
    """The DSO reviews the open batch: `sevisflow batch show`."""
    import orjson

    shown = _cli(ctx, "batch", "show", "--width", "100").stdout.rstrip().splitlines()
    _say("    $ sevisflow batch show   (the DSO's terminal, 100 columns; first lines)")
    for line in shown[:14]:
        _say(f"      {line}")
    if len(shown) > 14:
        _say(f"      … {len(shown) - 14} more lines")
    data = orjson.loads(_cli(ctx, "batch", "show", "--json").stdout)
    ctx.facts["open_batch"] = data
    records = data.get("records", data) if isinstance(data, dict) else data
    return f"{len(records)} records in the open batch"


def step_sevis_forgets(ctx: DemoContext) -> str:
    """One student's records will be rejected by SEVIS: the simulator is told it does not know the student's
    SEVIS ID, as if the SIS held a mistyped one (SEVIS answers S1003 for that student's records only)."""
    reported = (ctx.facts.get("reported") or {}).get("student_key")
    records = ctx.facts["open_batch"].get("records", [])
    ready = [
        r
        for r in records
        if r.get("section") == "update"
        and r.get("sevis_id")
        and r.get("status") == "open"
        and r.get("student_key") != reported
    ]
    if not ready:
        raise DemoFailed("no ready update in the open batch for SEVIS to reject")
    victim = ready[0]
    sid = victim["sevis_id"]
    sharing = sum(1 for r in records if r.get("sevis_id") == sid)
    with ctx.simulator.lock:
        ctx.simulator.known.discard(sid)
    ctx.facts["victim"] = {"student_key": victim["student_key"], "sevis_id": sid}
    return (
        f"the simulator no longer knows {sid} (student {victim['student_key']}): its {sharing} record(s) in "
        "this batch will be rejected with S1003"
    )


def step_dso_close(ctx: DemoContext) -> str:
    """The DSO closes what they reviewed: `sevisflow batch close --revision N --dso <SEVIS user id>`."""
    revision = str(ctx.facts["open_batch"]["revision"])  # the revision `batch show` displayed in the review step
    out = _cli(ctx, "batch", "close", "--revision", revision, "--dso", DSO_USER_ID, "--timeout", "60").stdout
    _say(f"    $ sevisflow batch close --revision {revision} --dso {DSO_USER_ID}")
    for line in out.rstrip().splitlines():
        _say(f"      {line}")
    import re

    batch_ids = re.findall(r"\b([A-Za-z0-9-]{14})\b", out)
    closed = [b for b in dict.fromkeys(batch_ids) if _is_closed(ctx, b)]
    if not closed:
        raise DemoFailed("the close printed no BatchID that appears as closed on sevis.batches")
    ctx.facts["batch_ids"] = closed
    return f"closed {len(closed)} batch(es): {', '.join(closed)}"


def step_ro_ev_batch(ctx: DemoContext) -> str:
    """The exchange program's Responsible Officer reviews its open EV batch, reports a DS-2019 reprint and closes
    it: `sevisflow batch --org <program number> show|close`, `sevisflow student --org … report … reprint`."""
    import re

    import orjson

    org = DEMO_PROGRAM
    data = orjson.loads(_cli(ctx, "batch", "--org", org, "show", "--json").stdout)
    if not data.get("records"):
        raise DemoFailed(f"the open EV batch of {org} is empty: no exchange visitor's event reached the batcher")
    shown = _cli(ctx, "batch", "--org", org, "show", "--width", "100").stdout.rstrip().splitlines()
    _show(shown, 12, f"sevisflow batch --org {org} show   (the RO's terminal, 100 columns; first lines)")
    visitors = sorted(
        {
            r["student_key"]
            for r in data["records"]
            if r.get("section") == "update" and r.get("sevis_id") and r.get("status") == "open"
        }
    )
    if visitors:
        out = orjson.loads(
            _cli(ctx, "student", "--org", org, "report", visitors[0], "reprint", "--reason", "05", "--json").stdout
        )
        _say(f"    $ sevisflow student --org {org} report {visitors[0]} reprint --reason 05")
        _say(f"      {out['kind']} for exchange visitor {visitors[0]}: {out['outcome']} (by {out['dso_user_id']})")
        ctx.facts["ev_reprint"] = out
    revision = str(orjson.loads(_cli(ctx, "batch", "--org", org, "show", "--json").stdout)["revision"])
    out = _cli(ctx, "batch", "--org", org, "close", "--revision", revision, "--timeout", "60").stdout
    _show(out.rstrip().splitlines(), 8, f"sevisflow batch --org {org} close --revision {revision}   (the RO)")
    ids = [b for b in dict.fromkeys(re.findall(r"\b(P\d{6}[0-9A-Z]{7})\b", out)) if _is_closed(ctx, b)]
    if not ids:
        raise DemoFailed(f"the close of {org} printed no BatchID that appears as closed on sevis.batches")
    ctx.facts["ev_batch_ids"] = ids
    ctx.facts["batch_ids"] += ids
    return f"closed {len(ids)} EV batch(es) of exchange program {org}, signed by its RO {RO_USER_ID}: {', '.join(ids)}"


def _is_closed(ctx: DemoContext, batch_id: str) -> bool:
    assert ctx.settings
    for msg in read_topic(ctx.settings.kafka, ctx.settings.topics.batches):
        if (value := msg.value()) is None:
            continue
        ev = registry().decode(value)
        if ev["type"] == "closed" and ev.get("batch_id") == batch_id:
            return True
    return False


UPDATE_ELEMENTS = (
    "PersonalInfo",
    "Registration",
    "Program",
    "EducationLevel",
    "Status",
    "FinancialInfo",
    "AuthDropBelowFC",
    "CPTEmployment",
    "OPTEmployment",
    "Dependent",
    "DisciplinaryAction",
    "Reprint",
)
"""The UpdateStudent event elements the demo counts in the written documents."""


EV_ROOT = "SEVISBatchCreateUpdateEV"
DOCUMENTS = {
    "SEVISBatchCreateUpdateStudent": ("Create-UpdateStudent.xsd", "CreateStudent/Student", "UpdateStudent/Student"),
    EV_ROOT: ("Create-UpdateExchangeVisitor.xsd", "CreateEV/ExchangeVisitor", "UpdateEV/ExchangeVisitor"),
}
"""Per document root: the XSD the demo validates it with, its create and update records."""


def step_xml(ctx: DemoContext) -> str:
    """The XML sink renders each closed batch; the demo checks every file against its XSD itself (the students'
    or, for the exchange program's batch, the exchange visitors')."""
    from sevisflow.sinks.outbox import Outbox

    assert ctx.settings
    s = ctx.settings
    outbox = Outbox(s.sevis.outbox_dir, s.sevis.quarantine_dir, s.school.timezone)
    schemas = {
        root: etree.XMLSchema(etree.parse(str(Path(ctx.xsd_dir) / xsd))) for root, (xsd, _, _) in DOCUMENTS.items()
    }
    lines = []
    elements: dict[str, dict[str, int]] = {root: {} for root in DOCUMENTS}
    ctx.facts["batch_ids"] = [b for bid in ctx.facts["batch_ids"] for b in _written(ctx, outbox, bid)]
    ctx.facts["ev_batch_ids"] = [b for b in ctx.facts["batch_ids"] if b.startswith(DEMO_PROGRAM.replace("-", ""))]
    for batch_id in ctx.facts["batch_ids"]:
        found, data, file_mode, manifest = read_document(outbox, batch_id)
        xml_path = found.xml_path
        doc = etree.ElementTree(etree.fromstring(data))
        root = str(doc.getroot().tag)
        if root not in schemas or not schemas[root].validate(doc):
            raise DemoFailed(
                f"{xml_path} does not validate: {schemas[root].error_log.last_error if root in schemas else root}"
            )
        _, creates, updates = DOCUMENTS[root]
        mode = oct(file_mode)
        for record in doc.findall(updates):
            for tag in (str(child.tag) for child in record):
                if tag in UPDATE_ELEMENTS or (root == EV_ROOT and tag not in ("UserDefinedA", "UserDefinedB")):
                    elements[root][tag] = elements[root].get(tag, 0) + 1
        org = doc.findtext("BatchHeader/OrgID")
        lines.append(
            f"{xml_path.relative_to(Path(s.sevis.outbox_dir))}: {root} of {org}, "
            f"{len(doc.findall(creates))} creates + {len(doc.findall(updates))} updates, "
            f"XSD-valid, mode {mode}, sha256 {manifest.get('sha256', '')[:16]}…"
        )
    for line in lines:
        _say(f"      {line}")
    _say(
        "      update elements: "
        + ", ".join(f"{k} {n}" for k, n in sorted(elements["SEVISBatchCreateUpdateStudent"].items()))
    )
    _say("      EV update elements: " + ", ".join(f"{k} {n}" for k, n in sorted(elements[EV_ROOT].items())))
    return f"{len(lines)} document(s) written and validated against the SEVIS XSDs in {ctx.xsd_dir}"


def read_document(outbox: Any, batch_id: str, tries: int = 20) -> tuple[Any, bytes, int, dict[str, Any]]:
    """A written batch's folder, its XML (bytes and file mode, from one open file) and its manifest. The SEVIS
    sink moves the folder on (pending → uploaded → …) while the demo reads it: a read that finds it gone looks
    for the folder again, where it went."""
    for _ in range(tries):
        found = _wait(f"the XML of {batch_id}", functools.partial(outbox.find, batch_id), 120)
        try:
            with open(found.xml_path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode & 0o777
                data = f.read()
            return found, data, mode, found.manifest()
        except FileNotFoundError:
            continue  # moved between finding and reading
    raise DemoFailed(f"the XML of {batch_id} moved {tries} times while the demo read it")


def _written(ctx: DemoContext, outbox: Any, batch_id: str) -> list[str]:
    """The BatchIDs whose documents carry ``batch_id``'s records: itself once written; or, when the XML sink
    refused some of its records (the batch is quarantined, each refused record is a DSO item with the reason),
    the batch it re-closed at once with the valid ones (closed by its ``requeue-<BatchID>-xsd`` command)."""
    where = _wait(f"the XML of {batch_id}", lambda: outbox.find(batch_id) or outbox.find_quarantined(batch_id), 120)
    if not isinstance(where, Path):
        return [batch_id]
    assert ctx.settings
    command_id = f"requeue-{batch_id}-xsd"
    follow = []
    for msg in read_topic(ctx.settings.kafka, ctx.settings.topics.batches):
        value = msg.value()
        ev = registry().decode(value) if value else {}
        if ev.get("type") == "closed" and ev.get("command_id") == command_id:
            follow.append(ev["batch_id"])
    _say(
        f"    {batch_id}: the XML sink refused some of its records (quarantined, each one a DSO item with the "
        f"reason); the valid ones went out at once as {', '.join(follow) or 'nothing'}"
    )
    return follow


def step_results(ctx: DemoContext) -> str:
    """The uploader sends each batch to the simulator over TLS, downloads the log, publishes results."""
    from sevisflow.app.cli.results import batch_results

    _count_results(ctx, ctx.facts["batch_ids"])
    for bid in ctx.facts.get("ev_batch_ids", []):
        rows = batch_results(ctx.settings, bid)
        ok = sum(1 for r in rows if r["status"] == "success")
        if ctx.simulator.upload_count(bid, "S0000") != 1 or not ok:
            raise DemoFailed(
                f"the EV batch {bid} was not accepted by SEVIS (uploads answered S0000: "
                f"{ctx.simulator.upload_count(bid, 'S0000')}, records accepted: {ok})"
            )
        created = sum(
            1 for r in rows if r["status"] == "success" and r.get("kind") == "EV.Create" and r.get("sevis_id")
        )
        _say(
            f"    EV batch {bid} of {DEMO_PROGRAM}: accepted by SEVIS (S0000); {ok} of {len(rows)} exchange "
            f"visitor record(s) accepted, {created} new exchange visitor(s) got a SEVIS ID"
        )
    totals, reasons = ctx.facts["totals"], ctx.facts["reasons"]
    why = "; ".join(f"{n}× {k}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
    return f"records sent {totals['sent']}, accepted {totals['accepted']}, rejected {totals['rejected']}" + (
        f" ({why})" if why else ""
    )


def _results_if(ctx: DemoContext, batch_id: str, expected: int) -> list[dict[str, Any]] | None:
    """The SEVIS results of ``batch_id`` once there are ``expected`` of them (else None: wait on)."""
    from sevisflow.app.cli.results import batch_results

    assert ctx.settings
    rows = batch_results(ctx.settings, batch_id)
    return rows if len(rows) >= expected else None


def _count_results(ctx: DemoContext, batch_ids: list[str]) -> None:
    """Wait for SEVIS's result of every record of ``batch_ids``; add them to the demo's totals."""

    assert ctx.settings
    totals = ctx.facts.setdefault("totals", {"sent": 0, "accepted": 0, "rejected": 0})
    reasons: dict[str, int] = ctx.facts.setdefault("reasons", {})
    for batch_id in batch_ids:
        expected = _records_in_closed(ctx, batch_id)
        rows = _wait(f"SEVIS results of {batch_id}", functools.partial(_results_if, ctx, batch_id, expected), 180)
        out = _cli(ctx, "results", batch_id).stdout.rstrip().splitlines()
        _say(f"    $ sevisflow results {batch_id}   (last lines)")
        for line in out[-6:]:
            _say(f"      {line}")
        totals["sent"] += len(rows)
        for r in rows:
            if r["status"] == "success":
                totals["accepted"] += 1
            else:
                totals["rejected"] += 1
                key = f"{r.get('error_code')} {r.get('error_message')}"
                reasons[key] = reasons.get(key, 0) + 1


def _records_in_closed(ctx: DemoContext, batch_id: str) -> int:
    import orjson

    assert ctx.settings
    for msg in read_topic(ctx.settings.kafka, ctx.settings.topics.batches):
        if (value := msg.value()) is None:
            continue
        ev = registry().decode(value)
        if ev["type"] == "closed" and ev.get("batch_id") == batch_id:
            return len(orjson.loads(ev["records_json"] or "[]"))
    return 0


def step_issues(ctx: DemoContext) -> str:
    """What the DSO still has to look at: dead letters (`sevisflow issues`)."""
    out = _cli(ctx, "issues").stdout.rstrip().splitlines()
    _say("    $ sevisflow issues   (first lines)")
    for line in out[:8]:
        _say(f"      {line}")
    return f"{max(0, len(out) - 2)} line(s) listed for the DSO"


def step_cannot_send(ctx: DemoContext) -> str:
    """Before J-1 support every change of a J-1 person was a "cannot send" item for the DSO. Now the configured
    program's exchange visitors have none (their changes went into the EV batch); the J-1 students of the
    program the settings do not list (STUD) still have theirs, with the fix."""
    from sevisflow.core.dlq import SCHEMA

    assert ctx.settings
    full = ctx.facts["full"]
    keys = {p["person_id"]: p["school_id"] for p in full["person"]}
    by_program: dict[str, set[str]] = {}
    for ev in full.get("exchange_visitor", []):
        by_program.setdefault(ev["sponsor_program"], set()).add(keys[ev["person_id"]])
    cannot: dict[str, int] = {}
    for msg in read_topic(ctx.settings.kafka, ctx.settings.topics.dlq):
        value = msg.value()
        letter = registry().decode(value, SCHEMA) if value else None
        if letter and letter["code"] == "not_reported_visa":
            program = next((p for p, who in by_program.items() if letter.get("student_key") in who), "none")
            cannot[program] = cannot.get(program, 0) + 1
    configured = len(by_program.get(SCHOLAR_PROGRAM, ()))
    if cannot.get(SCHOLAR_PROGRAM):
        raise DemoFailed(
            f'{cannot[SCHOLAR_PROGRAM]} "cannot send" item(s) for exchange visitors of the configured '
            f"program {SCHOLAR_PROGRAM} ({DEMO_PROGRAM})"
        )
    others = ", ".join(f"{n} for program {p} (not configured)" for p, n in sorted(cannot.items())) or "none elsewhere"
    return (
        f'"cannot send" items: 0 for the {configured} exchange visitor(s) of {SCHOLAR_PROGRAM} ({DEMO_PROGRAM}, '
        f"configured); {others}"
    )


def _show(lines: list[str], first: int, title: str) -> None:
    _say(f"    $ {title}")
    for line in lines[:first]:
        _say(f"      {line}")
    if len(lines) > first:
        _say(f"      … {len(lines) - first} more lines")


def step_worklist(ctx: DemoContext) -> str:
    """The DSO's worklist: legal due days, the SEVIS rejection and its fix, and what else the data triggers."""
    import orjson

    todo = orjson.loads(_cli(ctx, "todo", "--json").stdout)
    items = todo["items"]
    lines = _cli(ctx, "todo", "--no-pager").stdout.rstrip().splitlines()
    _show(lines, 22, "sevisflow todo   (first lines)")
    by_what: dict[str, int] = {}
    for i in items:
        by_what[i["what"]] = by_what.get(i["what"], 0) + 1
    _say("      items by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(by_what.items())))
    victim = ctx.facts["victim"]
    rejections = [i for i in items if i["what"] == "rejected" and i["student_key"] == victim["student_key"]]
    if not rejections:
        raise DemoFailed(f"the worklist does not show the SEVIS rejection of student {victim['student_key']}")
    for item in rejections[:1]:
        _say(f"    the rejection, as the worklist shows it ({item['item_id']}):")
        for line in [
            item["title"],
            *item["detail"],
            f"due {item['due_on']} ({item['band']})",
            f"to do: {item['action']}",
        ]:
            _say(f"      {line}")
    batch_id = rejections[0]["title"].rsplit(" ", 1)[1]
    # the fix: the SEVIS ID is right after all (the simulator stands in for SEVIS RTI / the corrected SIS)
    with ctx.simulator.lock:
        ctx.simulator.known.add(victim["sevis_id"])
    _say(f"    fix: SEVIS knows {victim['sevis_id']} again (the simulator stands in for the correction)")
    args = ["batch", "resend", batch_id, "--dso", DSO_USER_ID, "--reason", "SEVIS ID checked in SEVIS RTI"]
    out = _cli(ctx, *args).stdout.rstrip().splitlines()
    _show(out, 8, "sevisflow " + " ".join(args[:3]) + f' --dso {DSO_USER_ID} --reason "SEVIS ID checked in SEVIS RTI"')
    shown = orjson.loads(_cli(ctx, "batch", "show", "--json").stdout)
    revision = str(shown["revision"])
    closed = _cli(ctx, "batch", "close", "--revision", revision, "--dso", DSO_USER_ID, "--timeout", "60").stdout
    _show(closed.rstrip().splitlines(), 8, f"sevisflow batch close --revision {revision} --dso {DSO_USER_ID}")
    import re

    new_ids = [b for b in dict.fromkeys(re.findall(r"\b(S\d{13})\b", closed)) if _is_closed(ctx, b)]
    if not new_ids:
        raise DemoFailed("the close after the resend printed no closed BatchID")
    ctx.facts["batch_ids"] += new_ids
    _count_results(ctx, new_ids)
    after = orjson.loads(_cli(ctx, "todo", "--json").stdout)["items"]
    left = [i for i in after if i["what"] in ("rejected", "resent") and i["student_key"] == victim["student_key"]]
    if left:
        raise DemoFailed(f"the rejection is still in the worklist after SEVIS accepted the resend: {left[0]['title']}")
    head = _cli(ctx, "todo", "--no-pager").stdout.splitlines()[0]
    _say(f"    $ sevisflow todo   (after the fix, first line)\n      {head}")
    ctx.facts["resent"] = sum(1 for i in items if i["what"] == "rejected" and i["student_key"] == victim["student_key"])
    return (
        f"{len(items)} worklist item(s); the rejection of {victim['student_key']} in {batch_id} was fixed, resent "
        f"in {', '.join(new_ids)}, accepted, and left the worklist"
    )


def step_verify(ctx: DemoContext) -> str:
    """An auditor re-derives every closed batch from the log and checks the archive's hash chain."""
    t0 = time.monotonic()
    proc = _cli(ctx, "verify", "--all", timeout_s=300, check=False)
    out = proc.stdout.rstrip().splitlines()
    if proc.returncode != 0:
        for line in out[:30]:
            _say(f"      {line}")
        raise DemoFailed(f"`sevisflow verify --all` exited {proc.returncode}")
    took = time.monotonic() - t0
    _say("    $ sevisflow verify --all")
    for line in out[:20]:
        _say(f"      {line}")
    skipped = [line.strip() for line in out if line.strip().startswith("skipped")]
    if skipped:
        raise DemoFailed(f"verify skipped a check: {skipped[0]}")
    return f"verify --all passed in {took:.1f}s for {len(ctx.facts['batch_ids'])} batch(es)"


STEPS: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("start the local stack (real PostgreSQL + Apache Kafka)", step_stack),
    ("create the reference SIS and load a generated school", step_sis),
    ("create the pipeline topics", step_topics),
    ("prove logical replication", step_prove_slot),
    ("prove a Kafka round trip", step_prove_kafka),
    ("start the SEVIS batch simulator (HTTPS, client certificate)", step_simulator),
    ("start the pipeline: connector, normalize, events, batcher, XML sink, SEVIS sink", step_pipeline),
    ("initial snapshot of the SIS flows through", step_snapshot),
    ("a term of SIS activity", step_activity),
    ("a DSO reports a reprint (no SIS change triggers one)", step_dso_report),
    ("DSO reviews the open batch", step_dso_review),
    ("SEVIS will reject one student's records (the simulator forgets one SEVIS ID)", step_sevis_forgets),
    ("DSO closes the batch", step_dso_close),
    ("the J-1 program's RO reviews, reports a DS-2019 reprint and closes its EV batch", step_ro_ev_batch),
    ("XML batch files in the outbox", step_xml),
    ("upload to SEVIS (simulator), results back into the pipeline", step_results),
    ("items for the DSO", step_issues),
    ('no "cannot send" item for the configured J-1 program\'s exchange visitors', step_cannot_send),
    ("the DSO's worklist: due days, the SEVIS rejection and its fix", step_worklist),
    ("an auditor verifies the archived batches", step_verify),
]


def run_demo(
    students: int = 300,
    international_share: float = 0.35,
    seed: int = 7,
    xsd_dir: str | None = None,
    keep: bool = False,
    activity: int = 150,
    scholars: int = 12,
    exchange_activity: int = 40,
) -> int:
    xsd = xsd_dir or str(Path("../shared/sevis/xsd").resolve())  # the [sevis] xsd_dir default
    ctx = DemoContext(
        students=students,
        international_share=international_share,
        seed=seed,
        xsd_dir=xsd,
        activity=activity,
        scholars=scholars,
        exchange_activity=exchange_activity,
    )
    started = time.monotonic()
    try:
        for number, (title, fn) in enumerate(STEPS, 1):
            _say(f"[{number}/{len(STEPS)}] {title}")
            t0 = time.monotonic()
            result = fn(ctx)
            _say(f"    ok ({time.monotonic() - t0:.1f}s): {result}")
    finally:
        if ctx.pipeline:
            _say("stopping the pipeline")
            failed = ctx.pipeline.stop()
            _RUNNING.clear()
            for t in failed:
                _say(f"    stage {t.name} had failed: {t.error!r}")
        if ctx.simulator:
            ctx.simulator.stop()
        if ctx.stack and not keep:
            _say("stopping the local stack")
            stop_stack(ctx.stack, remove=True)
    totals = ctx.facts.get("totals")
    if totals:
        _say(
            f"summary: {totals['sent']} records sent to SEVIS, {totals['accepted']} accepted, "
            f"{totals['rejected']} rejected"
            + (
                f"; {ctx.facts['resent']} of the rejected were fixed, resent and accepted (each counted as sent "
                "twice: once rejected, once accepted)"
                if ctx.facts.get("resent")
                else ""
            )
        )
    _say(f"demo finished in {time.monotonic() - started:.1f}s")
    return 0
