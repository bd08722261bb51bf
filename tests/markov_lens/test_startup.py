"""Start-up: `markov-lens --help` and the light commands import no heavy subsystem, and
`markov-lens CMD` imports only CMD's module; the command registry (markov_lens.cli.COMMANDS)
agrees with what the command modules register.

Each start-up check runs the command in a fresh interpreter and reads its ``sys.modules``;
nothing is timed. Modules that ``import torch`` itself brings in (torch.optim and tqdm, with torch 2.13)
are not counted against a command: the budget is "close to ``import torch``".
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from markov_lens.cli import COMMANDS, OneLineParser, build_parser

ROOT = Path(__file__).resolve().parents[2]  # tests/markov_lens/this file
HEAVY = (
    "transformer_lens",
    "training.model",
    "torch.optim",
    "torch._dynamo",
    "torch._inductor",
    "sympy",
    "matplotlib",
    "circuitsvis",
    "scipy",
    "pandas",
    "ray",
    "tqdm",
)
RUN_MAIN = """
import contextlib, io, json, sys
argv = json.loads(sys.argv[1])
rc = None
if argv is not None:
    from markov_lens.cli import main
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
else:
    import torch
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def modules_after(argv: list[str] | None) -> tuple[int | None, set[str]]:
    """(exit code, sys.modules) of a fresh interpreter that ran ``main(argv)``, or only
    ``import torch`` when argv is None."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN_MAIN, json.dumps(argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    return result["rc"], set(result["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


COMMAND_MODULES = {module for module, _ in COMMANDS.values()}
# the commands whose `--help` imports nothing heavy beyond torch (patch and explain read their
# choices from interp.patching, which loads the model)
LIGHT = set(COMMANDS) - {"patch", "explain"}


def cli_modules(modules: set[str]) -> list[str]:
    """The command modules among ``modules``."""
    return sorted(m for m in modules if m in COMMAND_MODULES)


@pytest.fixture(scope="module")
def torch_modules() -> set[str]:
    return modules_after(None)[1]


def test_help_imports_no_command_module():
    rc, modules = modules_after(["--help"])
    assert rc == 0
    assert heavy(modules) == []
    assert "torch" not in modules  # the commands are listed from the registry
    assert cli_modules(modules) == []


def test_chain_imports_nothing_heavy_beyond_torch(torch_modules):
    rc, modules = modules_after(["chain", "--p", "0.5", "--q", "0.8"])
    assert rc == 0
    assert heavy(modules - torch_modules) == []
    assert "transformer_lens" not in modules
    assert cli_modules(modules) == ["markov_lens.cli.chain"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_imports_only_its_module(command, torch_modules):
    rc, modules = modules_after([command, "--help"])
    assert rc == 0
    assert cli_modules(modules) == [COMMANDS[command][0]]
    if command in LIGHT:
        assert heavy(modules - torch_modules) == []


def listing(parser) -> list[tuple[str, str | None]]:
    """(command, help) as the top-level --help lists them."""
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return [(a.dest, a.help) for a in sub._choices_actions]


def test_each_command_module_registers_exactly_its_command():
    for name, (module, help_) in COMMANDS.items():
        sub = OneLineParser(prog="markov-lens").add_subparsers(dest="command")
        importlib.import_module(module).register(sub)
        assert list(sub.choices) == [name], module
        assert [(a.dest, a.help) for a in sub._choices_actions] == [(name, help_)], module
        assert sub.choices[name].get_default("func") is not None, module


def test_the_registry_lists_every_command_module():
    """Every module of markov_lens/cli that defines register is in COMMANDS (no command
    outside the registry), and every module in COMMANDS exists."""
    cli = ROOT / "markov_lens" / "cli"
    registering = {
        f"markov_lens.cli.{path.stem}"
        for path in cli.glob("*.py")
        if "\ndef register(" in path.read_text()
    }
    assert registering == COMMAND_MODULES
    assert len(COMMAND_MODULES) == len(COMMANDS)  # one module per command


def test_listing_without_imports_matches_the_registered_commands():
    full = build_parser()  # imports and registers every command module
    assert listing(full) == [(name, help_) for name, (_, help_) in COMMANDS.items()]
    assert listing(build_parser(["--help"])) == listing(full)
    assert build_parser(["--help"]).format_help() == full.format_help()
    for command in COMMANDS:  # the command named is registered for real
        sub = build_parser([command])._subparsers._group_actions[0]
        assert sub.choices[command].get_default("func") is not None, command
