"""``markov-lens sweep``: train a grid of runs in parallel, resumable.

markov-lens sweep spec.yaml --out runs/sweep1 --workers 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from markov_lens.cli import add_command
from markov_lens.cli.validation import add_allow_large, check_output_path, nonempty
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
    p.add_argument("--out", required=True, type=nonempty, metavar="DIR")
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
    add_allow_large(p)
    p.set_defaults(func=run_sweep_cmd)


def check_tasks(tasks, n_seqs: int | None = None, max_len: int = 256) -> None:
    """Refuse the sweep before any run starts if one of its runs would be refused by
    ``markov-lens train``: its configs (built by expand), its device, its memory estimate;
    with ``n_seqs``, also an analysis of n_seqs sequences of at most max_len tokens (atlas)."""
    from markov_lens.cli.validation import check_run_analysis
    from training import limits
    from training.devices import resolve_device
    from training.options import build_run_config

    for t in {t.cell: t for t in tasks}.values():  # the seeds of a cell share its sizes
        rc = build_run_config(t.options | {"seed": t.seed})
        try:
            resolve_device(rc.train.device)
            limits.check_fits(limits.training_estimate(rc.model, rc.train), "training")
            if n_seqs is not None:
                seq_len = min(rc.train.seq_len, rc.model.n_ctx, max_len)
                check_run_analysis(rc.model, n_seqs, seq_len, rc.train.device, copies=3)
        except ValueError as err:
            raise ValueError(f"run {t.run_dir}: {err}") from None


def failed_runs(rows) -> int:
    """Print one line per failed row of a sweep (stderr); the number of them."""
    failed = [r for r in rows if r.get("status") == "failed"]
    for r in failed:
        print(f"failed: {r.get('run_dir')}: {r.get('error')}", file=sys.stderr)
    return len(failed)


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from training.sweeps import expand

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    spec = load_spec(args.spec)
    check_output_path(args.out)
    tasks = expand(spec, args.out)
    check_tasks(tasks)
    if args.dry_run:
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
    n_failed = failed_runs(result.rows)
    if n_failed:
        print(f"markov-lens sweep: {n_failed} of {len(result.rows)} runs failed", file=sys.stderr)
        return 1
    return 0
