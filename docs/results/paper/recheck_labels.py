"""Re-evaluate, from their final checkpoints, the phase-diagram runs labelled unigram or
neither with the current verdict rule (training.verdicts), on the same held-out batches.

    .venv/bin/python docs/results/paper/recheck_labels.py
"""

import csv, contextlib, torch

torch.set_num_threads(1)
from training.runs import load_run
from training.trainer import EvalSet, evaluate, run_references
from training.verdicts import summarise_metrics, VerdictRule

rows = [
    r
    for r in csv.DictReader(open("runs/paper/phase-diagram/sweep/results.csv"))
    if r["verdict"] in ("unigram", "neither")
]
for r in rows:
    run = load_run(r["run_dir"])
    es = EvalSet(run.chain, run.train_config, run.seed, torch.device("cpu"))
    refs = run_references(run.chain, run.train_config)
    rec = {"step": run.train_config.iters} | evaluate(
        run.model(device="cpu"), es, refs, contextlib.nullcontext
    )
    gap = refs["unigram_loss"] - refs["optimal_loss"]
    j = summarise_metrics([rec], gap, VerdictRule(), refs.get("order_losses"))
    print(
        r["p"],
        r["q"],
        r["tie"],
        r["seed"],
        "saved",
        r["verdict"],
        "-> now",
        j["verdict"],
        "c=%.4f d=%.3f u=%.3f" % (rec["context_dependence"], rec["dependence"], rec["rel_unigram"]),
    )
