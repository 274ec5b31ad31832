"""Build hook for the optional compiled parts; everything else is in pyproject.toml.

* ``sevisflow.connectors.postgres._pgtuple`` (C) speeds up the connector's per-value loops; without it the
  connector uses its pure-Python decoder, which produces identical output (connectors/postgres/decoder.py).
* The processors' pure core (the modules in ``COMPILED_CORE``) is compiled with mypyc, from the same typed
  Python source: the same code, run as C (docs/ARCHITECTURE.md, "The compiled core"). Without a compiler,
  or with ``SEVISFLOW_INTERPRETED=1``, the modules run as plain Python. ``SEVISFLOW_MYPYC_OPT`` sets the C
  compiler's optimisation level (default 3; the build tests use 0: they check what is built, four times faster).

Both are optional: a failed compile is reported and the install still succeeds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that reports a failed compile instead of failing the install.

    The compiled core is all or nothing: its modules call each other inside one shared library, so one
    module compiled beside another interpreted would give two copies of a class. When any of them fails,
    none is kept.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no usable compiler at all: everything stays Python
            _skipped("the compiled parts", "the decoder and the core run as Python", exc)

    def build_extensions(self) -> None:
        self.check_extensions_list(self.extensions)
        core = [e for e in self.extensions if e.name in CORE_NAMES]
        for ext in self.extensions:
            if ext not in core:
                try:
                    self.build_extension(ext)
                except Exception as exc:  # noqa: BLE001 - a failed C decoder leaves the pure-Python one
                    _skipped("the C decoder", "the connector uses its pure-Python decoder", exc)
        try:
            for ext in core:
                self.build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - a failed compile leaves the interpreted core
            _skipped("the compiled core", "the processors run it interpreted", exc)
            for ext in core:
                built = self.get_ext_fullpath(ext.name)
                if os.path.exists(built):
                    os.remove(built)
            self.extensions = [e for e in self.extensions if e not in core]


def _skipped(what: str, instead: str, exc: BaseException) -> None:
    print(f"sevisflow: {what} not built ({type(exc).__name__}: {exc}); {instead}", file=sys.stderr)


COMPILED_CORE = [
    "sevisflow/core/avro_codec.py",
    "sevisflow/processors/normalize/changes.py",
    "sevisflow/processors/normalize/canonical.py",
    "sevisflow/processors/normalize/mapping.py",
    "sevisflow/processors/normalize/view.py",
    "sevisflow/processors/sevis_events/derive.py",
    "sevisflow/processors/sevis_events/ev_derive.py",
    "sevisflow/processors/sevis_events/hygiene.py",
    "sevisflow/processors/sevis_events/sevis_format.py",
]
"""The per-row-change code of normalize and sevis_events, and the Avro codec of their records
(tests/unit/test_compiled_core.py checks the list)."""


def compiled_core() -> list[Extension]:
    """mypyc's extensions for the pure core, or none (interpreted) when mypyc is missing or refuses."""
    if os.environ.get("SEVISFLOW_INTERPRETED"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("sevisflow: mypyc not installed; the processors run their core interpreted", file=sys.stderr)
        return []
    # mypyc type-checks what it compiles. Not with the project's mypy settings (`make lint` applies those): in
    # an isolated build environment the runtime dependencies are missing, and their `Any` would trip the strict
    # flags in modules that are not compiled. Its own cache, apart from the lint's.
    config = Path("build", "mypyc.ini")
    config.parent.mkdir(exist_ok=True)
    config.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n")
    try:
        flags = ["--config-file", str(config), "--cache-dir", str(config.with_name("mypyc-cache"))]
        opt_level = os.environ.get("SEVISFLOW_MYPYC_OPT", "3")
        return list(mypycify([*flags, *COMPILED_CORE], group_name="sevisflow.compiled_core", opt_level=opt_level))
    except BaseException as exc:  # noqa: BLE001 - mypyc exits (SystemExit) on a type error: stay interpreted
        _skipped("the compiled core", "the processors run it interpreted", exc)
        return []


CORE_EXTENSIONS = compiled_core()
CORE_NAMES = {e.name for e in CORE_EXTENSIONS}

setup(
    ext_modules=[
        Extension("sevisflow.connectors.postgres._pgtuple", ["connectors/postgres/_pgtuple.c"], optional=True),
        *CORE_EXTENSIONS,
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
