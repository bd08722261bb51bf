"""``markov-lens train``: train one transformer on a Markov chain, writing a run directory.

markov-lens train --p 0.5 --q 0.8 --layers 1 --d-model 8 --tie --iters 400 --out runs/a
markov-lens train --config runs/a/config.json --seed 1 --out runs/b     # same run, seed 1
markov-lens train --resume --out runs/a                                 # continue it
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from markov_lens.cli import add_command
from markov_lens.cli.validation import add_allow_large, check_output_path, check_threads, nonempty
from training.options import build_run_config
from training.runs import CONFIG, read_json
from training.sweeps import load_spec, markdown_table

# argparse dest -> (section, option key)
CHAIN_FLAGS = {
    "p": "p",
    "q": "q",
    "order": "order",
    "states": "states",
    "in_context": "in_context",
    "alpha": "alpha",
    "doubly_stochastic": "doubly_stochastic",
    "group_size": "group_size",
    "chain_init": "chain_init",
}
MODEL_FLAGS = {
    "layers": "layers",
    "heads": "heads",
    "d_model": "d_model",
    "d_head": "d_head",
    "d_mlp": "d_mlp",
    "tie": "tie",
    "mlp": "mlp",
    "ln": "ln",
    "window": "window",
    "init": "init",
    "init_range": "init_range",
    "act_fn": "act_fn",
    "embedding": "embedding",
}
TRAIN_FLAGS = {
    "iters": "iters",
    "seq_len": "seq_len",
    "batch": "batch",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "schedule": "schedule",
    "grad_clip": "grad_clip",
    "eval_every": "eval_every",
    "eval_batches": "eval_batches",
    "eval_seed": "eval_seed",
    "save_every": "save_every",
    "checkpoints_per_octave": "checkpoints_per_octave",
    "precision": "precision",
    "grad_scaler": "grad_scaler",
    "tf32": "tf32",
    "targets": "targets",
    "device": "device",
}
UNSET = object()  # --window's default: "none" (full causal) is a value, not "not given"


def _window(text: str):
    if text.lower() in ("none", "causal", "full"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"window must be an int >= 0 or 'none', got {text!r}"
        ) from None
    return None if value < 0 else value


def _group_size(text: str):
    if text.lower() in ("batch", "minibatch"):
        return "batch"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"group size must be an int >= 1 (sequences per kernel) or 'batch' (one kernel per "
            f"minibatch), got {text!r}"
        )
    return value


def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(check_threads(n))


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "train",
        description="Train a transformer on a Markov chain with the paper's recipe (AdamW 2e-3, "
        "OneCycle, batch 16 x 1024, 400 steps; every value can be changed) and write RUN_DIR: "
        "config.json, metrics.jsonl, checkpoints/, summary.json (with the verdict bigram / "
        "unigram / neither).",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML/JSON run config (sections chain, model, "
        "train, seed; a run's config.json works); flags override it",
    )
    p.add_argument(
        "--out", required=True, type=nonempty, metavar="RUN_DIR", help="run directory to write"
    )
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument(
        "--resume", action="store_true", help="continue RUN_DIR from its last checkpoint"
    )
    p.add_argument("--force", action="store_true", help="overwrite a finished/unfinished RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--stop-at", type=int, metavar="STEP", help="pause after STEP (resumable)")
    p.add_argument("--json", action="store_true", help="print summary.json instead of a table")
    c = p.add_argument_group("chain")
    c.add_argument("--p", type=float, help="P(1|0) of a binary chain (move prob. with --states)")
    c.add_argument("--q", type=float, help="P(0|1) of a binary chain")
    c.add_argument("--order", type=int, metavar="K", help="order; with --p/--q the lag-K chain")
    c.add_argument("--states", type=int, metavar="S", help="number of states")
    c.add_argument(
        "--in-context",
        action="store_true",
        default=None,
        help="in-context chain: a fresh Dirichlet kernel per sequence (or per --group-size)",
    )
    c.add_argument("--alpha", type=float, help="Dirichlet concentration (in-context)")
    c.add_argument(
        "--doubly-stochastic",
        action="store_true",
        default=None,
        help="in-context: doubly stochastic kernels (uniform marginal)",
    )
    c.add_argument(
        "--group-size",
        type=_group_size,
        metavar="G",
        help="in-context: G consecutive sequences of a minibatch share one kernel (default 1; "
        "'batch': one kernel per minibatch, the authors' --chain random)",
    )
    c.add_argument(
        "--chain-init", choices=("stationary", "uniform"), help="law of the first tokens"
    )
    m = p.add_argument_group("model")
    m.add_argument("--layers", type=int)
    m.add_argument("--heads", type=int)
    m.add_argument("--d-model", type=int)
    m.add_argument("--d-head", type=int)
    m.add_argument("--d-mlp", type=int)
    m.add_argument(
        "--tie",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tie W_U = W_E^T (default: tied, as the paper)",
    )
    m.add_argument(
        "--no-mlp", dest="mlp", action="store_false", default=None, help="attention only"
    )
    m.add_argument("--no-ln", dest="ln", action="store_false", default=None, help="no LayerNorm")
    m.add_argument(
        "--embedding",
        choices=("table", "linear"),
        help="token embedding: a table (default) or linear x * e (binary; the Local-to-Global "
        "simplified model, with --no-ln)",
    )
    m.add_argument(
        "--window",
        type=_window,
        metavar="M",
        default=UNSET,
        help="attend to the last M+1 positions (the paper's --memory); 'none' or a negative "
        "M (the paper's M < 0) = full causal attention",
    )
    m.add_argument("--init", choices=("paper", "theta_pi", "good"), help="initialisation")
    m.add_argument("--init-range", type=float, help="std of the paper init (0.02)")
    m.add_argument("--act-fn", choices=("gelu", "relu"))
    t = p.add_argument_group("training (defaults: the paper's recipe)")
    t.add_argument("--iters", type=int, help="updates (400)")
    t.add_argument("--seq-len", type=int, help="sequence length (1024)")
    t.add_argument("--batch", type=int, help="batch size (16)")
    t.add_argument("--lr", type=float, help="peak learning rate (2e-3)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay on linear weights (1e-3)")
    t.add_argument("--schedule", choices=("onecycle", "constant"))
    t.add_argument("--grad-clip", type=float, help="max gradient norm (none)")
    t.add_argument("--eval-every", type=int, help="updates between evaluations (10)")
    t.add_argument("--eval-batches", type=int, help="held-out batches per evaluation (2)")
    t.add_argument(
        "--eval-seed",
        type=int,
        help="seed of the held-out batches (default: the run's seed; give every run of a "
        "comparison the same one to evaluate them on the same tokens)",
    )
    t.add_argument(
        "--save-every", type=int, help="updates between resume checkpoints (50; 0: none)"
    )
    t.add_argument(
        "--checkpoints-per-octave",
        type=int,
        help="log-spaced checkpoints per doubling of the step (1: steps 0, 1, 2, 4, ...; 0: only the last)",
    )
    t.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="fp32 (default), or bf16/fp16 autocast on CUDA or the CPU (the paper's GPU runs: "
        "fp16 without a grad scaler, with TF32)",
    )
    t.add_argument(
        "--grad-scaler",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dynamic loss scaling (torch.amp.GradScaler) with bf16/fp16 (default: off)",
    )
    t.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TF32 matmuls on CUDA (default: off; an error on the CPU)",
    )
    t.add_argument(
        "--targets",
        choices=("inside", "authors"),
        help="inside: seq_len tokens, seq_len - 1 targets (default); authors: seq_len + 1 "
        "tokens sampled, seq_len targets (the paper's code: 1025 and 1024)",
    )
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    add_allow_large(p)
    p.set_defaults(func=run_train)


def _load_config_file(path: str) -> dict:
    doc = load_spec(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a run config must be a mapping with chain/model/train/seed")
    return doc


def train_document(args: argparse.Namespace) -> dict:
    """The run config document: --config FILE (if any) overlaid with the given flags."""
    from training.options import MODEL_ALIASES  # option name -> ModelConfig field

    doc = _load_config_file(args.config) if args.config else {}
    if args.resume and not args.config and (Path(args.out) / CONFIG).exists():
        doc = read_json(Path(args.out) / CONFIG)  # `--resume --out DIR`: the run's own config
    elif (
        args.resume
        and not args.config
        and not any(getattr(args, dest) is not None for dest in CHAIN_FLAGS)
    ):  # nothing to resume and no chain named: say what is wrong with DIR
        out = Path(args.out)
        if not out.exists():
            raise FileNotFoundError(f"--resume: {out} does not exist, so there is no run to resume")
        if not out.is_dir():
            raise ValueError(f"--resume: {out} is a file, not a run directory")
        raise FileNotFoundError(f"--resume: {out} holds no run ({CONFIG} is missing)")
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    chain_flags = {
        key: getattr(args, dest)
        for dest, key in CHAIN_FLAGS.items()
        if getattr(args, dest) is not None
    }
    if chain_flags:
        chain = doc.get("chain") or {}
        doc["chain"] = chain_flags if "family" in chain else chain | chain_flags
    model = doc.get("model") or {}
    for dest, key in MODEL_FLAGS.items():
        value = getattr(args, dest)
        if value is UNSET or (value is None and dest != "window"):
            continue
        model.pop(MODEL_ALIASES.get(key, key), None)
        model[key] = value
    if model:
        doc["model"] = model
    train = doc.get("train") or {}
    for dest, key in TRAIN_FLAGS.items():
        if getattr(args, dest) is not None:
            train[key] = getattr(args, dest)
    if train:
        doc["train"] = train
    if args.seed is not None:
        doc["seed"] = args.seed
    return doc


def _print_summary(summary: dict, run_dir: str) -> None:
    keys = (
        "verdict",
        "final_eval_loss",
        "entropy_rate",
        "unigram_loss",
        "final_rel_excess",
        "final_dependence",
        "p_hat",
        "q_hat",
        "plateau_exit_step",
        "plateau_steps",
        "steps",
        "seed",
        "wall_seconds",
    )
    rows = [{"field": k, "value": summary.get(k)} for k in keys if k in summary]
    rows += [  # in-context runs: the final loss against the four references
        {"field": f"final_eval_loss - {name}", "value": value}
        for name, value in (summary.get("final_excess") or {}).items()
    ]
    print(markdown_table(rows), end="")
    print(f"run directory: {run_dir}")


def run_train(args: argparse.Namespace) -> int:
    from training.trainer import TrainingDiverged, train

    if args.resume and args.force:
        raise ValueError(
            "--resume continues RUN_DIR and --force replaces it: give one of them, not both"
        )
    check_output_path(args.out)
    _set_threads(args.threads)
    rc = build_run_config(train_document(args))
    try:
        result = train(
            rc.model,
            rc.chain,
            rc.train,
            seed=rc.seed,
            out_dir=args.out,
            resume=args.resume,
            force=args.force,
            progress=not args.no_progress,
            stop_at=args.stop_at,
        )
    except TrainingDiverged as err:
        print(f"markov-lens train: diverged: {err}", file=sys.stderr)
        return 1
    summary = dict(result)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif summary.get("status") == "paused":
        print(
            f"paused at step {summary['steps']}; continue with: markov-lens train --resume "
            f"--out {args.out}"
        )
    else:
        _print_summary(summary, args.out)
    return 0
