"""The outbox: a batch is a folder, and its state is the folder it sits in.

Layout (all folders 0700, all files 0600; ``<day>`` is the close day in the
school's time zone, ``<B>`` the BatchID made file-name safe)::

    <outbox_dir>/.sink-sevis.lock        held (flock) by the one running SEVIS sink: pid, host, since
    <outbox_dir>/audit-ledger.jsonl      the audit ledger (sevisflow.core.ledger): what each batch folder
                                         held, sealed by the sinks; never rewritten
    <outbox_dir>/<day>/ready/<B>/        validated, never posted            <B>.xml  manifest.json
                      /sending/<B>/      posted (or about to be): SEVIS's    + post-<n>.json, post-<n>.answer.json
                                         answer decides; never re-posted       (append-only evidence), state.json
                                         unless the evidence proves SEVIS
                                         did not take it
                      /uploaded/<B>/     SEVIS has it (S0000, S0030 or a     + upload-response.xml (when answered)
                                         zip): only ever downloaded
                      /processed/<B>/    results downloaded and published    + results/sevis_transaction_log.xml,
                                                                               results/*.pdf
                      /failed/<B>/       SEVIS provably did not take it;     + reason.json
                                         records re-queued
    <quarantine_dir>/<day>/<B>/          failed XSD validation               <B>.xml  manifest.json  problems.json
                                         (never uploadable)

One source of truth: every state change is one ``rename`` of the batch folder, so a
crash leaves the batch in exactly one state, and states only move forward (:meth:`Outbox.move`
refuses e.g. ``processed`` → ``ready``). Inside a folder, the ``post-*`` files are
append-only evidence (created with O_EXCL, never rewritten) that the uploader reads to
decide what a ``sending/`` batch needs; ``state.json`` holds only timing and display
data (next check, counts, history): deleting it changes *when* the next step happens,
never *what* it is. New batch folders are assembled under ``<day>/.tmp/`` (files
written, fsynced) and renamed into ``ready/`` (or the quarantine) in one step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from sevisflow.core.checkpoints import checkpoint
from sevisflow.core.errors import TerminalError

STATES = ("ready", "sending", "uploaded", "processed", "failed")
_FORWARD = {
    "ready": {"sending", "uploaded", "processed", "failed"},
    "sending": {"uploaded", "processed", "failed"},
    "uploaded": {"processed"},
}
"""The state moves there are (forward only); anything else (e.g. processed → ready) is refused by :meth:`Outbox.move`."""
MANIFEST = "manifest.json"
STATE_FILE = "state.json"
LOCK_FILE = ".sink-sevis.lock"
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def safe_name(batch_id: str) -> str:
    """A file-name-safe, reversible form of a BatchID (14 characters, any character set)."""
    return re.sub(r"[^A-Za-z0-9._-]", lambda m: f"%{ord(m.group()):02X}", batch_id) or "%EMPTY"


def day_for(at_ms: int, tz: str) -> str:
    """The calendar day of ``at_ms`` in the school's time zone (never the wall clock)."""
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d")


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


def copy_private(path: Path, source: IO[bytes], limit: int, what: str) -> int:
    """Stream ``source`` into a new 0600 file, at most ``limit`` bytes; returns the size.

    Raises :class:`ValueError` naming ``what`` when the source is longer (the file is removed):
    used to unpack downloads without ever holding a whole member in memory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        os.fchmod(fd, 0o600)
        while True:
            chunk = source.read(min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise ValueError(f"{what} is larger than {limit} bytes")
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        fd = -1
        path.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return size


def create_evidence(path: Path, data: bytes) -> bool:
    """Create an append-only evidence file (O_EXCL, fsynced, folder fsynced); False if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return True


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
        for stale in tmp_root.glob(f"{target.name}.*"):  # left by a writer killed before its rename
            shutil.rmtree(stale, ignore_errors=True)
        tmp = tmp_root / f"{target.name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o700)
        try:
            for fname, data in files.items():
                write_private(tmp / fname, data)
            _fsync_dir(tmp)
            checkpoint("outbox.before_rename")
            try:
                os.rename(tmp, target)
            except OSError:
                if target.is_dir():  # someone (a previous delivery) was first: same bytes, keep theirs
                    return target, False
                raise
            _fsync_dir(target.parent)
            checkpoint("outbox.after_rename")
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
        path, created = self._assemble(
            self.root / day, {f"{name}.xml": xml, MANIFEST: dump_json(manifest)}, self.root / day / "ready" / name
        )
        return BatchDir(path, day, "ready"), created

    def write_quarantine(
        self, day: str, batch_id: str, xml: bytes, manifest: dict[str, Any], problems: list[dict[str, Any]]
    ) -> tuple[Path, bool]:
        """Put a batch that failed validation into the quarantine (never the outbox)."""
        name = safe_name(batch_id)
        existing = self.find_quarantined(batch_id, day)
        if existing is not None:
            return existing, False
        return self._assemble(
            self.quarantine_root / day,
            {f"{name}.xml": xml, MANIFEST: dump_json(manifest), "problems.json": dump_json(problems)},
            self.quarantine_root / day / name,
        )

    def move(self, batch: BatchDir, state: str) -> BatchDir:
        """Change a batch's state: one rename of its folder."""
        if state not in STATES:
            raise ValueError(f"unknown outbox state {state!r}")
        if not _FORWARD.get(batch.state, set()) >= {state}:
            raise ValueError(
                f"batch {batch.name} ({batch.day}): moving it from {batch.state}/ to {state}/ goes "
                "backwards; the outbox only moves forward "
                "(ready → sending → uploaded → processed, sending → failed)"
            )
        target_parent = self.root / batch.day / state
        _mkdir(target_parent)
        target = target_parent / batch.name
        os.rename(batch.path, target)
        _fsync_dir(target_parent)
        _fsync_dir(batch.path.parent)
        return BatchDir(target, batch.day, state)


class OutboxLocked(TerminalError):
    """Another SEVIS sink holds the outbox (raised with its pid and host)."""


class OutboxLock:
    """An exclusive ``flock`` on ``<outbox_dir>/.sink-sevis.lock``: one SEVIS sink per outbox.

    Why an OS lock: it is released by the kernel when the holder dies (kill -9 included), so
    a crash never leaves a stale lock, and a second sink on the same outbox (another host on
    a shared volume with working flock, or a second process) is refused at start instead of
    racing the first one on the same batches. The file says who holds it, for the error."""

    def __init__(self, outbox_dir: str | Path, role: str = "sink-sevis") -> None:
        self.path = Path(outbox_dir) / LOCK_FILE
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> OutboxLock:
        import fcntl

        _mkdir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (OSError, ValueError):
                holder = {}
            os.close(fd)
            since = holder.get("since")
            raise OutboxLocked(
                f"the outbox {self.path.parent} is in use by another SEVIS sink ({holder.get('role', '?')}, pid "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')}"
                + (
                    f", since {datetime.fromtimestamp(since, tz=UTC).isoformat(timespec='seconds')}"
                    if isinstance(since, (int, float))
                    else ""
                )
                + "): stop it first; two uploaders on one outbox could post a batch twice"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {"role": self.role, "pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)}
            ).encode(),
            0,
        )
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> OutboxLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
