"""The demo reads a written batch's XML and manifest while the SEVIS sink moves its folder on (ready → sending →
uploaded …): a read that finds the folder gone looks for it again, where it went. No services: a real outbox
folder, its batch moved between the demo's find and its read, as the sink did in a CI run (FileNotFoundError)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sevisflow.app.demo import DemoFailed, read_document
from sevisflow.sinks.outbox import MANIFEST, STATES, BatchDir, Outbox

BATCH_ID = "S1796494551139"
XML = b'<?xml version="1.0"?><SEVISBatchCreateUpdateStudent/>'


class SinkMovesAfterEachFind(Outbox):
    """Moves the batch folder one state on right after each ``find`` answered, ``moves`` times."""

    def __init__(self, root: Path, moves: int) -> None:
        super().__init__(root, root / "quarantine", "America/Chicago")
        self.moves = moves

    def find(self, batch_id: str, day: str | None = None) -> BatchDir | None:
        found = super().find(batch_id, day)
        if found is not None and self.moves:
            self.moves -= 1
            target = found.path.parent.parent / STATES[STATES.index(found.state) + 1] / found.name
            target.parent.mkdir(parents=True, exist_ok=True)
            found.path.rename(target)
        return found


def _written(root: Path) -> dict[str, Any]:
    folder = root / "2026-12-05" / "ready" / BATCH_ID
    folder.mkdir(parents=True)
    (folder / f"{BATCH_ID}.xml").write_bytes(XML)
    (folder / f"{BATCH_ID}.xml").chmod(0o600)
    manifest = {"batch_id": BATCH_ID, "sha256": "ab" * 32}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_a_batch_moved_on_while_the_demo_reads_it_is_read_where_it_went(tmp_path):
    manifest = _written(tmp_path)
    outbox = SinkMovesAfterEachFind(tmp_path, moves=2)
    found, data, mode, got = read_document(outbox, BATCH_ID)
    assert (data, mode, got) == (XML, 0o600, manifest)
    assert found.state == "uploaded" and outbox.moves == 0


def test_a_batch_that_keeps_moving_fails_the_demo_with_a_reason(tmp_path):
    _written(tmp_path)
    with pytest.raises(DemoFailed, match="moved 2 times"):
        read_document(SinkMovesAfterEachFind(tmp_path, moves=3), BATCH_ID, tries=2)
