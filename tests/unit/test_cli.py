"""The command line: --help everywhere, and the exit-code contract (0 ok, 1 expected, 2 bug)."""

from __future__ import annotations

import argparse

import pytest

from sevisflow.app import cli
from sevisflow.core.errors import SevisflowError


def _all_command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append(prefix + (name,))
                paths.extend(_all_command_paths(sub, prefix + (name,)))
    return paths


def test_every_command_has_help(capsys):
    paths = _all_command_paths(cli.build_parser())
    assert ("stack", "up") in paths and ("config",) in paths and ("demo",) in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*path, "--help"])
        assert exit_info.value.code == 0, path
        out = capsys.readouterr().out
        assert "usage: sevisflow" in out, path


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == cli.EXIT_EXPECTED
    assert "COMMAND" in capsys.readouterr().out


def test_expected_failure_is_exit_1_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbootstrap = 1\n")
    assert cli.main(["--config", str(bad), "config"]) == cli.EXIT_EXPECTED
    err = capsys.readouterr().err
    assert "kafka.bootstrap" in err and "Traceback" not in err


def test_bug_is_exit_2_with_trace(monkeypatch, capsys):
    from sevisflow.app.cli import config_cmd

    def boom(args):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(config_cmd, "run", boom)
    assert cli.main(["config"]) == cli.EXIT_UNEXPECTED
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_sevisflow_error_subclasses_are_expected(monkeypatch, capsys):
    from sevisflow.app.cli import config_cmd

    monkeypatch.setattr(config_cmd, "run", lambda args: (_ for _ in ()).throw(SevisflowError("nice message")))
    assert cli.main(["config"]) == cli.EXIT_EXPECTED
    assert "nice message" in capsys.readouterr().err


# ----------------------------------------------------------------------------- output: pipes, pagers, terminals

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from sevisflow.app.cli import common  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _sevisflow(*argv: str, stdout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sevisflow.app.cli", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize("argv", [("config", "--keys"), ("--help",), ("batch", "show", "--help")])
def test_a_reader_that_went_away_ends_the_command_quietly(argv):
    """`sevisflow … | head`: the read end of a real pipe is closed before the command writes."""
    r, w = os.pipe()
    os.close(r)
    try:
        done = _sevisflow(*argv, stdout=w)
    finally:
        os.close(w)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr.decode() == ""  # no BrokenPipeError, no "Exception ignored"


def test_piped_into_head_exits_cleanly():
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m sevisflow.app.cli config --keys | head -1"],
        capture_output=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0 and done.stderr.decode() == ""
    assert done.stdout.decode().splitlines()[0].startswith("key")


def test_long_output_goes_through_the_pager_short_output_does_not(tmp_path, monkeypatch, capsys):
    paged = tmp_path / "paged.txt"
    monkeypatch.setenv("SEVISFLOW_PAGER", f"sh -c 'cat > {paged}'")
    monkeypatch.setenv("LINES", "10")
    common.page("one\ntwo\n")
    assert capsys.readouterr().out == "one\ntwo\n" and not paged.exists()
    long_text = "".join(f"line {i}\n" for i in range(50))
    common.page(long_text)
    assert paged.read_text() == long_text and capsys.readouterr().out == ""
    common.page(long_text, use_pager=False)  # --no-pager
    assert capsys.readouterr().out == long_text


def test_quitting_the_pager_early_is_not_an_error(monkeypatch):
    monkeypatch.setenv("SEVISFLOW_PAGER", "head -1")
    monkeypatch.setenv("LINES", "10")
    common.page("".join(f"line {i} " + "x" * 200 + "\n" for i in range(5000)))  # far more than a pipe buffer


def test_pager_off_with_an_empty_value_or_cat(monkeypatch):
    for value in ("", "cat"):
        monkeypatch.setenv("SEVISFLOW_PAGER", value)
        assert common.pager_command() is None
    monkeypatch.setenv("SEVISFLOW_PAGER", "less -R")
    assert common.pager_command() == ["less", "-R"]


TERMINAL_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from tests.unit.test_batch_cli_golden import views, TZ, LABELS
from sevisflow.app.cli import review
from sevisflow.app.cli.common import emit
view = views()[0]
emit(lambda width: review.show_table(view, TZ, LABELS, width=width), lambda: review.show_lines(view, TZ, LABELS))
"""


@pytest.mark.parametrize("columns", [80, 200])
def test_on_a_terminal_the_table_takes_the_terminals_width(columns):
    """A real pseudo-terminal: the table is as wide as COLUMNS says, coloured, not paged (pager off)."""
    import pty

    script = TERMINAL_SCRIPT.format(repo=str(REPO))
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout is the terminal
        os.environ.update(COLUMNS=str(columns), LINES="50", SEVISFLOW_PAGER="", TERM="xterm")
        os.execv(sys.executable, [sys.executable, "-c", script])
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    out = b"".join(chunks).decode()
    assert "\x1b[" in out  # colours on a terminal
    import re

    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.replace("\r\n", "\n").split("\n")]
    assert max(len(line) for line in plain) <= columns
    assert max(len(line) for line in plain) > min(columns - 10, 100)  # it uses the width it has
    assert any("Garcia, Lucia" in line for line in plain)


def test_width_lays_the_table_out_even_into_a_pipe(capsys):
    from sevisflow.app.cli import review
    from tests.unit.test_batch_cli_golden import LABELS, TZ, views

    view = views()[0]
    common.emit(
        lambda w: review.show_table(view, TZ, LABELS, width=w), lambda: review.show_lines(view, TZ, LABELS), width=80
    )
    out = capsys.readouterr().out
    assert "\x1b" not in out and "─" * 40 in out and max(len(x.rstrip()) for x in out.splitlines()) <= 80
    assert [x.rstrip() for x in out.splitlines()] == review.render_text(
        review.show_table(view, TZ, LABELS, width=80), 80
    ).splitlines()
    common.emit(lambda w: review.show_table(view, TZ, LABELS, width=w), lambda: review.show_lines(view, TZ, LABELS))
    assert capsys.readouterr().out == "\n".join(review.show_lines(view, TZ, LABELS)) + "\n"  # a pipe: plain lines


def test_a_pager_that_cannot_start_means_printing(monkeypatch, capsys):
    monkeypatch.setenv("SEVISFLOW_PAGER", "/nonexistent/pager")
    monkeypatch.setenv("LINES", "5")
    pieces = [f"piece {i}\n" * 3 for i in range(4)]
    common.page_pieces(iter(pieces))
    assert capsys.readouterr().out == "".join(pieces)
