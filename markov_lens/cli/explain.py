"""``markov-lens explain RUN_DIR``: report.md + PNGs: does the prediction depend on x_n, and
through what (bigram or unigram)?

    markov-lens explain runs/demo/untied --step 400

Reads RUN_DIR as every run command does (markov_lens.cli.options: the last checkpoint unless
--step, --n-seqs sequences of --seq-len tokens sampled with --seed) and writes into --out
(default RUN_DIR/interp/explain, or RUN_DIR/interp/explain-step_XXXXXX with --step). It
refuses to replace existing outputs unless --force.
"""

from __future__ import annotations

import argparse

from markov_lens.cli import add_command
from markov_lens.cli.options import add_run_options, resolve_device_option


def register(subparsers) -> None:
    from interp.patching import METRICS

    e = add_command(
        subparsers,
        "explain",
        description="Run attention, head scores, attribution, patching and ablation on a trained "
        "run and write report.md + PNGs with the mechanistic verdict (bigram / unigram).",
    )
    add_run_options(e)
    e.add_argument("--metric", choices=METRICS, default="logit_diff", help="(logit_diff)")
    e.set_defaults(func=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from interp.explain import ExplainConfig, explain_run, resolve_seq_len
    from markov_lens.cli.validation import check_run_analysis
    from training.runs import load_run

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    device = resolve_device_option(args.device)
    run = load_run(args.run_dir)  # its config: the sizes are checked before any allocation
    seq_len = resolve_seq_len(
        SimpleNamespace(cfg=run.model_config), args.seq_len, run.train_config.seq_len
    )
    check_run_analysis(run.model_config, args.n_seqs, seq_len, device, copies=3)
    config = ExplainConfig(
        n_seqs=args.n_seqs, seq_len=args.seq_len, seed=args.seed, metric=args.metric
    )
    report, expl = explain_run(args.run_dir, args.out, args.step, config, args.force, device)
    s = expl.summary
    ratio = "n/a" if s["flip_ratio"] is None else f"{s['flip_ratio']:.2f}"
    print(f"verdict: {s['verdict']} (flip ratio {ratio}, carrier {s['carrier']}); wrote {report}")
    return 0
