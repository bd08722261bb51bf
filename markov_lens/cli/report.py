"""``markov-lens report``: one self-contained HTML page about a run.

    markov-lens report RUN_DIR [--out FILE.html] [--force]

Writes one self-contained HTML page (default RUN_DIR/report.html); an existing one is never
replaced without --force.
"""

from __future__ import annotations

import argparse

from markov_lens.cli import add_command
from markov_lens.cli.options import optional_device


def register(subparsers) -> None:
    r = add_command(
        subparsers,
        "report",
        description="Config, curves, verdict, attention, head scores, patching, probes and "
        "landscape summary of a run, with every figure embedded (base64 PNG): the page needs "
        "no network and no other file.",
    )
    r.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    r.add_argument("--out", metavar="FILE.html", help="output file (RUN_DIR/report.html)")
    r.add_argument("--force", action="store_true", help="replace an existing report")
    r.add_argument("--seed", type=int, default=0, help="seed of the analysis inputs (0)")
    r.add_argument("--no-probes", action="store_true", help="skip the probe table")
    r.add_argument("--no-patching", action="store_true", help="skip activation patching")
    r.add_argument("--no-landscape", action="store_true", help="skip the landscape summary")
    r.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    r.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from interp.report import ReportConfig, write_report

    config = ReportConfig(
        seed=args.seed,
        probes=not args.no_probes,
        patching=not args.no_patching,
        landscape=not args.no_landscape,
    )
    path = write_report(
        args.run_dir,
        args.out,
        config=config,
        force=args.force,
        device=optional_device(args.device),
        progress=True,
    )
    print(f"wrote {path}")
    return 0
