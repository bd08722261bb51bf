"""Escaping the unigram basin: how often training leaves it under each initialisation, and
how the run's arithmetic changes the escape.

``init_escape_study`` trains one run per (init, seed) in memory and counts the trainer's
verdicts per init. ``precision_escape`` trains one seed (one init, one batch stream) in each
precision (fp32, fp16 autocast, ...) and follows the plateau escape: the training gradient's
norm at every kept checkpoint, the eval loss, the plateau exit step, and the step each
low-precision curve leaves the fp32 one (issue #26: fp16 without a scaler traps seeds that
escape in fp32). The trainer is imported when a study runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.chains import MarkovChain
from training.config import ModelConfig

if TYPE_CHECKING:  # the model module (and TransformerLens) loads only when a study runs
    from training.model import MarkovTransformer


def init_escape_study(
    chain: MarkovChain,
    model_config: ModelConfig,
    train_config,
    seeds: list[int],
    inits: tuple[str, ...] = ("paper", "good"),
    progress: bool = False,
) -> dict[str, Any]:
    """Train one run per (init, seed) with `training.trainer.train` (in memory) and count
    the trainer's verdicts: the fraction of seeds that escape the unigram basin ("bigram")
    under each named initialisation (training.inits). Returns {"rows": one dict per run
    (init, seed, verdict, final_eval_loss, plateau_exit_step, plateau_steps, wall_seconds),
    "fractions": {init: {verdict: share}}, "n_seeds", "chain", "model", "train"}."""
    from training.trainer import train

    if not seeds:
        raise ValueError("seeds must name at least one seed")
    rows = []
    for init in inits:
        mcfg = ModelConfig.from_dict({**model_config.to_dict(), "init": init})
        for seed in seeds:
            res = train(mcfg, chain, train_config, seed=seed, progress=False)
            row = {
                "init": init,
                "seed": seed,
                "verdict": res["verdict"],
                "final_eval_loss": res["final_eval_loss"],
                "plateau_exit_step": res.get("plateau_exit_step"),
                "plateau_steps": res.get("plateau_steps"),
                "wall_seconds": res.get("wall_seconds"),
            }
            rows.append(row)
            if progress:
                print(f"init {init} seed {seed}: {row['verdict']}", flush=True)
    fractions = {}
    for init in inits:
        verdicts = [r["verdict"] for r in rows if r["init"] == init]
        fractions[init] = {v: verdicts.count(v) / len(verdicts) for v in dict.fromkeys(verdicts)}
    return {
        "rows": rows,
        "fractions": fractions,
        "n_seeds": len(seeds),
        "chain": chain.to_dict(),
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
    }


def training_gradient_norm(
    model: MarkovTransformer, chain: MarkovChain, train_config, seed: int, step: int
) -> float:
    """Global 2-norm of the gradient of update `step`'s training loss (nats) at `model`'s
    weights: the trainer's batch for (seed, step) (member_batches), its loss (member_losses)
    and the run's autocast (train_config.precision; no loss scale). Computed on the unstacked
    model, so equal to the trainer's gradient to float rounding."""
    from training.stacked import member_losses
    from training.trainer import Arithmetic, member_batches

    tc = train_config
    device = model.embed.W_E.device
    tokens = member_batches([chain], [seed], step, tc, device)
    model.set_fused_attention(tc.fused_attention)
    params = [p for p in model.parameters() if p.requires_grad]
    with Arithmetic(tc, device).autocast():
        logits = model(tokens[0, :, : tc.seq_len])
    loss = member_losses(logits.float()[None], tokens)[0]
    grads = torch.autograd.grad(loss, params)
    return float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads])))


def precision_escape(
    chain: MarkovChain,
    model_config: ModelConfig,
    train_config,
    seed: int,
    out_dir: str | os.PathLike,
    precisions: tuple[str, ...] = ("fp32", "fp16"),
    depart_tol: float = 1e-3,
) -> dict[str, Any]:
    """Train `seed` once per precision (the same init and batches; train_config otherwise
    as given, grad_scaler only where the precision is not fp32) into out_dir/PRECISION, and
    follow the escape from the unigram plateau in each.

    Per precision: steps (the kept checkpoints before the last update: set
    train_config.checkpoints_per_octave high for a dense curve), grad_norm (the training
    gradient's 2-norm there, training_gradient_norm), eval_steps and eval_loss (nats),
    plateau_exit_step, plateau_steps, verdict and arithmetic (from the summary). departs_step:
    for each precision but the first, the first evaluated step whose eval loss differs from
    the first precision's by more than `depart_tol` nats (None: never); start_difference: that
    difference at step 0, where the weights are equal (the evaluation's own rounding: keep
    depart_tol above it). Existing run
    directories are refused by the trainer, never overwritten."""
    from training.recipe import TrainConfig
    from training.runs import load_run
    from training.trainer import resolve_device, train

    if not precisions:
        raise ValueError("precisions must name at least one precision")
    out = Path(out_dir)
    curves: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        scaler = train_config.grad_scaler and precision != "fp32"
        fields = {**train_config.to_dict(), "precision": precision, "grad_scaler": scaler}
        tc = TrainConfig.from_dict(fields)
        res = train(model_config, chain, tc, seed=seed, out_dir=out / precision, progress=False)
        run, device = load_run(out / precision), resolve_device(tc.device)
        steps = [s for s in run.checkpoint_steps() if s < tc.iters]
        norms = [
            training_gradient_norm(run.model(s, device=device), chain, tc, seed, s) for s in steps
        ]
        metrics = res.metrics
        curves[precision] = {
            "steps": steps,
            "grad_norm": norms,
            "eval_steps": [m["step"] for m in metrics],
            "eval_loss": [m["eval_loss"] for m in metrics],
            "plateau_exit_step": res.get("plateau_exit_step"),
            "plateau_steps": res.get("plateau_steps"),
            "verdict": res["verdict"],
            "arithmetic": res.get("arithmetic"),
        }
    ref = curves[precisions[0]]
    departs, start = {}, {}
    for precision in precisions[1:]:
        c = curves[precision]
        start[precision] = abs(c["eval_loss"][0] - ref["eval_loss"][0])
        departs[precision] = next(
            (
                s
                for s, a, b in zip(c["eval_steps"], c["eval_loss"], ref["eval_loss"], strict=True)
                if abs(a - b) > depart_tol
            ),
            None,
        )
    return {
        "precisions": curves,
        "reference": precisions[0],
        "departs_step": departs,
        "start_difference": start,
        "depart_tol": depart_tol,
        "seed": seed,
        "chain": chain.to_dict(),
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
    }
