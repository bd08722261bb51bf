"""markov-lens bench: measure every speed claim of the package here, as ratios.

markov-lens bench --quick                 # a few minutes on a 2-core CPU
markov-lens bench                         # the paper's settings (long on a CPU)
markov-lens bench --only step,window,startup
markov-lens bench --only ensemble,scaling --members 64 --json bench.json

Sections: step (the paper's training step with the fused kernel vs SDPA vs explicit
attention, and its attention FLOP bound at this machine's measured matmul rate), window
(step time for attention windows 2, 8, 32 and full at several lengths), ensemble (a stack of
runs vs the same runs one by one, and which path the sweeps take), sampler, patching,
reproductions (the tying and depth sweeps), scaling (step-time tables), startup
(markov-lens commands vs `import torch`, fresh processes).

Each comparison prints one line ``NAME: A vs B: R.Rx`` (R = B's time / A's time), measured
in this process (the benchmarks package: benchmarks.suite.run_benchmarks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.settings import SECTIONS
from markov_lens.cli import add_command
from markov_lens.cli.validation import (
    add_allow_large,
    check_device,
    check_output_path,
    check_threads,
)

MAX_MEMBERS = 1024  # ensemble members of one benchmark (the sweeps stack 32 to 256)

# benchmarks.suite (torch, the model, the trainer) is imported by run.


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="reduced settings (each reduced line says so): a few minutes on a 2-core CPU",
    )
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # seconds, for tests
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda[:N]")
    p.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast (CUDA)"
    )
    p.add_argument("--members", type=int, default=None, help="ensemble size (default 32)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on a CPU: on a shared machine multi-threaded "
        "timings of small ops are erratic; the device's default on CUDA)",
    )
    p.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of: {', '.join(SECTIONS)} (default: all)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    add_allow_large(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from benchmarks.suite import patching_comparisons, run_benchmarks
    from training.limits import check_cap
    from training.runs import write_text_atomic

    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    if not sections:
        raise ValueError(f"--only names no section; sections: {', '.join(SECTIONS)}")
    for s in sections:
        if s not in SECTIONS:
            raise ValueError(f"--only: unknown section {s!r}; sections: {', '.join(SECTIONS)}")
    if args.json is not None and args.json.exists():
        raise FileExistsError(f"{args.json} exists; choose another --json path")
    check_threads(args.threads)
    check_device(args.device)
    if args.json is not None:
        check_output_path(args.json, "--json", file=True)
    if args.members is not None:  # the ensemble section stacks --members copies of its model
        check_cap("--members", args.members, MAX_MEMBERS)
    on_cuda = args.device.startswith("cuda") or (
        args.device == "auto" and torch.cuda.is_available()
    )
    threads = args.threads or (None if on_cuda else 1)
    if threads is not None:
        torch.set_num_threads(threads)
    result = run_benchmarks(
        mode,
        device=args.device,
        members=args.members,
        precision=args.precision,
        sections=sections,
        patching=patching_comparisons,
        emit=lambda line: print(line, flush=True),
    )
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(result, indent=2, default=str) + "\n")
    return 0
