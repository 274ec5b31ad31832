"""One SEVIS sink per outbox: an OS lock, a clear error naming the holder, released by kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sevisflow.sinks.outbox import LOCK_FILE, OutboxLock, OutboxLocked
from tests.helpers import REPO

HOLDER = """
import sys, time
from sevisflow.sinks.outbox import OutboxLock
OutboxLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_second_holder_is_refused_with_pid_and_host_and_kill_9_frees_it(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "outbox")], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutboxLocked) as err:
            OutboxLock(tmp_path / "outbox").acquire()
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and socket.gethostname() in msg and "stop it first" in msg
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 10
        while True:  # the kernel drops the dead holder's lock: no stale lock file to clean up by hand
            try:
                lock = OutboxLock(tmp_path / "outbox").acquire()
                break
            except OutboxLocked:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert f'"pid": {os.getpid()}' in (tmp_path / "outbox" / LOCK_FILE).read_text()
        assert oct((tmp_path / "outbox" / LOCK_FILE).stat().st_mode & 0o777) == "0o600"
        lock.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_same_process_cannot_hold_it_twice_and_release_frees_it(tmp_path):
    with OutboxLock(tmp_path), pytest.raises(OutboxLocked, match="in use by another SEVIS sink"):
        OutboxLock(tmp_path).acquire()
    with OutboxLock(tmp_path):
        pass
