"""``markov-lens patch RUN_DIR``: activation patching sweeps (every layer, position and head).

    markov-lens patch runs/demo/untied --corruption flip --direction both

Reads RUN_DIR as every run command does (markov_lens.cli.options: the last checkpoint unless
--step, --n-seqs sequences of --seq-len tokens sampled with --seed) and writes into --out
(default RUN_DIR/interp/patch, or RUN_DIR/interp/patch-step_XXXXXX with --step). It refuses
to replace existing outputs unless --force.
"""

from __future__ import annotations

import argparse
import json

import torch

from interp.corruptions import CORRUPTIONS
from markov_lens.cli import add_command
from markov_lens.cli.options import add_run_options, open_run, save_figure
from training.runs import write_text_atomic

# register imports interp.patching for its choices, which loads the model as long as
# interp.patching imports training.model at its top; the rest is imported by run_patch.


def register(subparsers) -> None:
    from interp.patching import ACTS, DIRECTIONS, METRICS

    p = add_command(
        subparsers,
        "patch",
        description="Denoising / noising activation patching of a trained run for one "
        "in-distribution corruption, with normalised effects and direct-path shares.",
    )
    add_run_options(p)
    p.add_argument("--corruption", choices=CORRUPTIONS, default="flip", help="(flip)")
    p.add_argument("--direction", choices=(*DIRECTIONS, "both"), default="both", help="(both)")
    p.add_argument("--metric", choices=METRICS, default="logit_diff", help="(logit_diff)")
    p.add_argument(
        "--acts",
        default="resid_pre,attn_out,mlp_out,z",
        help=f"comma-separated activations from {', '.join(ACTS)} (resid_pre,attn_out,mlp_out,z)",
    )
    p.set_defaults(func=run_patch)


def run_patch(args: argparse.Namespace) -> int:
    from interp.corruptions import make_patching_data
    from interp.explain import check_outputs, finite_json
    from interp.patching import ACTS, DIRECTIONS, cache_runs, direct_path_effects, run_patching
    from interp.patching.plots import plot_patching_result

    run, model, step, out, n = open_run(args, "patch")
    acts = [a.strip() for a in args.acts.split(",") if a.strip()]
    bad = [a for a in acts if a not in ACTS]
    if bad or not acts:
        raise ValueError(f"--acts: unknown activation(s) {bad}; allowed: {', '.join(ACTS)}")
    if model.cfg.attn_only:
        acts = [a for a in acts if a not in ("resid_mid", "mlp_out")]
    directions = list(DIRECTIONS) if args.direction == "both" else [args.direction]
    names = ["patching.json"] + [f"patch_{args.corruption}_{d}.png" for d in directions]
    check_outputs(out, names, args.force)
    gen = torch.Generator().manual_seed(args.seed)
    data = make_patching_data(run.chain, args.corruption, args.n_seqs, n, gen)
    from training.progress import Stages

    with Stages("markov-lens patch", len(directions) + 1) as stage:
        # Both batches run once with every hook cached (the explicit attention branch): the
        # sources and targets of both directions' sweeps.
        runs = cache_runs(model, data)
        results = {}
        for d in directions:
            stage(f"{d}: {', '.join(acts)}")
            results[d] = run_patching(model, data, acts, d, args.metric, runs=runs)
        stage("direct paths")
        # its own two runs with only the hooks it reads: the fused attention branch, as the
        # direct paths are defined (the explicit branch differs by float rounding)
        direct = direct_path_effects(model, data, args.metric)
    out.mkdir(parents=True, exist_ok=True)
    for d, res in results.items():
        title = f"{args.corruption}, {d}: normalised {args.metric} (step {step})"
        save_figure(plot_patching_result(res, title), out / f"patch_{args.corruption}_{d}.png")
    record = {
        "run_dir": str(run.path),
        "step": step,
        "n_seqs": args.n_seqs,
        "seq_len": n,
        "seed": args.seed,
        "results": {d: r.to_dict() for d, r in results.items()},
        "direct_paths": direct,
    }
    write_text_atomic(
        out / "patching.json", json.dumps(finite_json(record), indent=2, allow_nan=False)
    )
    res = next(iter(results.values()))
    print(
        f"{args.corruption}: model effect {res.effect:.4f} (perfect predictor {res.true_effect:.4f}); "
        f"wrote {', '.join(names)} to {out}"
    )
    return 0
