"""Options and helpers shared by several commands.

``attention``, ``patch`` and ``explain`` read one run the same way: ``add_run_options`` adds
RUN_DIR, --out, --step, --n-seqs, --seq-len, --seed, --device and --force, ``open_run`` turns
them into (run, model, step, out_dir, seq_len). Every such command reads RUN_DIR
(``training.runs.load_run``), the last checkpoint unless --step, samples --n-seqs sequences of
--seq-len tokens from the run's chain with --seed, and writes into --out (default
RUN_DIR/interp/COMMAND, or RUN_DIR/interp/COMMAND-step_XXXXXX with --step). ``compare`` and
``report`` share ``optional_device``.

Nothing heavy is imported here at module level: the analysis modules are imported by the
functions that use them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from markov_lens.cli.validation import (
    add_allow_large,
    check_device,
    check_output_path,
    check_run_analysis,
    nonempty,
)

if TYPE_CHECKING:
    import torch


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of a command that analyses one checkpoint of a run directory."""
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory written by markov-lens train"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        type=nonempty,
        help="output directory (default RUN_DIR/interp/COMMAND)",
    )
    p.add_argument("--step", type=int, help="checkpoint step (default: the last checkpoint)")
    p.add_argument("--n-seqs", type=positive_int, default=64, help="sequences to analyse (64)")
    p.add_argument(
        "--seq-len",
        type=positive_int,
        help="tokens per sequence (default: training length, <= 128)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled sequences (0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    add_allow_large(p)


def resolve_device_option(name: str) -> torch.device:
    """--device NAME as a torch.device; a bad name is a ValueError naming --device."""
    from training.devices import resolve_device

    return resolve_device(check_device(name))


def open_run(args: argparse.Namespace, command: str):
    """(run, model, step, out_dir, seq_len) for the command's arguments."""
    from interp.explain import default_out_dir, resolve_seq_len
    from training.runs import load_run

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    device = resolve_device_option(args.device)
    run = load_run(args.run_dir)
    steps = run.checkpoint_steps()
    if not steps:
        raise FileNotFoundError(f"run {run.path} has no checkpoints")
    step = steps[-1] if args.step is None else args.step
    model = run.model(step, device=device)
    out = Path(args.out) if args.out else default_out_dir(run.path, command, args.step)
    check_output_path(out)
    seq_len = resolve_seq_len(model, args.seq_len, run.train_config.seq_len)
    if seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {seq_len}")
    # patching holds clean and corrupted batches with their caches
    check_run_analysis(model.cfg, args.n_seqs, seq_len, device, copies=3)
    return run, model, step, out, seq_len


def save_figure(fig, path: Path) -> None:
    """Save a pyplot figure (dpi 110) atomically (training.runs.atomic_path) and close it."""
    import matplotlib.pyplot as plt

    from training.runs import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def optional_device(text: str | None):
    """--device of compare and report: the name given (checked), or None (CUDA when
    available)."""
    return check_device(text) or None
