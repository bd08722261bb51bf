"""``markov-lens reproduce``: one of the paper's experiments (figures, CSV, markdown summary).

markov-lens reproduce tying --quick --out runs/demo
"""

from __future__ import annotations

import argparse
import os

from markov_lens.cli import add_command
from training.sweeps import markdown_table


def register(subparsers) -> None:
    from training.experiments import EXPERIMENTS, MEASURED
    from training.experiments.presets import ARITHMETICS

    p = add_command(
        subparsers,
        "reproduce",
        description="Reproduce an experiment of Makkuva et al. through the sweep machinery "
        "(parallel, resumable). Experiments: "
        + "; ".join(f"{k}: {v[2]}" for k, v in EXPERIMENTS.items())
        + ". Default settings are the paper's; --quick runs in minutes on a 2-core CPU. Measured "
        "at the paper's settings on a 2-core CPU: "
        + "; ".join(f"{k}, {v}" for k, v in MEASURED.items())
        + ".",
    )
    p.add_argument(
        "name", choices=list(EXPERIMENTS), metavar="NAME", help="one of: " + ", ".join(EXPERIMENTS)
    )
    p.add_argument("--quick", action="store_true", help="shorter sequences, fewer seeds/cells")
    p.add_argument(
        "--size",
        choices=("full", "quick", "test"),
        help="settings size (--quick = --size quick; test = tiny, for the test suite)",
    )
    p.add_argument("--seeds", type=int, help="seeds per cell (default: 3; in-context: 5)")
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/NAME[-SIZE])")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument(
        "--arithmetic",
        choices=list(ARITHMETICS),
        help="train in this arithmetic (default: float32): authors-gpu = the paper's GPU runs "
        "(fp16 autocast, no grad scaler, TF32; CUDA only), fp16 = the same without TF32 (a CPU "
        "emulation), fp16-scaled = with a grad scaler, bf16",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a DIR that holds this experiment at another size or seed count",
    )
    p.set_defaults(func=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from training.experiments import claims_table, reproduce

    if args.quick and args.size not in (None, "quick"):
        raise ValueError(f"--quick conflicts with --size {args.size}")
    size = args.size or ("quick" if args.quick else "full")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    rep = reproduce(
        args.name,
        args.out,
        size=size,
        seeds=args.seeds,
        workers=args.workers,
        force=args.force,
        arithmetic=args.arithmetic,
    )
    cols = [
        "seeds",
        "bigram",
        "unigram",
        "neither",
        "loss_mean",
        "entropy_rate",
        "unigram_loss",
        "on_plateau",
        "escaped",
        "exit_step_median",
    ]
    keys = [
        k
        for k in (rep.table[0] if rep.table else {})
        if k not in cols and not k.startswith(("finished", "loss_", "plateau_", "wall_"))
    ]
    print(f"\n{args.name} ({size}): {len(rep.table)} cells, wall {rep.wall_seconds:.0f} s\n")
    print(markdown_table(rep.table, keys + cols))
    print(claims_table(rep.claims))
    print(f"outputs in {os.path.abspath(rep.out_dir)}:")
    for path in list(rep.figures.values()) + [rep.files["summary_csv"], rep.files["summary_md"]]:
        print(f"  {path}")
    return 0
