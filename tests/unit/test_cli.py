"""The command line: --help everywhere, and the exit-code contract (0 ok, 1 expected, 2 bug)."""

from __future__ import annotations

import argparse

import pytest

from sevisflow import cli
from sevisflow.errors import SevisflowError


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
    from sevisflow.cli import config_cmd

    def boom(args):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(config_cmd, "run", boom)
    assert cli.main(["config"]) == cli.EXIT_UNEXPECTED
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_sevisflow_error_subclasses_are_expected(monkeypatch, capsys):
    from sevisflow.cli import config_cmd

    monkeypatch.setattr(config_cmd, "run", lambda args: (_ for _ in ()).throw(SevisflowError("nice message")))
    assert cli.main(["config"]) == cli.EXIT_EXPECTED
    assert "nice message" in capsys.readouterr().err
