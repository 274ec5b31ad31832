"""Builds of the compiled parts: the fallback when they do not compile, and the benches' older versions.

A wheel of a copy of the sources is built with a C compiler that refuses one chosen file, as a host without a
working compiler would (setup.py's OptionalBuildExt). A side-by-side bench builds the older version it
measures (bench/common.py). No service is needed; these sit with the integration tests because each build
takes about a minute of CPU.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.helpers import bench_results, side_by_side_runs
from tests.wheel_support import copy_sources, pip_wheel

DECODER = "sevisflow/connectors/postgres/_pgtuple"


def _build(tmp_path: Path, refuse: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Build a wheel of a copy of the sources with a C compiler that refuses files named ``refuse``; return
    pip's result and the modules the wheel carries compiled."""
    src, out = tmp_path / "src", tmp_path / "wheel"
    copy_sources(src)
    cc = tmp_path / "cc"
    cc.write_text(
        f'#!/bin/sh\ncase "$*" in *{refuse}*) echo "cc: refused {refuse}" >&2; exit 1;; esac\nexec gcc "$@"\n'
    )
    cc.chmod(cc.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "CC": str(cc), "SEVISFLOW_MYPYC_OPT": "0"}  # what is built, not how fast it runs
    env.pop("SEVISFLOW_INTERPRETED", None)
    proc = pip_wheel(src, out, env)
    wheels = list(out.glob("sevisflow-*.whl"))
    names = zipfile.ZipFile(wheels[0]).namelist() if wheels else []
    return proc, {n.split(".", 1)[0] for n in names if n.endswith(".so")}


def test_a_core_that_does_not_compile_leaves_it_interpreted_and_the_decoder_built(tmp_path: Path) -> None:
    proc, built = _build(tmp_path, "__native_")  # mypyc's shared library, the first of the core's parts
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "cc: refused __native_" in log
    assert "the compiled core not built" in log and "the processors run it interpreted" in log
    assert built == {DECODER}


def test_one_core_module_that_does_not_compile_leaves_none_of_the_core(tmp_path: Path) -> None:
    """All or nothing: the shared library built, then one module's part refused — every part of the core is
    removed, so no module runs compiled beside another interpreted (two copies of a class)."""
    proc, built = _build(tmp_path, "normalize/view.c")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert re.search(r"-o \S*compiled_core__mypyc\S*\.so", log), "the shared library was linked before the refusal"
    assert "cc: refused normalize/view.c" in log and "the compiled core not built" in log
    assert built == {DECODER}, built


def test_a_side_by_side_bench_runs_an_older_version_compiled_as_an_install_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--compare-with REV`` builds that version's compiled parts (bench/common.py, build_compiled): a
    compiled working tree is never measured against an interpreted older one by accident."""
    monkeypatch.setenv("SEVISFLOW_MYPYC_OPT", "0")  # the build's speed, not the code's, is what this test pays
    runs = side_by_side_runs(
        "bench.processors", tmp_path / "out.json", "--pure-only", "--students", "30", repeat=1, interpreted=False
    )
    assert [r["compiled_core"] for r in runs] == [True, True]
    assert all(r["row_changes"] > 0 and r["row_changes_per_s"] > 0 for r in runs)


def test_an_older_versions_compiled_parts_are_built_once_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compare-with REV`` keeps REV's build under .local/bench-compiled (keyed by its tree and the build's
    settings): a second side-by-side run of the same revision takes the same files instead of building again."""
    from bench.common import compiled_parts, exported_tree
    from testkit.settings import REPO

    monkeypatch.delenv("SEVISFLOW_INTERPRETED", raising=False)
    monkeypatch.setenv("SEVISFLOW_MYPYC_OPT", "0")
    first = compiled_parts("HEAD", REPO)  # built here, or by a bench test of this run before it
    built = {p.relative_to(first).as_posix(): p.stat().st_mtime_ns for p in first.rglob("*.so")}
    assert any(n.startswith("sevisflow/compiled_core__mypyc") for n in built), built
    assert any(n.startswith(DECODER) for n in built), built
    assert first.parent == REPO / ".local" / "bench-compiled" and first.name.endswith("-O0")

    again = compiled_parts("HEAD", REPO)
    assert again == first
    assert {p.relative_to(again).as_posix(): p.stat().st_mtime_ns for p in again.rglob("*.so")} == built
    assert not list(first.parent.glob(".building-*")), "a finished build leaves no half-built folder"

    tree = exported_tree("HEAD", REPO)  # the files of HEAD with those parts beside their sources
    try:
        for name in built:
            assert (Path(tree.name) / name).read_bytes() == (first / name).read_bytes(), name
    finally:
        tree.cleanup()


def test_compare_with_interpreted_runs_this_tree_without_its_compiled_core(tmp_path: Path) -> None:
    runs = side_by_side_runs(
        "bench.processors", tmp_path / "o.json", "--pure-only", "--students", "30", compare_with="interpreted"
    )
    assert sorted(r["compiled_core"] for r in runs) == [False, False, False, False], "SEVISFLOW_INTERPRETED: both"
    summary = bench_results(
        "bench.processors",
        tmp_path / "c.json",
        *("--pure-only", "--students", "30", "--repeat", "1", "--compare-with", "interpreted"),
        interpreted=False,
    )["summary"]
    assert {k: [r["compiled_core"] for r in v["samples"]] for k, v in summary.items()} == {
        "interpreted": [False],
        "now": [True],
    }
    assert summary["interpreted"]["samples"][0]["events"] == summary["now"]["samples"][0]["events"] > 0
