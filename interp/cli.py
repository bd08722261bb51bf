"""The `markov-lens` command line: one program, one subcommand per task.

Each package contributes subcommands from modules named ``cli_*.py`` that define
``register(subparsers)``; every subparser sets ``func(args) -> int``. Discovery
keeps each command beside the code it drives (``training/cli_chain.py`` holds
``markov-lens chain``), and this file stays the only place that imports all three
packages, as the import direction training <- probes <- interp allows.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

PACKAGES = ("training", "probes", "interp")


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


def command_modules() -> list[str]:
    """Dotted names of every ``cli_*`` module in the three packages, sorted."""
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("cli_"):
                names.append(f"{package}.{info.name}")
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="markov-lens",
        description="Train transformers on Markov chains and see what they learnt.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in command_modules():
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError, UserError) as err:  # OSError: also disk full,
        # permission denied, a directory where a file was expected: one line, no traceback
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"markov-lens {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
