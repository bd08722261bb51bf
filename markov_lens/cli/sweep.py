"""``markov-lens sweep``: train a grid of runs in parallel, resumable.

markov-lens sweep spec.yaml --out runs/sweep1 --workers 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from markov_lens.cli import add_command
from training.runs import SUMMARY
from training.sweeps import load_spec, run_sweep


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "sweep",
        description="Run every combination of the list-valued options in SPEC (YAML or JSON: "
        "sections chain, model, train with `markov-lens train` option names, and seeds) "
        "for every seed; finished runs are skipped, so re-running resumes. Writes "
        "DIR/runs/, DIR/results.csv, DIR/aggregate.csv and DIR/aggregate.md.",
    )
    p.add_argument("spec", metavar="SPEC", help="sweep spec file (.yaml, .yml or .json)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument(
        "--backend",
        default="local",
        help="local (worker processes, default), ensemble (same-shape runs trained as one "
        "batched computation) or ray",
    )
    p.add_argument("--address", help="Ray cluster address (with --backend ray)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument(
        "--force", action="store_true", help="run SPEC in a DIR that holds a sweep of another spec"
    )
    p.set_defaults(func=run_sweep_cmd)


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from training.sweeps import expand

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    spec = load_spec(args.spec)
    if args.dry_run:
        tasks = expand(spec, args.out)
        for t in tasks:
            done = " (finished)" if (Path(t.run_dir) / SUMMARY).exists() else ""
            print(f"{t.run_dir}{done}")
        print(f"{len(tasks)} runs in {len({t.cell for t in tasks})} cells")
        return 0
    backend = args.backend
    if args.address is not None:
        if backend != "ray":
            raise ValueError("--address needs --backend ray")
        from training.sweeps.ray import RayBackend

        backend = RayBackend(address=args.address)
    result = run_sweep(spec, args.out, workers=args.workers, backend=backend, force=args.force)
    print((Path(args.out) / "aggregate.md").read_text(), end="")
    for key, path in result.files.items():
        print(f"{key}: {path}")
    return 0
