"""Re-evaluate, from their final checkpoints, the phase-diagram runs labelled unigram or
neither with the current verdict rule (training.verdicts), on the same held-out batches.

    .venv/bin/python docs/results/paper/recheck_labels.py
"""

from __future__ import annotations

import contextlib
import csv

import torch

from training.runs import load_run
from training.trainer import EvalSet, evaluate, run_references
from training.verdicts import VerdictRule, summarise_metrics


def main() -> None:
    torch.set_num_threads(1)
    results = "runs/paper/phase-diagram/sweep/results.csv"
    rows = [r for r in csv.DictReader(open(results)) if r["verdict"] in ("unigram", "neither")]
    for r in rows:
        run = load_run(r["run_dir"])
        eval_set = EvalSet(run.chain, run.train_config, run.seed, torch.device("cpu"))
        refs = run_references(run.chain, run.train_config)
        model = run.model(device="cpu")
        rec = {"step": run.train_config.iters}
        rec |= evaluate(model, eval_set, refs, contextlib.nullcontext)
        gap = refs["unigram_loss"] - refs["optimal_loss"]
        now = summarise_metrics([rec], gap, VerdictRule(), refs.get("order_losses"))
        print(
            f"p={r['p']} q={r['q']} tie={r['tie']} seed {r['seed']}: saved {r['verdict']}, "
            f"now {now['verdict']} (c={rec['context_dependence']:.4f}, "
            f"d={rec['dependence']:.3f}, u={rec['rel_unigram']:.3f})"
        )


if __name__ == "__main__":
    main()
