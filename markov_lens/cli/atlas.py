"""``markov-lens atlas``: train and measure a grid of runs and say where the kernel lives.

    markov-lens atlas --preset quick --out runs/atlas-quick
    markov-lens atlas SPEC.yaml --out DIR [--seeds N] [--workers W] [--backend ray]

Resumable: re-running skips runs already measured (RUN_DIR/atlas.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from markov_lens.cli import UserError, add_command
from markov_lens.cli.validation import add_allow_large, check_output_path, nonempty


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "atlas",
        description="Train every run of a grid (a preset, or a sweep spec: YAML/JSON with the "
        "sweep syntax) and measure each in its worker: flip patching of x_n, x_{n-1}, ... "
        "with direct-path shares and mean ablation, probes with controls, head scores, and "
        "evaluation on other chains (in weights or in context?). Writes atlas.csv (one row "
        "per run), cells.csv, atlas.md and figures into --out; re-running resumes.",
    )
    p.add_argument("spec", nargs="?", metavar="SPEC", help="sweep spec file (or use --preset)")
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="a built-in grid (paper: paper settings, 1200 runs; session: shortened to fit "
        "a 3-hour session on 2 cores; quick: minutes; test: seconds; in-context, "
        "in-context-paper, in-context-test: chains with a kernel per sequence, 640 runs at "
        "CPU / paper settings)",
    )
    p.add_argument("--out", metavar="DIR", required=True, type=nonempty, help="output directory")
    p.add_argument("--seeds", type=int, help="seeds per cell (preset default: 5; quick 2)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument(
        "--backend", default="local", help="local (default), ensemble or ray (see `sweep`)"
    )
    p.add_argument(
        "--collect",
        metavar="DIR",
        type=nonempty,
        help="train and measure nothing: write the tables and figures of the runs in --out "
        "measured so far into DIR (an atlas still running, or left unfinished)",
    )
    p.add_argument(
        "--restore",
        metavar="DIR",
        type=nonempty,
        help="before running, restore the runs recorded in DIR (the tables of an earlier "
        "--collect, e.g. docs/results/atlas-in-context) into --out instead of training them "
        "again: their measurements, not their checkpoints",
    )
    p.add_argument("--n-seqs", type=int, default=128, help="sequences per measurement (128)")
    p.add_argument("--no-probes", action="store_true", help="skip the probes")
    p.add_argument("--no-timeline", action="store_true", help="skip the checkpoint timeline")
    p.add_argument(
        "--force",
        action="store_true",
        help="run in an --out that holds another atlas spec; with --collect, replace DIR's tables",
    )
    add_allow_large(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from interp.atlas.grid import PRESETS, preset_spec
    from interp.atlas.measure import AtlasConfig
    from interp.atlas.runner import run_atlas
    from markov_lens.cli.sweep import check_tasks, failed_runs
    from training.limits import MAX_SEQUENCES, check_cap
    from training.sweeps import expand, load_spec

    if (args.spec is None) == (args.preset is None):
        raise UserError(f"give either a SPEC file or --preset NAME ({', '.join(PRESETS)})")
    if args.preset is not None and args.preset not in PRESETS:
        raise UserError(f"--preset: unknown preset {args.preset!r}; allowed: {', '.join(PRESETS)}")
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {args.seeds}")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be a positive integer, got {args.workers}")
    if args.n_seqs < 1:
        raise UserError(f"--n-seqs must be a positive integer, got {args.n_seqs}")
    check_cap("--n-seqs", args.n_seqs, MAX_SEQUENCES)
    check_output_path(args.out)
    if args.preset:
        spec = preset_spec(args.preset, args.seeds)
        settings = (
            f"Preset `{args.preset}`: `markov-lens atlas --preset {args.preset}"
            + (f" --seeds {args.seeds}" if args.seeds else "")
            + "`."
        )
    else:
        spec = load_spec(args.spec)
        if args.seeds is not None:
            for s in spec if isinstance(spec, list) else [spec]:
                s["seeds"] = args.seeds
        settings = f"Spec `{args.spec}`:\n\n```json\n{json.dumps(spec)[:4000]}\n```"
    config = AtlasConfig(
        n_seqs=args.n_seqs, probes=not args.no_probes, timeline=not args.no_timeline
    )
    if args.collect is not None:
        from interp.atlas.runner import collect_atlas

        check_output_path(args.collect, "--collect")
        held = [n for n in ("atlas.md", "atlas.csv") if (Path(args.collect) / n).exists()]
        if held and not args.force:
            raise UserError(
                f"--collect: {args.collect} already holds {held[0]}; add --force to replace "
                "its tables and figures"
            )
        if not Path(args.out).is_dir():
            raise UserError(f"--collect: {args.out} is not a directory (nothing to collect)")
        try:
            files = collect_atlas(spec, args.out, args.collect, settings, config)
        except (FileNotFoundError, ValueError) as err:
            raise UserError(str(err)) from err
        for name in ("atlas_md", "atlas_csv", "cells_csv", "atlas_grid"):
            print(files[name])
        return 0
    if args.restore is not None:
        from interp.atlas.records import RECORDS, read_records

        try:
            if not read_records(args.restore):
                raise UserError(
                    f"--restore: {args.restore} holds no atlas records ({RECORDS}/*.jsonl.gz, "
                    "written by `atlas --collect`)"
                )
        except ValueError as err:
            raise UserError(f"--restore: {err}") from None
    # every run as `train` would check it, and its measurement
    check_tasks(expand(spec, args.out), config.n_seqs, config.max_len)
    files = run_atlas(
        spec,
        Path(args.out),
        config,
        workers=args.workers,
        backend=args.backend,
        force=args.force,
        settings=settings,
        restore=args.restore,
    )
    for name in ("atlas_md", "atlas_csv", "cells_csv", "atlas_grid"):
        print(files[name])
    with open(Path(args.out) / "results.csv", newline="") as f:  # the sweep's rows
        rows = list(csv.DictReader(f))
    n_failed = failed_runs(rows)
    if n_failed:
        print(f"markov-lens atlas: {n_failed} of {len(rows)} runs failed", file=sys.stderr)
        return 1
    return 0
