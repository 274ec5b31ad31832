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


TRIM_PROBE = textwrap.dedent(
    """
    import sys, threading, time
    from sevisflow.core.malloc import keep_trimming

    def resident_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024

    kept = []

    def fragment():  # 60 MB in 1.5 KB blocks per thread; one in 16 stays: no page at the heap's top is free
        blocks = [bytearray(1500) for _ in range(40000)]
        kept.extend(blocks[::16])

    threads = [threading.Thread(target=fragment) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    before = resident_mib()
    stop = threading.Event()
    trimming = sys.argv[1] == "trim" and keep_trimming(stop, every_s=0.1) is not None
    time.sleep(1.0)
    stop.set()
    print(trimming, before, resident_mib(), len(kept))
    """
)


def _resident_after_freeing(mode: str) -> tuple[bool, int, int]:
    run = subprocess.run([sys.executable, "-c", TRIM_PROBE, mode], capture_output=True, text=True, check=True)
    trimming, before, after, _kept = run.stdout.split()
    return trimming == "True", int(before), int(after)


@glibc
def test_a_stage_hands_the_memory_it_freed_back_to_the_os():
    """Freed blocks between live ones stay resident until trimmed: with the trimmer running, the process's
    resident memory follows what it still holds (a sixteenth of what it allocated)."""
    trimming, before, after = _resident_after_freeing("trim")
    assert trimming
    assert before > 200
    assert after < before / 2


@glibc
def test_without_trimming_the_freed_memory_stays_resident():
    """The control: the same process without the trimmer keeps the freed memory, so the drop above is its doing."""
    trimming, before, after = _resident_after_freeing("none")
    assert not trimming
    assert before > 200
    assert after > before * 0.9
