"""``markov-lens attention RUN_DIR``: attention heatmaps, offset profile, head scores, HTML.

    markov-lens attention runs/demo/untied            # heatmaps, offset profile, head scores, HTML

Reads RUN_DIR as every run command does (markov_lens.cli.options: the last checkpoint unless
--step, --n-seqs sequences of --seq-len tokens sampled with --seed) and writes into --out
(default RUN_DIR/interp/attention, or RUN_DIR/interp/attention-step_XXXXXX with --step). It
refuses to replace existing outputs unless --force.
"""

from __future__ import annotations

import argparse
import json

import torch

from markov_lens.cli import add_command
from markov_lens.cli.options import add_run_options, open_run, save_figure
from training.limits import MAX_N_CTX
from training.runs import display_name, write_text_atomic

# The analysis modules (matplotlib, the model and transformer_lens) are imported by run.


def register(subparsers) -> None:
    a = add_command(
        subparsers,
        "attention",
        description="Attention patterns of a trained run: heatmaps (one sequence and the batch "
        "mean), the mean weight per relative offset, previous-token and induction head scores "
        "against shuffled baselines, and an interactive circuitsvis page that works offline.",
    )
    add_run_options(a)
    a.add_argument("--max-offset", type=int, default=16, help="largest offset profiled (16)")
    a.add_argument("--no-html", action="store_true", help="skip the circuitsvis HTML page")
    a.set_defaults(func=run_attention)


def run_attention(args: argparse.Namespace) -> int:
    from interp.attention import plot_offset_profile, plot_patterns, write_attention_html
    from interp.explain import analyse_attention, check_outputs, finite_json

    run, model, step, out, n = open_run(args, "attention")
    if not 0 <= args.max_offset <= MAX_N_CTX:  # offsets past --seq-len have no weight
        raise ValueError(f"--max-offset must be in 0..{MAX_N_CTX:,}, got {args.max_offset}")
    names = ["attention_example.png", "attention_mean.png", "offset_profile.png", "attention.json"]
    if not args.no_html:
        names.append("attention.html")
    check_outputs(out, names, args.force)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    tokens = run.chain.sample(args.n_seqs, n, generator=gen)
    att = analyse_attention(model, tokens.to(model.W_E.device), args.max_offset)
    patterns = att["patterns"].cpu()
    save_figure(
        plot_patterns(patterns[:, 0], tokens[0], f"attention, one sequence (step {step})"),
        out / names[0],
    )
    save_figure(
        plot_patterns(
            patterns.mean(1), None, f"attention, mean of {args.n_seqs} sequences (step {step})"
        ),
        out / names[1],
    )
    uniform = torch.tensor(att["summary"]["uniform_profile"])
    save_figure(plot_offset_profile(att["profile"], uniform=uniform), out / names[2])
    record = {
        "run_dir": str(run.path),
        "step": step,
        "n_seqs": args.n_seqs,
        "seq_len": n,
        "seed": args.seed,
        "attention": att["summary"],
        "head_scores": att["head_scores"],
    }
    write_text_atomic(out / names[3], json.dumps(finite_json(record), indent=2, allow_nan=False))
    if not args.no_html:
        write_attention_html(
            out / "attention.html",
            patterns[:, 0],
            tokens[0],
            f"{display_name(run.path.name)} step {step}",
            True,
        )
    print(f"wrote {', '.join(names)} to {out}")
    return 0
