"""The processors' core and the Avro codec are compiled by mypyc at install (setup.py), interpreted where they cannot be.

``make test`` runs the unit tests twice: in the dev install, where the core is compiled, and again under
``make unit-interpreted`` (``SEVISFLOW_INTERPRETED=1``, a copy of the tree without the compiled modules).
Both runs check here that they tested what they say they tested. The build's fallback is checked by
building with a compiler that fails (tests/integration/test_compiled_core_build.py).
"""

from __future__ import annotations

import ast
import importlib
import os
from importlib.machinery import EXTENSION_SUFFIXES
from types import FunctionType

from tests.helpers import REPO, source_of

INTERPRETED = bool(os.environ.get("SEVISFLOW_INTERPRETED"))


def core_modules() -> list[str]:
    """setup.py's COMPILED_CORE, as module names (read from its source: importing setup.py would build)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMPILED_CORE" for t in node.targets):
            paths = ast.literal_eval(node.value)
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no COMPILED_CORE list")


def test_the_core_is_the_per_row_change_code_of_normalize_and_sevis_events_and_their_avro_codec() -> None:
    names = core_modules()
    for hot in ("normalize.changes", "normalize.view", "sevis_events.derive", "sevis_events.hygiene"):
        assert f"sevisflow.processors.{hot}" in names
    assert "sevisflow.core.avro_codec" in names
    for name in names:
        assert source_of(name).is_file(), name


def _compiled(name: str) -> bool:
    """Whether the module's functions are compiled (a module's __file__ does not tell: a compiled module
    first imported by another inside mypyc's shared library gets a wrong one)."""
    module = importlib.import_module(name)
    own = [v for v in vars(module).values() if callable(v) and getattr(v, "__module__", None) == name]
    assert own, name
    return not any(isinstance(v, FunctionType) for v in own)


def test_each_core_module_runs_compiled_in_the_dev_install_and_interpreted_under_unit_interpreted() -> None:
    for name in core_modules():
        if INTERPRETED:
            assert not _compiled(name), f"{name} runs compiled in the interpreted run"
        else:
            assert _compiled(name), f"{name} is not compiled: run `make venv` (pip install -e .)"


def test_no_compiled_module_is_older_than_its_source() -> None:
    """An editable install imports the compiled module before its .py: after an edit, the old code would run
    (`make venv` rebuilds when a core source changed; a bare pytest after an edit does not)."""
    stale = []
    for name in core_modules():
        source = source_of(name)
        built = source.with_suffix(EXTENSION_SUFFIXES[0])
        assert built.exists() is not INTERPRETED, built
        if built.exists() and built.stat().st_mtime < source.stat().st_mtime:
            stale.append(source.name)
    assert not stale, f"edited since the build, the tests would run the old code: {stale}; run `make venv`"


def test_a_row_change_is_a_compiled_class_or_a_plain_one_as_the_run_says() -> None:
    """The class the stages make per change: a native class (no __dict__) when compiled. Its cached row id
    works either way (a field set on first use, not functools.cached_property)."""
    from sevisflow.processors.normalize.changes import RowChange

    ch = RowChange("public.person", "c", {"person_id": 7}, None, {"person_id": 7}, (1, 1), 1, None, 5, 0, False)
    assert ch.row_id == ch.row_id == 'public.person:{"person_id":7}'
    assert ch == RowChange("public.person", "c", {"person_id": 7}, None, {"person_id": 7}, (1, 1), 1, None, 5, 0, False)
    assert hasattr(ch, "__dict__") is INTERPRETED
