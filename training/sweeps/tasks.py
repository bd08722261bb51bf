"""One run of a sweep: ``run_task`` trains it (resuming it if it was interrupted; a finished
run is only read) and ``result_row`` makes its row of the sweep's results.csv (options,
seed, the summary's SUMMARY_COLUMNS, run directory). Backends call run_task (or the run
function they are given) on each pending task; a failed run is a row, never an exception.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

from training.options import build_run_config
from training.runs import SUMMARY, read_json
from training.sweeps.spec import RunTask

SUMMARY_COLUMNS = (
    "status",
    "verdict",
    "order_label",
    "final_eval_loss",
    "entropy_rate",
    "unigram_loss",
    "final_kl",
    "final_rel_excess",
    "final_dependence",
    "p_hat",
    "q_hat",
    "plateau_exit_step",
    "plateau_steps",
    "plateau_first_step",
    "steps",
    "wall_seconds",
    "error",
)


def result_row(
    task: RunTask | dict, summary: dict | None, error: str | None = None
) -> dict[str, Any]:
    """A task's row of results.csv: cell, seed, its options, SUMMARY_COLUMNS from `summary`
    (None: all empty) and run_dir; with `error`, status "failed" and that error."""
    task = task if isinstance(task, dict) else task.to_dict()
    row: dict[str, Any] = {"cell": task["cell"], "seed": task["seed"]}
    for section in ("chain", "model", "train"):
        for key, value in task["options"][section].items():
            if section == "chain" and key == "family":
                row["chain"] = json.dumps(task["options"]["chain"], sort_keys=True)
                break
            row[key] = value
    summary = summary or {}
    order_losses = (summary.get("references") or {}).get("order_losses")
    if "order_label" not in summary and order_losses and summary.get("final_kl") is not None:
        from training.verdicts import order_reached  # a run summarised before order labels

        summary = summary | order_reached(summary["final_kl"], order_losses)
    for key in SUMMARY_COLUMNS:
        row[key] = summary.get(key)
    if error is not None:
        row["status"], row["error"] = "failed", error
    row["run_dir"] = task["run_dir"]
    return row


def run_task(task: RunTask | dict) -> dict[str, Any]:
    """Train one task (resuming an interrupted one; a finished one is only read) and return
    its result row. Never raises: a failure becomes a row with status "failed"."""
    from training import trainer  # trainer.train is looked up here, at call time

    t = task if isinstance(task, dict) else task.to_dict()
    run_dir = Path(t["run_dir"])
    try:
        if (run_dir / SUMMARY).exists():
            return result_row(t, read_json(run_dir / SUMMARY))
        rc = build_run_config(t["options"] | {"seed": t["seed"]})
        try:
            summary = trainer.train(
                rc.model,
                rc.chain,
                rc.train,
                seed=rc.seed,
                out_dir=run_dir,
                resume=True,
                progress=False,
            )
        except trainer.TrainingDiverged:
            summary = read_json(run_dir / SUMMARY)
        return result_row(t, dict(summary))
    except Exception as err:  # noqa: BLE001 - a sweep reports failures, it does not stop
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        return result_row(t, None, error=detail)
