"""Start-up: wall time of fresh interpreters (median of 5): ``import torch`` vs
``markov-lens --help`` and vs ``markov-lens chain --p 0.5 --q 0.8``."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.measure import Comparison


def startup_commands() -> list[tuple[str, list[str]]]:
    """(label, argv) of the start-up comparison: ``import torch`` in a fresh interpreter,
    ``markov-lens --help`` and ``markov-lens chain --p 0.5 --q 0.8`` (the console script
    beside this interpreter; without one, ``markov_lens.cli.main`` run by this interpreter)."""
    script = Path(sys.executable).with_name("markov-lens")

    def cli(argv: list[str]) -> list[str]:
        if script.is_file():
            return [str(script), *argv]
        code = f"import sys; from markov_lens.cli import main; sys.exit(main({argv!r}))"
        return [sys.executable, "-c", code]

    return [
        ("import torch", [sys.executable, "-c", "import torch"]),
        ("markov-lens --help", cli(["--help"])),
        ("markov-lens chain --p 0.5 --q 0.8", cli(["chain", "--p", "0.5", "--q", "0.8"])),
    ]


def compare_startup(repeats: int = 5, warmup: int = 1) -> list[Comparison]:
    """Wall seconds of each startup_commands() process (median of `repeats`, after `warmup`
    untimed runs; the commands in turn, so that load changes affect all alike): each
    markov-lens command against ``import torch``. A command that fails is reported skipped."""
    commands = startup_commands()
    times: dict[str, list[float]] = {label: [] for label, _ in commands}
    errors: dict[str, str] = {}
    for r in range(warmup + repeats):
        for label, argv in commands:
            if label in errors:
                continue
            t0 = time.perf_counter()
            proc = subprocess.run(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600
            )
            dt = time.perf_counter() - t0
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or [""])[-1]
                errors[label] = f"exit code {proc.returncode}: {last}"
            elif r >= warmup:
                times[label].append(dt)
    base, *others = (label for label, _ in commands)
    median = {k: statistics.median(v) for k, v in times.items() if k not in errors and v}
    name = f"start-up (median of {repeats} fresh process{'es' if repeats > 1 else ''})"
    out = []
    for label in others:
        details = {
            "seconds": {k: times[k] for k in (base, label)},
            "median_s": {k: median.get(k) for k in (base, label)},
            "command": label,
            "argv": dict(commands)[label],
        }
        why = errors.get(base) or errors.get(label)
        if why:
            out.append(Comparison(name, base, label, None, None, details, skipped=why))
            continue
        out.append(
            Comparison(
                name,
                f"{base} {median[base]:.2f} s",
                f"{label} {median[label]:.2f} s",
                median[base],
                median[label],
                details,
            )
        )
    return out
