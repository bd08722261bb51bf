"""The `markov-lens` command line: one program, one subcommand per task.

Each package contributes subcommands from modules named ``cli_*.py`` that define
``register(subparsers)``; every subparser sets ``func(args) -> int``. Discovery
keeps each command beside the code it drives (``training/cli_chain.py`` holds
``markov-lens chain``), and this file stays the only place that imports all three
packages, as the import direction training <- probes <- interp allows.

Start-up is kept close to ``import torch``: ``main`` imports only the module of the
command being run. The other commands' names and one-line helps (for ``--help``, usage
errors) are read from their modules' source, the literal ``add_parser("NAME", help=...)``
calls, without importing them; a module whose commands cannot be read that way is imported.
A command's heavy dependencies (transformer_lens, matplotlib, ...) are imported by its
``run`` function, not by ``register``.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
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


@functools.cache
def declared_commands(module: str) -> tuple[tuple[str, dict], ...] | None:
    """(name, {"help": ...}) of each ``add_parser("NAME", help="...")`` call in ``module``'s
    source, in source order, read without importing the module; None where they cannot be
    read literally (no source, no such call, a computed name or help, aliases, **kwargs)."""
    spec = importlib.util.find_spec(module)
    try:
        tree = ast.parse(spec.loader.get_source(module) or "")
    except (AttributeError, SyntaxError):  # no loader or no source; a bad module: import it
        return None
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_parser"
    ]
    commands = []
    for call in sorted(calls, key=lambda c: (c.lineno, c.col_offset)):
        keywords = {k.arg: k.value for k in call.keywords}
        if len(call.args) != 1 or "aliases" in keywords or None in keywords:
            return None
        try:
            name = ast.literal_eval(call.args[0])
            kwargs = {"help": ast.literal_eval(keywords["help"])} if "help" in keywords else {}
        except ValueError:
            return None
        if not isinstance(name, str) or not isinstance(kwargs.get("help", ""), str):
            return None
        commands.append((name, kwargs))
    return tuple(commands) or None


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`markov-lens CMD: error: ...`, exit 2), not a
    usage block; `--help` still prints the full usage. Subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``markov-lens`` parser. Without ``argv``, every command module is imported and
    registers its commands. With ``argv``, only the module of the command it names is: the
    others are listed by name and help (enough for ``--help`` and argparse's errors) and
    cannot run."""
    parser = OneLineParser(
        prog="markov-lens",
        description="Train transformers on Markov chains and see what they learnt.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # the top-level parser takes no option with a value: the first word is the command
    command = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name in command_modules():
        declared = declared_commands(name) if argv is not None else None
        if declared is None or command in (cmd for cmd, _ in declared):
            importlib.import_module(name).register(sub)
        else:
            for cmd, kwargs in declared:
                sub.add_parser(cmd, **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
