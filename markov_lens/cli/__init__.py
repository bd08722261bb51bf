"""The `markov-lens` command line: one program, one subcommand per task.

This package holds the whole command line: ``main`` (the ``markov-lens`` entry point), the
parser, and one module per command (``markov_lens/cli/chain.py`` holds ``markov-lens chain``)
that defines ``register(subparsers)``, adding exactly its own command with ``func(args) ->
int`` set, and the function that runs it. ``options.py`` holds the options and helpers that
several commands share. The library packages (training, probes, interp) do not import it.

``COMMANDS`` below is the registry: command name -> (module, one-line help), in the order
``markov-lens --help`` lists them. Start-up is kept close to ``import torch``: ``main``
imports only the module of the command being run; the others are listed by name and help
from the table (enough for ``--help`` and usage errors) without being imported. A command's
heavy dependencies (transformer_lens, matplotlib, ...) are imported by its run function,
not by ``register``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module that registers it, one-line help). The help is the command's: its
# module's register passes it to add_parser (add_command), so --help with or without the
# module imported reads the same.
COMMANDS: dict[str, tuple[str, str]] = {
    "atlas": (
        "markov_lens.cli.atlas",
        "train and measure a grid of runs: where the kernel lives, by depth and window",
    ),
    "bench": (
        "markov_lens.cli.bench",
        "measure the speed claims (training step, windows, ensembles, sampler, "
        "patching, reproductions, start-up)",
    ),
    "compare": (
        "markov_lens.cli.compare",
        "compare two runs or checkpoints, or show one run's checkpoint timeline",
    ),
    "report": ("markov_lens.cli.report", "one self-contained HTML page about a run"),
    "attention": (
        "markov_lens.cli.attention",
        "attention heatmaps, offset profile, head scores, offline HTML view",
    ),
    "patch": (
        "markov_lens.cli.patch",
        "activation patching sweeps (every layer, position and head)",
    ),
    "explain": (
        "markov_lens.cli.explain",
        "report: does the prediction depend on x_n, and through what?",
    ),
    "landscape": (
        "markov_lens.cli.landscape",
        "Hessian verdicts, loss paths and surfaces, the reduced model",
    ),
    "probe": (
        "markov_lens.cli.probe",
        "linear probes (with control tasks and baselines) on a run's activations",
    ),
    "chain": ("markov_lens.cli.chain", "exact reference losses of a Markov chain (nats)"),
    "train": (
        "markov_lens.cli.train",
        "train one transformer on a Markov chain (writes a run directory)",
    ),
    "sweep": (
        "markov_lens.cli.sweep",
        "train a grid of runs (chain x model x train options x seeds) in parallel",
    ),
    "reproduce": (
        "markov_lens.cli.reproduce",
        "reproduce one of the paper's experiments (figures, CSV, markdown summary)",
    ),
}


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`markov-lens CMD: error: ...`, exit 2), not a
    usage block; `--help` still prints the full usage. Subcommand parsers inherit it."""

    command: str | None = None  # the top-level parser: the command argv names, if known

    def error(self, message: str):
        prog = f"{self.prog} {self.command}" if self.command else self.prog
        self.exit(2, f"{prog}: error: {message}\n")


def add_command(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    """``subparsers.add_parser(name, help=<its help in COMMANDS>, **kwargs)``: what each
    command module's ``register`` calls to add its command."""
    return subparsers.add_parser(name, help=COMMANDS[name][1], **kwargs)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``markov-lens`` parser. Without ``argv``, every command module is imported and
    registers its command. With ``argv``, only the module of the command it names is: the
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
    parser.command = command if command in COMMANDS else None  # errors name the command
    for name, (module, help_) in COMMANDS.items():
        if argv is None or name == command:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from markov_lens.cli.validation import check_outputs, holding_runs, resolve_runs
    from training.limits import allow_large

    try:
        check_outputs(args)  # --out, --plot, --json FILE: no symlink loop, no device
        resolve_runs(args)  # zoo/NAME, as ml.load_run reads it
        # --allow-large; the runs an analysis reads are locked while it runs
        with allow_large(getattr(args, "allow_large", False)), holding_runs(args):
            return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError, UserError) as err:  # OSError: also disk full,
        # permission denied, a directory where a file was expected: one line, no traceback
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"markov-lens {args.command}: error: {message}", file=sys.stderr)
        return 2
    except MemoryError:  # what the estimates (training.limits) did not foresee
        print(
            f"markov-lens {args.command}: error: out of memory; try smaller sizes",
            file=sys.stderr,
        )
        return 2
