"""Copy the paper reproductions' summaries and figures from runs/paper/ (not committed) into
docs/results/paper/NAME/, with RUN.md: the exact command, seeds, wall time and load (from
runs/paper/run_all.log, written by run_all.sh), the machine and the torch version.

    .venv/bin/python docs/results/paper/collect.py
"""

from __future__ import annotations

import platform
import re
import shutil
from pathlib import Path

import torch

from training.experiments.presets import EVAL_SEED
from training.machine import cpu_model

ROOT = Path(__file__).resolve().parents[3]
RUNS = ROOT / "runs" / "paper"
DOCS = Path(__file__).resolve().parent
# step name in run_all.log -> (folder here, output folder under runs/paper, files to copy)
STEPS = {
    "tying": ("tying", "tying", ["summary.md", "summary.csv", "*.png"]),
    "tying_4x": ("tying_4x", "tying_4x", ["aggregate.md", "aggregate.csv", "results.csv"]),
    "depth": ("depth", "depth", ["summary.md", "summary.csv", "*.png"]),
    "phase": ("phase-diagram", "phase-diagram", ["summary.md", "summary.csv", "*.png"]),
    "second_order": ("second-order", "second-order", ["summary.md", "summary.csv", "*.png"]),
}


def main() -> None:
    log = (RUNS / "run_all.log").read_text().splitlines()
    for step, (folder, src, patterns) in STEPS.items():
        start = next((ln for ln in log if ln.startswith(f"== {step}: ") and "(start" in ln), None)
        end = next((ln for ln in log if ln.startswith(f"== {step}: exit")), None)
        if start is None or end is None or not (RUNS / src).exists():
            print(f"{step}: not finished, skipped")
            continue
        out = DOCS / folder
        out.mkdir(exist_ok=True)
        for pattern in patterns:
            for f in (RUNS / src).glob(pattern):
                shutil.copy2(f, out / f.name)
        command = re.sub(r"^== \w+: (.*) \(start .*$", r"\1", start)
        when = re.search(r"\(start ([^,]+), load ([^)]+)\)", start)
        took = re.search(r"exit (\d+), (\d+) s wall \(load ([^)]+)\)", end)
        (out / "RUN.md").write_text(
            f"# How {folder} was measured\n\n"
            f"- command: `{command}` (from the repository root; `docs/results/paper/run_all.sh`"
            " runs all of them, resumably)\n"
            f"- started {when.group(1)} UTC on 2026-12-03, load average {when.group(2)}; "
            f"exit {took.group(1)} after {took.group(2)} s wall, load average {took.group(3)} "
            "(two worker processes of one torch thread each; other work shared the machine "
            "at times, so wall times are upper bounds)\n"
            f"- machine: 2-core {cpu_model()}, {platform.system()} {platform.machine()}, "
            f"torch {torch.__version__}, CPU only (no GPU was lent)\n"
            f"- evaluation: every run of every cell on the same held-out batches (eval_seed "
            f"{EVAL_SEED}, training.experiments.presets.EVAL_SEED), so seeds and cells compare "
            "pair-wise and the true predictor's loss is one number per chain\n"
            "- seeds: 0..n-1 per cell (see the command); checkpoints and run directories are "
            "not committed: re-running the command rebuilds them exactly\n"
        )
        print(f"{step}: {out}")


if __name__ == "__main__":
    main()
