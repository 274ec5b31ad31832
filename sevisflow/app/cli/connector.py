"""``sevisflow connector run|status``: the PostgreSQL CDC connector.

``run`` streams the SIS database into ``<topic.prefix>.<schema>.<table>`` until SIGTERM/SIGINT
(then it waits for Kafka's acks and confirms the last position before exiting).
``status`` shows what the running connector last reported (state, events/s, last event,
snapshot progress) and the slot's live lag from PostgreSQL.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

import orjson

from sevisflow.app.cli.common import add_json_flag, format_table, print_json, settings_from_args
from sevisflow.core.log import get_logger, get_status_logger
from sevisflow.core.observability import serve_for

log = get_logger("sevisflow.connector")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "connector",
        help="run or inspect the PostgreSQL CDC connector",
        description="Logical replication (pgoutput) from the SIS into Debezium-compatible topics.",
    )
    csub = p.add_subparsers(dest="connector_command", metavar="ACTION", required=True)
    run = csub.add_parser("run", help="snapshot (per snapshot.mode) and stream until stopped")
    run.set_defaults(func=cmd_run)
    st = csub.add_parser("status", help="events/s, slot lag, last event time, snapshot progress")
    add_json_flag(st)
    st.set_defaults(func=cmd_status)


def cmd_run(args: argparse.Namespace) -> int:
    from sevisflow.connectors.postgres import run_connector

    settings = settings_from_args(args)
    masked = settings.masked()
    log.info(
        "connector.config",
        connector=masked["connector"],
        postgres=masked["postgres"],
        kafka={"bootstrap_servers": masked["kafka"]["bootstrap_servers"]},
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("connector.signal", signal=signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    server = serve_for(settings.metrics.port, settings.metrics.host)
    from sevisflow.app.runner import ROLES, announce
    from sevisflow.core.observability import ProgressReporter, set_progress_interval

    set_progress_interval(settings.metrics.progress_interval_s)
    announce(["connector"], server)  # the start-up line, then a progress line per interval
    get_status_logger().info("stage.started", stage="connector", role=ROLES["connector"])
    progress = ProgressReporter(["connector"], stop).start()
    try:
        run_connector(settings, stop)
    finally:
        progress.stop()
        if server:
            server.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    return 0


def status_data(settings: Any) -> dict[str, Any]:
    """The connector's last reported status plus live slot facts (no row values)."""
    from sevisflow.connectors.postgres.offsets import StateStore

    c = settings.connector
    store = StateStore(c.offsets_dir, c.name, c.slot_name)
    out: dict[str, Any] = {
        "connector": c.name,
        "slot": c.slot_name,
        "reported": None,
        "slot_live": None,
        "snapshot_state": None,
    }
    if store.status_path.exists():
        out["reported"] = orjson.loads(store.status_path.read_bytes())
    if store.path.exists():
        state = store.load()
        out["snapshot_state"] = {
            "completed": state.snapshot_completed,
            "in_progress": None
            if state.snapshot is None
            else {
                "table": state.snapshot.current,
                "rows": state.snapshot.rows,
                "tables_done": len(state.snapshot.done),
                "tables": len(state.snapshot.tables),
                "total_estimate": state.snapshot.total_estimate,
            },
        }
    try:
        import psycopg

        from sevisflow.connectors.postgres.admin import slot_info

        with psycopg.connect(settings.postgres.conninfo(), autocommit=True, connect_timeout=5) as conn:
            slot = slot_info(conn, c.slot_name)
        out["slot_live"] = (
            None
            if slot is None
            else {
                "active": slot.active,
                "active_pid": slot.active_pid,
                "lag_bytes": slot.lag_bytes,
                "confirmed_flush_lsn": slot.confirmed_flush_lsn,
                "wal_status": slot.wal_status,
            }
        )
    except Exception as exc:  # noqa: BLE001 - status must show what it can
        out["slot_live_error"] = (
            type(exc).__name__ + ": " + str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        )
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from sevisflow.connectors.postgres.pgoutput import format_lsn

    data = status_data(settings_from_args(args))
    if args.json:
        print_json(data)
        return 0 if (data["reported"] or data["slot_live"]) else 1
    rep = data["reported"] or {}
    live = data["slot_live"] or {}
    snap = rep.get("snapshot") or {}
    age = ""
    if rep.get("updated_ms"):
        age = f"{(time.time() * 1000 - rep['updated_ms']) / 1000:.0f}s ago"
    last = rep.get("last_event_ms")
    rows = [
        ("connector", data["connector"]),
        ("slot", data["slot"]),
        ("state", f"{rep.get('state', 'unknown')} (reported {age})" if rep else "no status reported yet"),
        ("events/s", rep.get("events_per_second", "")),
        ("events total", rep.get("events_total", "")),
        ("last event", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last / 1000)) if last else "none"),
        ("slot lag bytes", live.get("lag_bytes", rep.get("slot_lag_bytes", ""))),
        ("slot active", live.get("active", "") if live else "slot not found"),
        ("confirmed lsn", format_lsn(live["confirmed_flush_lsn"]) if live.get("confirmed_flush_lsn") else ""),
        ("snapshot", _snapshot_text(snap, data.get("snapshot_state"))),
    ]
    if rep.get("last_error"):
        rows.append(("last error", rep["last_error"]))
    if data.get("slot_live_error"):
        rows.append(("postgres", data["slot_live_error"]))
    print(format_table(["field", "value"], rows))
    return 0 if (data["reported"] or data["slot_live"]) else 1


def _snapshot_text(snap: dict[str, Any], state: dict[str, Any] | None) -> str:
    if snap.get("completed") or (state and state.get("completed") and not state.get("in_progress")):
        return f"completed ({snap.get('rows', '?')} rows)" if snap else "completed"
    if snap:
        total = snap.get("total_estimate") or 0
        pct = f" ~{100 * snap.get('rows', 0) / total:.0f}%" if total else ""
        return f"{snap.get('rows', 0)} rows, {snap.get('tables_done', 0)}/{snap.get('tables', 0)} tables{pct}"
    if state and state.get("in_progress"):
        ip = state["in_progress"]
        return f"interrupted at {ip['rows']} rows, {ip['tables_done']}/{ip['tables']} tables (resumes on start)"
    return "not needed" if state else "unknown"
