"""``sevisflow config``: show the resolved settings (secrets masked) or list every key."""

from __future__ import annotations

import argparse

from sevisflow.app.cli.common import format_table, print_json, settings_from_args
from sevisflow.core.config import describe, example_toml


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config",
        help="show the resolved settings (secrets masked)",
        description="Print the settings in effect after sevisflow.toml and SEVISFLOW_* overrides. "
        "Secrets print as ****.",
    )
    p.add_argument("--keys", action="store_true", help="list every setting with its default and meaning")
    p.add_argument("--example", action="store_true", help="print a commented example sevisflow.toml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.example:
        print(example_toml(), end="")
        return 0
    if args.keys:
        print(format_table(["key", "default", "meaning"], describe()))
        return 0
    print_json(settings_from_args(args).masked())
    return 0
