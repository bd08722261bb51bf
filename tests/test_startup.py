"""Start-up: `markov-lens --help` and the light commands import no heavy subsystem.

Each check runs the command in a fresh interpreter and reads its ``sys.modules``; nothing is
timed. Modules that ``import torch`` itself brings in (torch.optim and tqdm, with torch 2.13)
are not counted against a command: the budget is "close to ``import torch``".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from interp.cli import build_parser, command_modules, declared_commands

ROOT = Path(__file__).resolve().parents[1]
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
    from interp.cli import main
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


def cli_modules(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules if m.startswith(("training.cli_", "probes.cli_", "interp.cli_"))
    )


@pytest.fixture(scope="module")
def torch_modules() -> set[str]:
    return modules_after(None)[1]


def test_help_imports_no_command_module():
    rc, modules = modules_after(["--help"])
    assert rc == 0
    assert heavy(modules) == []
    assert "torch" not in modules  # the commands are listed from their modules' source
    assert cli_modules(modules) == []


def test_chain_imports_nothing_heavy_beyond_torch(torch_modules):
    rc, modules = modules_after(["chain", "--p", "0.5", "--q", "0.8"])
    assert rc == 0
    assert heavy(modules - torch_modules) == []
    assert "transformer_lens" not in modules
    assert cli_modules(modules) == ["training.cli_chain"]


@pytest.mark.parametrize(
    "command", ["train", "sweep", "reproduce", "probe", "landscape", "compare", "report"]
)
def test_command_help_imports_nothing_heavy_beyond_torch(command, torch_modules):
    rc, modules = modules_after([command, "--help"])
    assert rc == 0
    assert heavy(modules - torch_modules) == []


def listing(parser) -> list[tuple[str, str | None]]:
    """(command, help) as the top-level --help lists them."""
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return [(a.dest, a.help) for a in sub._choices_actions]


def test_commands_read_from_source_match_the_registered_ones():
    full = build_parser()  # imports and registers every command module
    assert all(declared_commands(name) is not None for name in command_modules())
    assert listing(build_parser(["--help"])) == listing(full)
    assert build_parser(["--help"]).format_help() == full.format_help()
    for command in dict(listing(full)):  # the command named is registered for real
        sub = build_parser([command])._subparsers._group_actions[0]
        assert sub.choices[command].get_default("func") is not None, command
