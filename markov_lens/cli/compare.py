"""``markov-lens compare``: two runs or checkpoints side by side, or one run's timeline.

    markov-lens compare RUN_OR_CKPT RUN_OR_CKPT [--out DIR] [--force]   # two models
    markov-lens compare RUN_DIR [--out DIR] [--force]                   # one run's timeline

Writes figures (PNG), summary.md and comparison.json (two models; default
DIR: ./compare-A-vs-B), or timeline.png, timeline.md and timeline.json (one run; default
DIR: RUN_DIR/timeline). Existing outputs are never replaced without --force.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from markov_lens.cli import add_command
from markov_lens.cli.options import optional_device
from training.limits import check_tokens


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "compare",
        description="With two RUN_OR_CKPT: both models on the same held-out inputs (loss, "
        "verdict, transition probabilities, attention, head scores, probes, patching), "
        "per-parameter distances (equal shapes only) and linear CKA per hook point. A run "
        "directory means its last checkpoint plus its metrics; a checkpoint directory means "
        "that checkpoint. With one RUN_DIR: loss gap, verdict, head and probe scores at every "
        "checkpoint.",
    )
    p.add_argument(
        "sources", nargs="+", metavar="RUN_OR_CKPT", help="one run dir, or two runs/checkpoints"
    )
    p.add_argument("--out", metavar="DIR", help="output directory (see above for the default)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared inputs (0)")
    p.add_argument("--n-seqs", type=int, help="shared input sequences (32; timeline 16)")
    p.add_argument("--seq-len", type=int, help="tokens per input sequence (min(128, n_ctx))")
    p.add_argument(
        "--input-chain",
        choices=("a", "b"),
        default="a",
        help="draw the shared inputs from A's or B's chain (a)",
    )
    p.add_argument(
        "--steps",
        default="all",
        metavar="all|last|STEP,...",
        help="timeline: which checkpoints (all)",
    )
    p.add_argument("--no-probes", action="store_true", help="skip the probe tables")
    p.add_argument("--no-patching", action="store_true", help="skip activation patching")
    p.add_argument("--no-cka", action="store_true", help="timeline: skip CKA and distances")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.set_defaults(func=run_compare)


def _slug(path: Path) -> str:
    parts = [p for p in path.resolve().parts[-3:] if p not in ("checkpoints",)]
    name = parts[-1] if not parts[-1].startswith("step_") else "_".join(parts[-2:])
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run_compare(args: argparse.Namespace) -> int:
    from interp.compare import ComparisonConfig, compare
    from interp.timeline import TimelineConfig, timeline

    sources = [Path(s) for s in args.sources]
    if len(sources) > 2:
        raise ValueError(
            f"compare takes one run directory (timeline) or two runs/checkpoints, got {len(sources)}"
        )
    for s in sources:
        if not s.exists():
            raise FileNotFoundError(f"{s} does not exist")
    check_tokens(("--n-seqs", "--seq-len"), args.n_seqs or 32, args.seq_len or 128)
    if len(sources) == 1:
        out = Path(args.out) if args.out else sources[0] / "timeline"
        config = TimelineConfig(
            steps=args.steps,
            n_seqs=16 if args.n_seqs is None else args.n_seqs,
            seq_len=args.seq_len,
            seed=args.seed,
            probes=not args.no_probes,
            cka=not args.no_cka,
        )
        _refuse_existing(out, ("timeline.png", "timeline.md", "timeline.json"), args.force)
        tl = timeline(sources[0], config, device=optional_device(args.device), progress=True)
        files = tl.save(out, force=args.force)
        exit_step = tl.plateau_exit_step
        print(
            f"{tl.label}: {len(tl.rows)} checkpoints, plateau exit at step {exit_step}, "
            f"first bigram checkpoint {tl.first_step_with_verdict('bigram')}"
        )
    else:
        out = (
            Path(args.out)
            if args.out
            else Path(f"compare-{_slug(sources[0])}-vs-{_slug(sources[1])}")
        )
        config = ComparisonConfig(
            n_seqs=32 if args.n_seqs is None else args.n_seqs,
            seq_len=args.seq_len,
            seed=args.seed,
            input_chain=args.input_chain,
            probes=not args.no_probes,
            patching=not args.no_patching,
        )
        _refuse_existing(out, ("summary.md", "comparison.json"), args.force)
        cmp = compare(
            sources[0], sources[1], config, device=optional_device(args.device), progress=True
        )
        files = cmp.save(out, force=args.force)
        la, lb = cmp.labels
        print(
            f"{la}: {cmp.behaviour[la]['verdict']}, loss {cmp.behaviour[la]['eval_loss']:.4f}; "
            f"{lb}: {cmp.behaviour[lb]['verdict']}, loss {cmp.behaviour[lb]['eval_loss']:.4f}"
        )
        for note in cmp.notes:
            print(f"note: {note}")
    print(f"wrote {len(files)} files to {out}")
    return 0


def _refuse_existing(out: Path, names, force: bool) -> None:
    """Fail before any work when the main outputs exist (the writer checks every file again)."""
    clash = [n for n in names if (out / n).exists()]
    if clash and not force:
        raise FileExistsError(
            f"{out} already holds {', '.join(clash)}; pass --force to replace them or choose "
            "another --out"
        )
