"""How a run ends: its result (TrainResult: the summary dict with the model and metrics),
the summary of a finished run (finished_summary, with the verdict) and of a diverged one
(stop_diverged, which raises TrainingDiverged). TIMING_KEYS names the fields of metrics and
summaries that measure time, so differ between two identical runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from training import fused_attention, machine
from training.checkpoints import CheckpointError, read_checkpoint
from training.model import MarkovTransformer
from training.runs import CHECKPOINTS, LATEST, SUMMARY, step_dir_name, write_json_atomic
from training.trainer.rundir import find_resume_checkpoint
from training.verdicts import VerdictRule, summarise_metrics

TIMING_KEYS = ("wall_seconds", "tokens_per_s")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class TrainResult(dict):
    """The summary dict of a run, with the trained model (`.model`, eval mode), the metric
    records (`.metrics`) and the run directory (`.path`, None when trained in memory)."""

    def __init__(
        self,
        summary: dict[str, Any],
        model: MarkovTransformer,
        metrics: list[dict[str, Any]],
        path: Path | None,
    ):
        super().__init__(summary)
        self.model = model
        self.metrics = metrics
        self.path = path

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self)


def stop_diverged(
    run_dir, step, loss_value, lr, metrics, refs, seed, wall_seconds, arithmetic=None
) -> None:
    """Stop a run whose training loss at `step` (the weights after `step` updates) is not
    finite: drop the checkpoint of those weights if one was saved, write a "diverged"
    summary naming the last good checkpoint (and `arithmetic`, the run's
    Arithmetic.record()), raise TrainingDiverged."""
    kept = None
    if run_dir is not None:
        root = run_dir / CHECKPOINTS
        shutil.rmtree(root / step_dir_name(step), ignore_errors=True)
        for name in (LATEST, f".{LATEST}.old"):
            try:
                if read_checkpoint(root / name).step >= step:
                    shutil.rmtree(root / name, ignore_errors=True)
            except CheckpointError:
                pass
        ckpt = find_resume_checkpoint(run_dir)
        kept = str(ckpt.path) if ckpt is not None else None
    message = (
        f"the training loss became {loss_value} at step {step} (the weights after {step} "
        f"updates, lr {lr:.3g}); stopped. "
        + (f"The last good checkpoint is {kept}. " if kept else "")
        + "Lower the learning rate (--lr) or enable gradient clipping (grad_clip)."
    )
    if run_dir is not None:
        last = metrics[-1] if metrics else {}
        write_json_atomic(
            run_dir / SUMMARY,
            {
                "status": "diverged",
                "message": message,
                "verdict": "neither",
                "diverged_step": step,
                "last_good_checkpoint": kept,
                "final_eval_loss": last.get("eval_loss"),
                "entropy_rate": refs["optimal_loss"],
                "unigram_loss": refs["unigram_loss"],
                "steps": step,
                "seed": seed,
                "wall_seconds": wall_seconds,
                "plateau_exit_step": None,
                "plateau_steps": None,
            }
            | ({"arithmetic": arithmetic} if arithmetic is not None else {}),
        )
    raise TrainingDiverged(message)


def trained_on(device: torch.device | str) -> dict[str, Any]:
    """The machine a run was trained on, as bit-identical results depend on it
    (training.machine.fingerprint: CPU, flags hash, torch; on a CPU the attention kernel
    build with its source hash, on CUDA the GPU's name)."""
    device = torch.device(device)
    if device.type == "cpu":
        return fused_attention.fingerprint()
    return machine.fingerprint(None) | {"gpu": torch.cuda.get_device_name(device)}


def finished_summary(
    metrics, refs, gap, chain, train_config, seed, wall_seconds, device, model
) -> dict:
    """The summary.json of a finished run: final metrics, the verdict (training.verdicts)
    and the plateau of `metrics`, its references, timing and setup. In-context runs also get
    final_excess: the final eval loss minus each of the four in-context references (nats).
    ``machine`` names what it was trained on (trained_on)."""
    last = metrics[-1]
    eval_targets = train_config.eval_batches * train_config.batch * (train_config.seq_len - 1)
    judged = summarise_metrics(
        metrics, gap, VerdictRule(), refs.get("order_losses"), eval_targets=eval_targets
    )
    out = {
        "status": "finished",
        "verdict": judged["verdict"],
        "final_eval_loss": last["eval_loss"],
        "entropy_rate": refs["optimal_loss"],
        "unigram_loss": refs["unigram_loss"],
        "gap": gap,
        "final_kl": last["kl"],
        "final_rel_excess": last["rel_excess"],
        "final_rel_unigram": last["rel_unigram"],
        "final_dependence": last["dependence"],
        "final_context_dependence": last.get("context_dependence"),
        "final_accuracy": last["accuracy"],
        "plateau_exit_step": judged["plateau_exit_step"],
        "plateau_steps": judged["plateau_steps"],
        "plateau_first_step": judged["plateau_first_step"],
        **{
            k: judged[k]
            for k in ("verdict_reason", "order_label", "order_reached", "order_excess")
            if k in judged
        },
        "steps": train_config.iters,
        "seed": seed,
        "wall_seconds": wall_seconds,
        "tokens_per_s": train_config.iters * train_config.tokens_per_step / wall_seconds
        if wall_seconds > 0
        else None,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "machine": trained_on(device),
        "n_params": sum(p.numel() for p in model.parameters()),
        "chain": chain.to_dict(),
        "references": refs,
        "verdict_rule": VerdictRule().to_dict(),
    }
    for key in ("p_hat", "q_hat", "kernel_hat"):
        if key in last:
            out[key] = last[key]
    if "p" in refs:
        out["p"], out["q"], out["pi_1"] = refs["p"], refs["q"], refs["pi_1"]
    if "in_context_references" in refs:  # final loss minus each in-context reference, nats
        out["final_excess"] = {
            name: last["eval_loss"] - loss for name, loss in refs["in_context_references"].items()
        }
    return out
