"""The ``sevisflow`` command line: ``main(argv) -> int``.

One module per command group under ``sevisflow/app/cli/`` exposing
``register(subparsers) -> None``; each sets ``func(args) -> int`` on its parser.
Exit codes: 0 ok; 1 an expected failure (:class:`~sevisflow.core.errors.SevisflowError`,
printed as one clear message); 2 an unexpected error (a bug: the traceback is
printed so it can be reported); 64 a usage error (an unknown command or option, a
missing or malformed argument: argparse's message and the usage line); 130 interrupted. Output cut short by its reader (``| head``)
ends quietly with 0.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from sevisflow import __version__
from sevisflow.core.errors import SevisflowError
from sevisflow.core.malloc import cap_malloc_arenas

# Command modules, in the order --help lists them. A module that is not there yet is skipped.
COMMAND_MODULES = [
    "stack",
    "demo",
    "config_cmd",
    "topics",
    "acls",
    "run",
    "connector",
    "process",
    "batch",
    "student",
    "todo",
    "issues_cmd",
    "sink",
    "results",
    "sevis_sim",
    "replay",
    "audit",
    "verify",
]

EXIT_OK, EXIT_EXPECTED, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_USAGE = 64  # sysexits' EX_USAGE: argparse's own 2 would read as "a bug" (EXIT_UNEXPECTED)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Parser(argparse.ArgumentParser):
    """argparse with its own exit code for usage errors (sub-commands inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {value!r}: use one of {', '.join(LOG_LEVELS)}")
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sevisflow",
        description="SIS changes → Kafka → SEVIS batch uploads. Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"sevisflow {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help="settings file (default: $SEVISFLOW_CONFIG or ./sevisflow.toml)"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=_log_level,
        metavar="LEVEL",
        help=f"log level for the JSON logs on stderr: {', '.join(LOG_LEVELS)} (default WARNING)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"sevisflow.app.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    from sevisflow.core import log

    log.configure(args.log_level.upper())
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_EXPECTED if args.command is None else EXIT_OK
    try:
        return int(func(args) or 0)
    except SevisflowError as exc:
        print(f"sevisflow: error: {exc}", file=sys.stderr)
        return EXIT_EXPECTED
    except BrokenPipeError:  # `sevisflow … | head`: the reader has what it wanted
        from sevisflow.app.cli.common import quiet_broken_pipe

        quiet_broken_pipe()
        return EXIT_OK
    except KeyboardInterrupt:
        print("sevisflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the top-level handler for bugs
        print(log.safe_traceback(exc), file=sys.stderr)  # frames and classes; messages may quote a record
        print("sevisflow: unexpected error (a bug); please report it with the trace above", file=sys.stderr)
        return EXIT_UNEXPECTED


def entry_point() -> None:
    """The ``sevisflow`` command as a process: caps the allocator's arenas before any thread starts (a stage's
    memory, :mod:`sevisflow.core.malloc`), then runs :func:`main` and exits with its status."""
    cap_malloc_arenas()
    try:
        code = main()
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:  # also `sevisflow --help | head -1`
        from sevisflow.app.cli.common import quiet_broken_pipe

        quiet_broken_pipe()
        code = EXIT_OK
    sys.exit(code)
