"""The arena cap of a stage process (sevisflow.core.malloc): threads that allocate at once share a few arenas."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from sevisflow.core.malloc import DEFAULT_ARENAS, cap_malloc_arenas

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the cap is glibc's mallopt")

PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys, tempfile, threading
    from sevisflow.core.malloc import cap_malloc_arenas

    print("set" if cap_malloc_arenas() else "not set")
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def churn():  # ctypes drops the GIL around each call: the threads really meet in malloc
        for _ in range(20000):
            libc.free(libc.malloc(1000))

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as out:
        f = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, f)
        libc.fclose(f)
        print(open(out.name).read().count("<heap nr="))
    """
)


def _arenas_after_churn(env: dict[str, str]) -> tuple[str, int]:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    said, heaps = run.stdout.splitlines()
    return said, int(heaps)


@glibc
def test_threads_allocating_at_once_share_the_capped_arenas():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    said, heaps = _arenas_after_churn(env)
    assert said == "set"
    assert heaps <= DEFAULT_ARENAS


@glibc
def test_without_the_cap_the_same_threads_spread_over_more_arenas():
    """The control: the probe does make glibc open more arenas when nothing caps them (here the operator's own
    MALLOC_ARENA_MAX=8 wins over the cap), so the capped result above is the cap's doing."""
    said, heaps = _arenas_after_churn({**os.environ, "MALLOC_ARENA_MAX": "8"})
    assert said == "not set"
    assert heaps > DEFAULT_ARENAS


def test_an_operators_malloc_arena_max_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cap_malloc_arenas() is False


def test_the_sevisflow_command_caps_the_arenas_before_it_runs(monkeypatch):
    """Every stage process starts through ``entry_point``: the cap comes before the command (and its threads)."""
    import sevisflow.app.cli as cli

    calls: list[str] = []
    monkeypatch.setattr(cli, "cap_malloc_arenas", lambda: calls.append("cap") or True)
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 0)
    with pytest.raises(SystemExit) as stop:
        cli.entry_point()
    assert stop.value.code == 0
    assert calls == ["cap", "main"]
