"""Helpers every CLI command shares: loading settings, printing tables and JSON, and the terminal.

Output for people goes through :func:`emit`: on a terminal, a table as wide as the terminal
(rich), through a pager when it is longer than the screen; into a pipe or a file, plain lines
written as they are produced. :func:`clean` escapes control characters of data (an escape
sequence in a student's name is shown, never executed); :func:`quiet_broken_pipe` lets
``sevisflow … | head`` end without a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson

from sevisflow.core.config import Settings, load_settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings for this invocation (``--config`` or the default file, plus SEVISFLOW_* env)."""
    return load_settings(getattr(args, "config", None))


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def print_json(value: Any) -> None:
    sys.stdout.write(
        orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode() + "\n"
    )


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns (no colours: it goes into terminals, logs and e-mails).

    Cells are passed through :func:`clean`, so data never sends control characters to a terminal."""
    cells = [[clean(h) for h in headers]] + [["" if c is None else clean(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells[1:]]
    return "\n".join(lines)


# C0/C1 controls, DEL, and the bidirectional overrides that can make text read other than it is
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(value: Any) -> str:
    """Text safe for a terminal: every control character of the data is shown escaped (``\\x1b``)."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def add_pager_flag(parser: argparse.ArgumentParser, width: bool = False) -> None:
    parser.add_argument(
        "--no-pager", action="store_true", help="on a terminal, print everything at once instead of paging long output"
    )
    if width:
        parser.add_argument(
            "--width",
            type=int,
            default=None,
            metavar="COLUMNS",
            help="lay the table out for this many columns (also into a file or a pipe, "
            "without colours); default: the terminal's width, plain lines in a pipe",
        )


def is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def terminal_size() -> os.terminal_size:
    """The terminal's columns and lines (COLUMNS/LINES win; 100x40 when unknown)."""
    return shutil.get_terminal_size((100, 40))


def pager_command() -> list[str] | None:
    """The pager to use: $SEVISFLOW_PAGER, else $PAGER, else ``less`` when installed; None for none.

    An empty value or ``cat`` turns paging off."""
    for var in ("SEVISFLOW_PAGER", "PAGER"):
        value = os.environ.get(var)
        if value is not None:
            return shlex.split(value) if value.strip() and value.strip() != "cat" else None
    less = shutil.which("less")
    return [less] if less else None


class _Pager:
    """A running pager fed through a pipe; a reader who quits early is not an error."""

    def __init__(self, cmd: list[str]) -> None:
        env = dict(os.environ)
        env.setdefault("LESS", "FRX")  # quit if one screen, keep colours, leave the text on screen
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env)
        self.gone = False

    def write(self, text: str) -> bool:
        """False once the reader has quit the pager (stop producing)."""
        if self.gone:
            return False
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(text.encode("utf-8", "replace"))
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.gone = True
        return not self.gone

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        while True:
            try:
                self.proc.wait()
                return
            except KeyboardInterrupt:  # Ctrl-C belongs to the pager while it runs
                continue


def page(text: str, use_pager: bool = True) -> None:
    """Write ``text`` to the terminal, through the pager when it does not fit on the screen."""
    page_pieces([text], use_pager)


def page_pieces(pieces: Iterable[str], use_pager: bool = True) -> None:
    """Write text produced piece by piece. Without a pager: each piece as it comes. With one: held
    back while it fits on the screen (then printed); once it does not, the pager starts with what
    there is and gets the rest as it comes. A pager that cannot be started means printing."""
    cmd = pager_command() if use_pager else None
    screen = terminal_size().lines - 1
    held: list[str] = []
    lines = 0
    pager: _Pager | None = None
    try:
        for piece in pieces:
            if cmd is None:  # no pager: each piece as soon as it is ready
                sys.stdout.write(piece)
                sys.stdout.flush()
                continue
            if pager is not None:
                if not pager.write(piece):
                    return
                continue
            held.append(piece)
            lines += piece.count("\n")
            if cmd is not None and lines >= screen:
                try:
                    pager = _Pager(cmd)
                except OSError:  # no such pager: print instead
                    cmd = None
                    sys.stdout.write("".join(held))
                    sys.stdout.flush()
                    held = []
                    continue
                if not pager.write("".join(held)):
                    return
                held = []
        sys.stdout.write("".join(held))
        sys.stdout.flush()
    finally:
        if pager is not None:
            pager.close()


def emit(
    renderables: Callable[[int], Iterable[Any]],
    lines: Callable[[], Iterable[str]],
    use_pager: bool = True,
    width: int | None = None,
) -> None:
    """Output for people. On a terminal: ``renderables(width)`` (rich) rendered at the terminal's
    width piece by piece, paged when longer than the screen; into a pipe or a file: ``lines()``
    written one by one (no colours, no wrapping) — or, when ``width`` is given (``--width``), the
    terminal layout at that width without colours."""
    if width is not None and not is_terminal():
        from rich.console import Console

        con = Console(
            width=width, color_system=None, force_terminal=False, highlight=False, soft_wrap=False, file=sys.stdout
        )
        for i, r in enumerate(renderables(width)):
            if i:
                con.print()
            con.print(r)
        sys.stdout.flush()
        return
    if not is_terminal():
        out = sys.stdout
        for line in lines():
            out.write(line + "\n")
        out.flush()
        return
    from rich.console import Console

    width = width or terminal_size().columns
    con = Console(width=width, force_terminal=True, highlight=False, soft_wrap=False)

    def pieces() -> Iterator[str]:
        for i, r in enumerate(renderables(width)):
            with con.capture() as cap:
                if i:
                    con.print()
                con.print(r)
            yield cap.get()

    page_pieces(pieces(), use_pager)


def print_renderables(console: Any, renderables: Iterable[Any]) -> None:
    """Print rich renderables one after the other, a blank line between two."""
    for i, r in enumerate(renderables):
        if i:
            console.print()
        console.print(r)


def quiet_broken_pipe() -> None:
    """The reader of our output went away (``| head``): point stdout at /dev/null so that the
    interpreter's final flush does not raise again, and let the command end quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def run_stage(settings: Settings, stage: Callable[..., None], *extra: Any, name: str = "stage") -> int:
    """Run one long-lived stage in the foreground, the way ``sevisflow run`` runs several.

    SIGTERM/Ctrl-C ask it to drain and stop; a transient failure (Kafka or PostgreSQL not
    reachable) restarts it after a growing backoff instead of exiting; /metrics, /health and
    /ready are served on ``metrics.port`` while it runs (when set). Returns 0 after a clean stop.
    """
    import signal
    import time

    from sevisflow.app.runner import Pipeline
    from sevisflow.core.errors import SevisflowError

    def fn(s: Settings, stop: Any) -> None:
        stage(s, stop, *extra)

    pipeline = Pipeline(settings, [name], functions={name: fn}).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: pipeline.stop_event.set())
    while not pipeline.stop_event.is_set() and any(t.thread.is_alive() for t in pipeline.threads):
        time.sleep(0.2)
    failed = pipeline.stop()
    if failed:
        err = failed[0].error
        if isinstance(err, SevisflowError):
            raise err
        # not `from err`: its message may quote a record; its traceback is in the stage.failed log line
        raise RuntimeError(
            f"stage {name} failed: {type(err).__name__} (traceback in the stage.failed log line)"
        ) from None
    return 0
