"""Build hook for the optional C extension; everything else is in pyproject.toml.

``sevisflow.connectors.postgres._pgtuple`` speeds up the connector's per-value loops. It is optional: when
there is no C compiler (or no Python headers) the install still succeeds and the connector uses its
pure-Python decoder, which produces identical output (see connectors/postgres/decoder.py).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that reports a failed compile instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure leaves the pure-Python decoder
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    @staticmethod
    def _skip(exc: BaseException) -> None:
        print(
            f"sevisflow: C extension not built ({type(exc).__name__}: {exc}); "
            "the connector will use its pure-Python decoder",
            file=sys.stderr,
        )


setup(
    ext_modules=[
        Extension("sevisflow.connectors.postgres._pgtuple", ["connectors/postgres/_pgtuple.c"], optional=True)
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
