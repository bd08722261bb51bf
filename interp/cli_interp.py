"""``markov-lens attention | patch | explain RUN_DIR``: figures, JSON and a report of a trained run.

    markov-lens attention runs/demo/untied            # heatmaps, offset profile, head scores, HTML
    markov-lens patch runs/demo/untied --corruption flip --direction both
    markov-lens explain runs/demo/untied --step 400   # report.md + PNGs: bigram or unigram?

Every command reads RUN_DIR (``training.runs.load_run``), the last checkpoint unless --step,
samples --n-seqs sequences of --seq-len tokens from the run's chain with --seed, and writes into
--out (default RUN_DIR/interp/COMMAND, or RUN_DIR/interp/COMMAND-step_XXXXXX with --step). It
refuses to replace existing outputs unless --force.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from interp.corruptions import CORRUPTIONS

# The analysis modules (matplotlib, the model and transformer_lens) are imported by the
# commands that run them. register still imports interp.patching for its choices, which
# loads the model as long as interp.patching imports training.model at its top.


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory written by markov-lens train"
    )
    p.add_argument("--out", metavar="DIR", help="output directory (default RUN_DIR/interp/COMMAND)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the last checkpoint)")
    p.add_argument("--n-seqs", type=_positive, default=64, help="sequences to analyse (64)")
    p.add_argument(
        "--seq-len", type=_positive, help="tokens per sequence (default: training length, <= 128)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled sequences (0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--force", action="store_true", help="replace existing outputs")


def register(subparsers) -> None:
    from interp.patching import ACTS, DIRECTIONS, METRICS

    a = subparsers.add_parser(
        "attention",
        help="attention heatmaps, offset profile, head scores, offline HTML view",
        description="Attention patterns of a trained run: heatmaps (one sequence and the batch "
        "mean), the mean weight per relative offset, previous-token and induction head scores "
        "against shuffled baselines, and an interactive circuitsvis page that works offline.",
    )
    _common(a)
    a.add_argument("--max-offset", type=int, default=16, help="largest offset profiled (16)")
    a.add_argument("--no-html", action="store_true", help="skip the circuitsvis HTML page")
    a.set_defaults(func=run_attention)

    p = subparsers.add_parser(
        "patch",
        help="activation patching sweeps (every layer, position and head)",
        description="Denoising / noising activation patching of a trained run for one "
        "in-distribution corruption, with normalised effects and direct-path shares.",
    )
    _common(p)
    p.add_argument("--corruption", choices=CORRUPTIONS, default="flip", help="(flip)")
    p.add_argument("--direction", choices=(*DIRECTIONS, "both"), default="both", help="(both)")
    p.add_argument("--metric", choices=METRICS, default="logit_diff", help="(logit_diff)")
    p.add_argument(
        "--acts",
        default="resid_pre,attn_out,mlp_out,z",
        help=f"comma-separated activations from {', '.join(ACTS)} (resid_pre,attn_out,mlp_out,z)",
    )
    p.set_defaults(func=run_patch)

    e = subparsers.add_parser(
        "explain",
        help="report: does the prediction depend on x_n, and through what?",
        description="Run attention, head scores, attribution, patching and ablation on a trained "
        "run and write report.md + PNGs with the mechanistic verdict (bigram / unigram).",
    )
    _common(e)
    e.add_argument("--metric", choices=METRICS, default="logit_diff", help="(logit_diff)")
    e.set_defaults(func=run_explain)


# ------------------------------------------------------------------------------- shared bits


def _device(name: str) -> torch.device:
    from training.devices import resolve_device

    try:
        return resolve_device(name)
    except ValueError as err:
        raise ValueError(f"--device: {err}") from None


def _open(args: argparse.Namespace, command: str):
    """(run, model, step, out_dir, seq_len) for the command's arguments."""
    from interp.explain import default_out_dir, resolve_seq_len
    from training.runs import load_run

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    run = load_run(args.run_dir)
    steps = run.checkpoint_steps()
    if not steps:
        raise FileNotFoundError(f"run {run.path} has no checkpoints")
    step = steps[-1] if args.step is None else args.step
    model = run.model(step, device=_device(args.device))
    out = Path(args.out) if args.out else default_out_dir(run.path, command, args.step)
    seq_len = resolve_seq_len(model, args.seq_len, run.train_config.seq_len)
    if seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {seq_len}")
    return run, model, step, out, seq_len


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------- commands


def run_attention(args: argparse.Namespace) -> int:
    from interp.attention import plot_offset_profile, plot_patterns, write_attention_html
    from interp.explain import analyse_attention, check_outputs, finite_json

    run, model, step, out, n = _open(args, "attention")
    if args.max_offset < 0:
        raise ValueError(f"--max-offset must be >= 0, got {args.max_offset}")
    names = ["attention_example.png", "attention_mean.png", "offset_profile.png", "attention.json"]
    if not args.no_html:
        names.append("attention.html")
    check_outputs(out, names, args.force)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    tokens = run.chain.sample(args.n_seqs, n, generator=gen)
    att = analyse_attention(model, tokens.to(model.W_E.device), args.max_offset)
    patterns = att["patterns"].cpu()
    _save(
        plot_patterns(patterns[:, 0], tokens[0], f"attention, one sequence (step {step})"),
        out / names[0],
    )
    _save(
        plot_patterns(
            patterns.mean(1), None, f"attention, mean of {args.n_seqs} sequences (step {step})"
        ),
        out / names[1],
    )
    _save(plot_offset_profile(att["profile"]), out / names[2])
    record = {
        "run_dir": str(run.path),
        "step": step,
        "n_seqs": args.n_seqs,
        "seq_len": n,
        "seed": args.seed,
        "attention": att["summary"],
        "head_scores": att["head_scores"],
    }
    (out / names[3]).write_text(json.dumps(finite_json(record), indent=2, allow_nan=False))
    if not args.no_html:
        write_attention_html(
            out / "attention.html", patterns[:, 0], tokens[0], f"{run.path.name} step {step}", True
        )
    print(f"wrote {', '.join(names)} to {out}")
    return 0


def run_patch(args: argparse.Namespace) -> int:
    from interp.corruptions import make_patching_data
    from interp.explain import check_outputs, finite_json
    from interp.patching import ACTS, DIRECTIONS, direct_path_effects, run_patching
    from interp.patching_plots import plot_patching_result

    run, model, step, out, n = _open(args, "patch")
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
        results = {}
        for d in directions:
            stage(f"{d}: {', '.join(acts)}")
            results[d] = run_patching(model, data, acts, d, args.metric)
        stage("direct paths")
        direct = direct_path_effects(model, data, args.metric)
    out.mkdir(parents=True, exist_ok=True)
    for d, res in results.items():
        title = f"{args.corruption}, {d}: normalised {args.metric} (step {step})"
        _save(plot_patching_result(res, title), out / f"patch_{args.corruption}_{d}.png")
    record = {
        "run_dir": str(run.path),
        "step": step,
        "n_seqs": args.n_seqs,
        "seq_len": n,
        "seed": args.seed,
        "results": {d: r.to_dict() for d, r in results.items()},
        "direct_paths": direct,
    }
    (out / "patching.json").write_text(json.dumps(finite_json(record), indent=2, allow_nan=False))
    res = next(iter(results.values()))
    print(
        f"{args.corruption}: model effect {res.effect:.4f} (perfect predictor {res.true_effect:.4f}); "
        f"wrote {', '.join(names)} to {out}"
    )
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from interp.explain import ExplainConfig, explain_run

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    config = ExplainConfig(
        n_seqs=args.n_seqs, seq_len=args.seq_len, seed=args.seed, metric=args.metric
    )
    report, expl = explain_run(
        args.run_dir, args.out, args.step, config, args.force, _device(args.device)
    )
    s = expl.summary
    ratio = "n/a" if s["flip_ratio"] is None else f"{s['flip_ratio']:.2f}"
    print(f"verdict: {s['verdict']} (flip ratio {ratio}, carrier {s['carrier']}); wrote {report}")
    return 0
