"""``markov-lens probe``: linear probes with controls on a run's checkpoints, or across runs.

    markov-lens probe RUN_DIR                               # last checkpoint, default table
    markov-lens probe RUN_DIR --checkpoints all             # score against training step
    markov-lens probe RUN_A RUN_B RUN_C --out cmp/          # the same table across runs
    markov-lens probe RUN_DIR --targets x_n next_prob --components resid mlp_post.0

Writes OUT/probes.csv (one row per run, step, component, target; columns in
probes.sweeps.COLUMNS), OUT/probe_config.json and figures: heatmap_score.png and
heatmap_selectivity.png (component x target, last step of the first run), steps_TARGET.png
(several checkpoints), runs_TARGET.png (several runs). OUT defaults to RUN_DIR/probes for one
run. Existing outputs are never overwritten without --force.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from markov_lens.cli import add_command
from markov_lens.cli.validation import (
    add_allow_large,
    check_device,
    check_output_path,
    check_run_analysis,
    check_threads,
)
from training.limits import MAX_N_CTX, MAX_SEQUENCES, Estimate, check_cap, check_fits

if TYPE_CHECKING:  # probes.sweeps loads the model (transformer_lens): only when probing
    from probes.sweeps import ProbeConfig

CSV = "probes.csv"
CONFIG = "probe_config.json"


def _split_list(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "probe",
        description="Fit ridge (continuous targets) and logistic (discrete targets) probes on "
        "cached activations of held-out sequences, split by sequence, with Hewitt-Liang "
        "control tasks, a shuffled-target baseline and a random-init model baseline.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    p.add_argument(
        "--targets",
        nargs="+",
        metavar="T",
        help="x_n, x_n-K, position, next_prob, marginal, icl_unigram, icl_counts, icl_bigram, "
        "model_prob, model_logit (default: by chain)",
    )
    p.add_argument(
        "--components",
        nargs="+",
        metavar="C",
        help="e.g. embed resid_post.0 mlp_post.0 result.0.1 resid_final ln_final, or groups "
        "default, resid, outputs, heads, mlp, all (default: default)",
    )
    p.add_argument(
        "--checkpoints",
        default="last",
        metavar="all|last|STEP,...",
        help="which checkpoints of each run (default: last)",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/probes)")
    p.add_argument("--n-seqs", type=int, default=128, help="held-out sequences (128)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (the run's training length)")
    p.add_argument(
        "--positions",
        default=None,
        metavar="N|all",
        help="positions probed per sequence, shared by all sequences (64)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of sequences, splits, controls (0)")
    p.add_argument("--folds", type=int, help="k-fold CV by sequence instead of one split")
    p.add_argument("--test-fraction", type=float, default=0.25, help="held-out sequences (0.25)")
    p.add_argument(
        "--control",
        default="pos_token",
        help="control-task input type: pos_token, bigram, trigram, token or none",
    )
    p.add_argument("--no-random-baseline", action="store_true", help="skip the random model")
    p.add_argument("--no-shuffle-baseline", action="store_true", help="skip shuffled targets")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass (32)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's; 1 is often fastest for tiny models on a "
        "busy machine)",
    )
    p.add_argument("--no-plots", action="store_true", help="write the CSV only")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_allow_large(p)
    p.set_defaults(func=run)


def _positions(value: str) -> int | None:
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(
            f"--positions must be a positive integer or 'all', got {value!r}"
        ) from None
    if n < 1:
        raise ValueError(f"--positions must be a positive integer or 'all', got {value!r}")
    check_cap("--positions", n, MAX_N_CTX)
    return n


def config_from_args(args: argparse.Namespace) -> ProbeConfig:
    from probes.sweeps import ProbeConfig

    return ProbeConfig(
        targets=_split_list(args.targets),
        components=_split_list(args.components),
        n_seqs=args.n_seqs,
        seq_len=args.seq_len,
        n_positions=64 if args.positions is None else _positions(args.positions),
        batch_size=args.batch_size,
        test_fraction=args.test_fraction,
        folds=args.folds,
        control=None if args.control == "none" else args.control,
        shuffle_baseline=not args.no_shuffle_baseline,
        random_baseline=not args.no_random_baseline,
        seed=args.seed,
        device=args.device,
    )


def check_probe_sizes(run, args: argparse.Namespace) -> None:
    """--n-seqs, --seq-len, --positions and --batch-size of a probe of ``run`` within the caps
    and the memory available (the cached activations of every component at the probed
    positions, and one batch's forward pass)."""
    cfg = run.model_config
    seq_len = args.seq_len or min(run.train_config.seq_len, cfg.n_ctx)
    positions = 64 if args.positions is None else _positions(args.positions)
    if args.positions is not None and positions is not None and positions > seq_len:
        raise ValueError(
            f"--positions {positions} is more than the {seq_len} positions of a sequence "
            "(--seq-len); give at most that, or 'all'"
        )
    check_cap("--batch-size", args.batch_size, MAX_SEQUENCES)
    check_run_analysis(cfg, args.n_seqs, seq_len, args.device, copies=2, batch=args.batch_size)
    width = (2 * cfg.n_layers + 2) * max(cfg.d_model, cfg.d_mlp)  # every component, at most
    cached = float(args.n_seqs * min(positions or seq_len, seq_len) * width * 4)
    check_fits(Estimate({"cached activations": cached}), f"--n-seqs {args.n_seqs} probes")


def _figures(rows: list[dict], out: Path, n_runs: int) -> dict[str, callable]:
    """Figure file name -> function drawing it (to check for existing files before drawing)."""
    from probes import plots

    first = rows[0]["run"]
    mine = [r for r in rows if r["run"] == first]
    steps = sorted({r["step"] for r in mine if r["step"] != ""})
    last = [r for r in mine if not steps or r["step"] == steps[-1]]
    targets = list(dict.fromkeys(r["target"] for r in rows))
    figs = {
        "heatmap_score.png": lambda p: plots.plot_heatmap(
            last,
            "score",
            p,
            title=f"{first} step {steps[-1] if steps else ''}: held-out score",
            overwrite=True,
        ),
    }
    if any(r["kind"] == "discrete" and not math.isnan(r["selectivity"]) for r in last):
        figs["heatmap_selectivity.png"] = lambda p: plots.plot_heatmap(
            [r for r in last if r["kind"] == "discrete"], "selectivity", p, overwrite=True
        )
    if len(steps) > 1:
        for t in targets:
            figs[f"steps_{t}.png"] = lambda p, t=t: plots.plot_over_steps(
                mine, t, "score", p, title=f"{first}: {t}", overwrite=True
            )
    if n_runs > 1:
        for t in targets:
            figs[f"runs_{t}.png"] = lambda p, t=t: plots.plot_across_runs(
                rows, t, "score", p, overwrite=True
            )
    return figs


def run(args: argparse.Namespace) -> int:
    import torch

    from probes.sweeps import probe_runs, write_csv
    from training.runs import load_run, write_text_atomic

    run_dirs = [Path(d) for d in args.run_dirs]
    for d in run_dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"run directory {d} does not exist")
    if args.out is None and len(run_dirs) > 1:
        raise ValueError("several RUN_DIRs need --out DIR for the combined table")
    out = check_output_path(args.out) if args.out is not None else run_dirs[0] / "probes"
    config = config_from_args(args)
    check_device(args.device)
    for d in run_dirs:  # every run's sizes, before any activation is cached
        check_probe_sizes(load_run(d), args)
    if args.threads is not None:
        torch.set_num_threads(check_threads(args.threads))
    existing = [out / n for n in (CSV, CONFIG) if (out / n).exists()]
    if existing and not args.force:
        raise FileExistsError(
            f"{', '.join(map(str, existing))} already exist(s); pass --force to overwrite"
        )
    rows = probe_runs(run_dirs, config, args.checkpoints, progress=True)
    figs = {} if args.no_plots else _figures(rows, out, len(run_dirs))
    clash = [out / n for n in figs if (out / n).exists()]
    if clash and not args.force:
        raise FileExistsError(
            f"{', '.join(map(str, clash))} already exist(s); pass --force to overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / CSV, overwrite=args.force)
    meta = {
        "runs": [str(d) for d in run_dirs],
        "checkpoints": args.checkpoints,
        "probe": config.to_dict(),
    }
    write_text_atomic(out / CONFIG, json.dumps(meta, indent=2) + "\n")
    for name, draw in figs.items():
        draw(out / name)
    _print_summary(rows)
    print(f"wrote {out / CSV} ({len(rows)} rows)" + (f" and {len(figs)} figures" if figs else ""))
    return 0


def _print_summary(rows: list[dict], threshold: float = 0.9) -> None:
    """Per run and target, at the last probed step: the best component and its score; with
    several steps, the first step at which some component's score reaches ``threshold``."""
    last: dict[str, object] = {}
    for r in rows:
        if r["step"] != "":
            last[r["run"]] = max(last.get(r["run"], r["step"]), r["step"])
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["step"] != last.get(r["run"], "") or math.isnan(r["score"]):
            continue
        key = (r["run"], r["target"])
        if key not in best or r["score"] > best[key]["score"]:
            best[key] = r
    print(
        f"{'run':<20} {'step':>7} {'target':<12} {'best component':<16} "
        f"{'score':>7} {'random':>7} {'select.':>7}"
    )
    for (run_name, target), r in best.items():
        print(
            f"{run_name[:20]:<20} {r['step']!s:>7} {target:<12} {r['component']:<16} "
            f"{r['score']:7.3f} {r['random_score']:7.3f} {r['selectivity']:7.3f}"
        )
