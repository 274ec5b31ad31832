"""The wheel as a user gets it: built from the sources, installed into a fresh virtual environment away
from the checkout, and run against the session's real Kafka and PostgreSQL.

The first test reads the wheel itself: it installs the ``sevisflow`` namespace and nothing else at the
top of site-packages, carries every module of the sources, every Avro schema, the SIS mapping, the SQL
and the topic specs, the C decoder, and no test code. The second installs it (with its declared
dependencies, nothing of this checkout's environment) and runs the installed ``sevisflow`` command the
way the README's by-hand path does: settings checked, SIS schema and a small school loaded by the
installed package, topics created, every stage up to the XML outbox in one ``sevisflow run``, a DSO
reviewing and closing the batch with the installed CLI, and the document the XML sink writes checked
against the official XSD by this test. Wheel builds are cached by source content (tests/wheel_support.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from lxml import etree

from sevisflow.core.config import settings_toml
from sevisflow.deploy.sis.replay import expected_events
from tests.helpers import REPO, TEST_ORG_ID, XSD_DIR
from tests.wheel_support import build_log, fresh_venv

pytestmark = pytest.mark.integration

STUDENTS, SHARE, SEED = 12, 0.5, 5
DSO = "dsotest001"
PRODUCT_DIRS = ("connectors", "processors", "sinks", "deploy", "schemas")


def _names(wheel: Path) -> set[str]:
    return set(zipfile.ZipFile(wheel).namelist())


def test_the_wheel_holds_the_sevisflow_namespace_its_data_and_no_tests(sevisflow_wheel):
    names = _names(sevisflow_wheel)
    dist_info = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    assert len(dist_info) == 1, dist_info
    assert {n.split("/", 1)[0] for n in names} == {"sevisflow", *dist_info}, "only the sevisflow namespace"
    top_level = zipfile.ZipFile(sevisflow_wheel).read(f"{dist_info.pop()}/top_level.txt").decode().split()
    assert top_level == ["sevisflow"], top_level

    modules = {
        f"sevisflow/{p.relative_to(REPO / 'sevisflow').as_posix()}"
        for p in (REPO / "sevisflow").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    for folder in PRODUCT_DIRS:  # the linked stage folders (rglob does not follow the links)
        modules |= {
            f"sevisflow/{p.relative_to(REPO).as_posix()}"
            for p in (REPO / folder).rglob("*.py")
            if "__pycache__" not in p.parts
        }
    assert modules - names == set(), "modules missing from the wheel"

    data = {
        f"sevisflow/{p.relative_to(REPO).as_posix()}"
        for folder in PRODUCT_DIRS
        for suffix in ("*.avsc", "*.sql", "*.toml")
        for p in (REPO / folder).rglob(suffix)
    }
    assert {
        "sevisflow/schemas/sevis_event.avsc",
        "sevisflow/deploy/sis/mapping.toml",
        "sevisflow/deploy/sis/schema.sql",
        "sevisflow/deploy/topics.toml",
    } <= data
    assert data - names == set(), "data the pipeline reads at run time is missing from the wheel"
    assert any(re.fullmatch(r"sevisflow/connectors/postgres/_pgtuple\.[^/]+\.so", n) for n in names), "C decoder"
    compiled = {n.split(".", 1)[0] for n in names if n.endswith(".so")}
    assert {"sevisflow/compiled_core__mypyc", "sevisflow/processors/normalize/view"} <= compiled, build_log(
        sevisflow_wheel
    )

    # test code (and the fixtures and samples that once lived beside the stages) stays in tests/
    tests = sorted(
        n for n in names if re.search(r"(^|/)(tests?|conftest\.py|test_[^/]*\.py|fixtures\.py|samples\.py)(/|$)", n)
    )
    assert tests == [], f"test code in the wheel: {tests}"


def test_the_installed_wheel_runs_the_pipeline_to_an_xsd_valid_document(
    sevisflow_wheel, kafka_stack, fresh_db, unique, tmp_path
):
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = fresh_venv(sevisflow_wheel, tmp_path / "venv")
    config = _write_config(work, kafka_stack, fresh_db, unique)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEVISFLOW_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(SEVISFLOW_CONFIG=str(config), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")

    def sevisflow(*args: str, timeout_s: float = 120) -> str:
        proc = subprocess.run(
            [str(bin_dir / "sevisflow"), *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, f"sevisflow {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        return proc.stdout

    assert sevisflow("--version").strip().endswith("0.1.0")
    assert TEST_ORG_ID in sevisflow("config")
    where = _load_school(bin_dir / "python", work, env, fresh_db.dsn)
    for path in where.values():
        assert Path(path).resolve().is_relative_to((tmp_path / "venv").resolve()), where
    sevisflow("topics", "create")

    events, snapshot_creates = expected_events(STUDENTS, SHARE, SEED, 0)
    assert events and len(snapshot_creates) == len(events), "the school's snapshot gives Creates to report"
    log = work / "run.log"
    with log.open("w") as out:
        run = subprocess.Popen(
            [str(bin_dir / "sevisflow"), "run", "--skip", "sink-sevis"],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        alive = _alive(run, log)
        shown = _poll("the snapshot's Creates ready in the open batch", lambda: _ready(sevisflow, len(events)), alive)
        closed = orjson.loads(
            sevisflow(
                "batch",
                "close",
                "--revision",
                str(shown["revision"]),
                "--dso",
                DSO,
                "--json",
                "--timeout",
                "60",
                timeout_s=120,
            )
        )
        batch_ids = closed.get("batch_ids") or [b["batch_id"] for b in closed.get("batches", [])]
        assert len(batch_ids) == 1, closed
        doc = _poll("the XML sink's document", lambda: _document(work / "outbox", batch_ids[0]), alive)
    finally:
        run.send_signal(signal.SIGTERM)
        rc = run.wait(60)
    assert rc == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]

    assert doc.stat().st_mode & 0o077 == 0, "a document holding student data is 0600"
    tree = etree.parse(str(doc))
    errors = _xsd_errors(tree)
    assert errors == [], errors[:5]
    created = tree.getroot().findall("./CreateStudent/Student")
    assert len(created) == len(events), etree.tostring(tree.getroot())[:2000]  # one Create per new admit


def _write_config(work: Path, kafka: Any, pg: Any, unique: str) -> Path:
    """Settings as a user writes them: no mapping file or topics file given (the packaged ones count)."""
    raw = {
        "kafka": {"bootstrap_servers": kafka.bootstrap},
        "postgres": {"host": pg.host, "port": pg.port, "dbname": pg.dbname, "user": pg.user},
        "connector": {
            "topic.prefix": f"sis{unique}",
            "slot.name": f"slot_{unique}",
            "name": f"conn-{unique}",
            "offsets_dir": str(work / "connector"),
            "heartbeat.interval.ms": 500,
            "offset.flush.interval.ms": 200,
        },
        "school": {"org_id": TEST_ORG_ID, "dso_user_ids": [DSO]},
        "sevis": {
            "xsd_dir": str(XSD_DIR),
            "outbox_dir": str(work / "outbox"),
            "quarantine_dir": str(work / "quarantine"),
        },
        "topics": {
            name: f"{default}.{unique}"
            for name, default in [
                ("students", "sevisflow.students"),
                ("events", "sevis.events"),
                ("commands", "sevis.batch.commands"),
                ("batches", "sevis.batches"),
                ("results", "sevis.results"),
                ("dlq", "sevisflow.dlq"),
                ("open_batches", "sevis.batch.open"),
                ("worklist", "sevis.worklist"),
                ("ledger", "sevis.audit.ledger"),
            ]
        },
    }
    path = work / "sevisflow.toml"
    path.write_text(settings_toml(raw))
    path.chmod(0o600)
    return path


def _load_school(python: Path, work: Path, env: dict[str, str], dsn: str) -> dict[str, str]:
    """The installed package creates the SIS schema and loads the school; returns where it ran from."""
    probe = (
        "import json, sys, sevisflow, sevisflow.connectors.postgres._pgtuple as c\n"
        "from sevisflow.deploy.sis.generator import generate_school\n"
        "from sevisflow.deploy.sis.load import create_schema, load_school\n"
        "from sevisflow.deploy.sis.replay import TODAY\n"
        "create_schema(sys.argv[1])\n"
        f"load_school(sys.argv[1], generate_school({STUDENTS}, {SHARE}, {SEED}, TODAY))\n"
        "print(json.dumps({'package': sevisflow.__file__, 'decoder': c.__file__}))\n"
    )
    proc = subprocess.run(
        [str(python), "-c", probe, dsn], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _alive(run: subprocess.Popen[bytes], log: Path) -> Callable[[], None]:
    def check() -> None:
        assert run.poll() is None, f"`sevisflow run` exited with {run.returncode}:\n{log.read_text()[-3000:]}"

    return check


def _poll(what: str, pred: Callable[[], Any], alive: Callable[[], None], timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        alive()
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.5)


def _ready(sevisflow: Callable[..., str], n: int) -> dict[str, Any] | None:
    shown = orjson.loads(sevisflow("batch", "show", "--json"))
    return shown if (shown.get("counts") or {}).get("ready") == n else None


def _document(outbox: Path, batch_id: str) -> Path | None:
    return next((p for p in outbox.glob(f"*/*/{batch_id}/{batch_id}.xml")), None)


def _xsd_errors(tree: etree._ElementTree) -> list[str]:
    """Validation against the official XSD that declares the document's root element."""
    root = etree.QName(tree.getroot()).localname
    for xsd in sorted(XSD_DIR.glob("*.xsd")):
        declared = etree.parse(str(xsd)).getroot().findall("{http://www.w3.org/2001/XMLSchema}element")
        if any(d.get("name") == root for d in declared):
            schema = etree.XMLSchema(etree.parse(str(xsd)))
            return [] if schema.validate(tree) else [str(e) for e in schema.error_log]
    raise AssertionError(f"no XSD in {XSD_DIR} declares the root element {root}")
