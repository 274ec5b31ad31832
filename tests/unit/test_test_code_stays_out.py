"""Test code never ships: the product imports neither tests/ nor testkit/, and bench/ does not import tests/.

The wheel ships only the ``sevisflow`` package (its stages linked in from the top-level folders), so
builders of made-up records live in ``testkit/`` (shared by tests/ and bench/) or in tests/, and the
crash tests' fault injector in ``tests/crashing.py``: the product only passes named checkpoints.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PRODUCT = REPO / "sevisflow"


def _modules(root: Path) -> list[Path]:
    # rglob does not follow the package's links to the stage folders: walk them by name
    out: list[Path] = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name != "__pycache__":
            out += _modules(p)
        elif p.suffix == ".py":
            out.append(p)
    return out


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_product_imports_no_test_code():
    modules = _modules(PRODUCT)
    assert len(modules) > 100, "the walk must reach the linked stage folders"
    bad = [
        f"{p.relative_to(REPO)} imports {sorted(_imported(p) & {'tests', 'testkit'})}"
        for p in modules
        if _imported(p) & {"tests", "testkit"}
    ]
    assert bad == []


def test_the_product_holds_no_fixtures_and_no_fault_injector():
    modules = _modules(PRODUCT)
    named = [p for p in modules if p.stem in ("fixtures", "samples", "scenario", "faults")]
    assert named == []
    armed = [p for p in modules if "SEVISFLOW_CRASH_AT" in p.read_text() or "BATCHER_FAULT" in p.read_text()]
    assert armed == [], "crash injection belongs to tests/crashing.py; the product calls checkpoint() only"


def test_bench_does_not_import_the_tests():
    bad = [str(p.relative_to(REPO)) for p in _modules(REPO / "bench") if "tests" in _imported(p)]
    assert bad == []
