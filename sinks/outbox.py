"""The outbox: a batch is a folder, and its state is the folder it sits in.

Layout (all folders 0700, all files 0600; ``<day>`` is the close day in the
school's time zone, ``<B>`` the BatchID made file-name safe)::

    <outbox_dir>/<day>/ready/<B>/        validated, never sent      <B>.xml  manifest.json
                      /sending/<B>/      an upload was attempted;   + state.json
                                         outcome not known yet
                      /uploaded/<B>/     SEVIS accepted it (S0000); + upload-response.xml
                                         waiting for results
                      /processed/<B>/    results downloaded and     + results/sevis_transaction_log.xml,
                                         published                    results/*.pdf
                      /failed/<B>/       SEVIS refused the whole    + reason.json
                                         file; records re-queued
    <quarantine_dir>/<day>/<B>/          failed XSD validation      <B>.xml  manifest.json  problems.json
                                         (never uploadable)

Every state change is one ``rename`` of the batch folder, so a crash leaves the
batch in exactly one state. Operators inspect with ``ls`` and re-drive a batch by
moving its folder (e.g. ``failed/`` → ``ready/`` after fixing a certificate).
New batch folders are assembled under ``<day>/.tmp/`` (files written, fsynced)
and renamed into ``ready/`` (or the quarantine) in one step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

STATES = ("ready", "sending", "uploaded", "processed", "failed")
MANIFEST = "manifest.json"
STATE_FILE = "state.json"
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def safe_name(batch_id: str) -> str:
    """A file-name-safe, reversible form of a BatchID (14 characters, any character set)."""
    return re.sub(r"[^A-Za-z0-9._-]", lambda m: "%{:02X}".format(ord(m.group())), batch_id) or "%EMPTY"


def day_for(at_ms: int, tz: str) -> str:
    """The calendar day of ``at_ms`` in the school's time zone (never the wall clock)."""
    return datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_private(path: Path, data: bytes) -> None:
    """Write a new 0600 file and fsync it (the folder is fsynced by the caller's rename)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_private(path: Path, data: bytes) -> None:
    """Atomically replace a small file inside a batch folder (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    write_private(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def dump_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True)
class BatchDir:
    """One batch folder: where it is and what state that means."""

    path: Path
    day: str
    state: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def xml_path(self) -> Path:
        return self.path / f"{self.name}.xml"

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))

    def state_data(self) -> dict[str, Any]:
        p = self.path / STATE_FILE
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}

    def save_state(self, data: dict[str, Any]) -> None:
        replace_private(self.path / STATE_FILE, dump_json(data))


class Outbox:
    """The outbox and quarantine folders of one sevisflow installation."""

    def __init__(self, outbox_dir: str | Path, quarantine_dir: str | Path, tz: str) -> None:
        self.root = Path(outbox_dir)
        self.quarantine_root = Path(quarantine_dir)
        self.tz = tz

    # -- lookup

    def find(self, batch_id: str, day: str | None = None) -> BatchDir | None:
        """Where the batch is in the outbox (any state), or None."""
        name = safe_name(batch_id)
        days = [day] if day else self.days()
        for d in days:
            for state in STATES:
                p = self.root / d / state / name
                if p.is_dir():
                    return BatchDir(p, d, state)
        return None

    def find_quarantined(self, batch_id: str, day: str | None = None) -> Path | None:
        name = safe_name(batch_id)
        days = [day] if day else sorted(p.name for p in self.quarantine_root.glob("*") if _DAY_RE.match(p.name))
        for d in days:
            p = self.quarantine_root / d / name
            if p.is_dir():
                return p
        return None

    def days(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _DAY_RE.match(p.name))

    def batches(self, state: str) -> Iterator[BatchDir]:
        """The batches in ``state``, oldest day first, then by name."""
        for d in self.days():
            folder = self.root / d / state
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    if p.is_dir():
                        yield BatchDir(p, d, state)

    # -- writing

    def _assemble(self, day_root: Path, files: dict[str, bytes], target: Path) -> tuple[Path, bool]:
        tmp_root = day_root / ".tmp"
        _mkdir(tmp_root)
        _mkdir(target.parent)
        tmp = tmp_root / f"{target.name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o700)
        try:
            for fname, data in files.items():
                write_private(tmp / fname, data)
            _fsync_dir(tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                if target.is_dir():  # someone (a previous delivery) was first: same bytes, keep theirs
                    return target, False
                raise
            _fsync_dir(target.parent)
            return target, True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def write_ready(self, day: str, batch_id: str, xml: bytes, manifest: dict[str, Any]) -> tuple[BatchDir, bool]:
        """Put a validated batch into ``<day>/ready/`` atomically. Returns (folder, created)."""
        name = safe_name(batch_id)
        existing = self.find(batch_id, day)
        if existing is not None:
            return existing, False
        path, created = self._assemble(self.root / day, {f"{name}.xml": xml, MANIFEST: dump_json(manifest)},
                                       self.root / day / "ready" / name)
        return BatchDir(path, day, "ready"), created

    def write_quarantine(self, day: str, batch_id: str, xml: bytes, manifest: dict[str, Any],
                         problems: list[dict[str, Any]]) -> tuple[Path, bool]:
        """Put a batch that failed validation into the quarantine (never the outbox)."""
        name = safe_name(batch_id)
        existing = self.find_quarantined(batch_id, day)
        if existing is not None:
            return existing, False
        return self._assemble(self.quarantine_root / day,
                              {f"{name}.xml": xml, MANIFEST: dump_json(manifest),
                               "problems.json": dump_json(problems)},
                              self.quarantine_root / day / name)

    def move(self, batch: BatchDir, state: str) -> BatchDir:
        """Change a batch's state: one rename of its folder."""
        if state not in STATES:
            raise ValueError(f"unknown outbox state {state!r}")
        target_parent = self.root / batch.day / state
        _mkdir(target_parent)
        target = target_parent / batch.name
        os.rename(batch.path, target)
        _fsync_dir(target_parent)
        _fsync_dir(batch.path.parent)
        return BatchDir(target, batch.day, state)
