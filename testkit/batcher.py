"""Builders of SevisEvents / commands / results for tests, the bench and demos (no personal data of real people)."""

from __future__ import annotations

from typing import Any

import orjson

ORG = "ABC214F12345000"
BASE_MS = 1_750_000_000_000  # 2025-06-15 15:06:40 UTC


def event(
    student: str,
    kind: str = "PersonalInfo",
    *,
    n: int = 0,
    coalesce_key: str | None = None,
    sevis_id: str | None = "N0000000001",
    payload: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    display_name: str | None = None,
    org: str = ORG,
    table: str = "public.address",
    origin: str = "sis",
    problems: list[str] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A SevisEvent record as the sevis_events processor writes it (``n`` makes ids and times distinct)."""
    if payload is None:
        payload = {"@printForm": "false", "Email": f"s{n}@example.edu"}
    return {
        "event_id": event_id or f"ev-{student}-{kind}-{n}",
        "org_id": org,
        "student_key": student,
        "sevis_id": None if kind == "Create" else sevis_id,
        "kind": kind,
        "coalesce_key": coalesce_key or kind,
        "payload_json": orjson.dumps(payload).decode(),
        "before_json": orjson.dumps(before).decode() if before is not None else None,
        "after_json": orjson.dumps(after).decode() if after is not None else None,
        "origin": origin,
        "display_name": display_name,
        "problems": problems or [],
        "processor_version": "test",
        "lineage": []
        if origin == "dso"
        else [
            {
                "topic": "sis.public.x",
                "partition": 0,
                "offset": n,
                "table": table,
                "lsn": 1000 + n,
                "sequence": None,
                "tx_id": 500 + n,
                "commit_ts_ms": BASE_MS + n * 1000,
            }
        ],
    }


def command(
    kind: str, command_id: str, *, org: str = ORG, at_ms: int = BASE_MS + 3_600_000, **fields: Any
) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "command_id": command_id,
        "org_id": org,
        "kind": kind,
        "dso_user_id": None,
        "student_key": None,
        "record_ids": [],
        "reviewed_revision": None,
        "batch_id": None,
        "reason": None,
        "requested_at_ms": at_ms,
        "payload_json": None,
    }
    cmd.update(fields)
    return cmd


def result(
    batch_id: str,
    request_id: str,
    *,
    student: str | None = None,
    kind: str | None = None,
    status: str = "success",
    sevis_id: str | None = None,
    org: str = ORG,
    error_code: str | None = None,
) -> dict[str, Any]:
    return {
        "org_id": org,
        "batch_id": batch_id,
        "request_id": request_id,
        "student_key": student,
        "kind": kind,
        "status": status,
        "sevis_id": sevis_id,
        "error_code": error_code,
        "error_message": None,
        "process_code": "S0000",
        "processed_at": None,
        "dependents_json": None,
    }


def run(state: Any, *inputs: Any) -> tuple[Any, list[Any]]:
    """Apply the batcher core to each input in turn: the last state and every output, in order."""
    from sevisflow.processors.batcher.core import apply

    outs: list[Any] = []
    for inp in inputs:
        state, o = apply(state, inp)
        outs += o
    return state, outs
