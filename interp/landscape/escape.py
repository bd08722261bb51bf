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


FIDELITY = (
    "grad_norm",
    "cosine",
    "rel_error",
    "norm_ratio",
    "output_subnormal",
    "output_rounding",
    "scaled_cosine",
)
FP16_SMALLEST_NORMAL = 2.0**-14  # below it float16 is subnormal: absolute steps of 2^-24
GRAD_SCALE = 2.0**16  # torch.amp.GradScaler's initial loss scale


def _training_gradient(
    model: MarkovTransformer,
    chain: MarkovChain,
    train_config,
    seed: int,
    step: int,
    loss_scale: float = 1.0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The gradient of update `step`'s training loss at `model`'s weights under the run's
    autocast, backpropagated from loss x `loss_scale` and divided by it after (a GradScaler's
    arithmetic), and dL/dlogits as the backward pass carries it, unscaled."""
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
    *grads, d_logits = torch.autograd.grad(loss * loss_scale, [*params, logits])
    return [g.float() / loss_scale for g in grads], d_logits.float() / loss_scale


def _norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([t.double().norm() for t in tensors])))


def training_gradient_norm(
    model: MarkovTransformer, chain: MarkovChain, train_config, seed: int, step: int
) -> float:
    """Global 2-norm of the gradient of update `step`'s training loss (nats) at `model`'s
    weights: the trainer's batch for (seed, step) (member_batches), its loss (member_losses)
    and the run's autocast (train_config.precision; no loss scale). Computed on the unstacked
    model, so equal to the trainer's gradient to float rounding."""
    return _norm(_training_gradient(model, chain, train_config, seed, step)[0])


def gradient_fidelity(
    model: MarkovTransformer, chain: MarkovChain, train_config, seed: int, step: int
) -> dict[str, Any]:
    """How much of the float32 gradient the run's arithmetic keeps, at `model`'s weights on
    update `step`'s batch (training_gradient_norm's batch and loss).

    grad_norm: training_gradient_norm (the run's arithmetic). cosine: between the run's
    gradient (its autocast, no loss scale) and the float32 one over all parameters;
    rel_error: ||g - g32|| / ||g32||; norm_ratio: ||g|| / ||g32||. The output gradient
    dL/dlogits of a mean over T targets is at most 1/T in size per entry (T = 16 x 1023 in
    the paper: 6.1e-5, float16's smallest normal number 2^-14): output_subnormal is the
    fraction of its nonzero float32 entries below 2^-14 in size (subnormal, or zero, in
    float16; the last position, which predicts nothing, has zeros), output_rounding the
    relative error ||fp16(d) - d|| / ||d|| that storing it in float16 makes; both describe
    the float32 gradient, whatever the run's arithmetic. Under fp16
    also scaled_cosine, scaled_rel_error, scaled_norm_ratio: the same with the loss scaled by
    GRAD_SCALE (2^16, a GradScaler's first scale) in the backward pass."""
    from training.recipe import TrainConfig

    fp32 = TrainConfig.from_dict(train_config.to_dict() | {"precision": "fp32"})
    g32, d32 = _training_gradient(model, chain, fp32, seed, step)
    if train_config.precision == "fp32":
        g = g32
    else:
        g = _training_gradient(model, chain, train_config, seed, step)[0]
    b = torch.cat([t.double().flatten() for t in g32])

    def against_fp32(grads: list[torch.Tensor]) -> tuple[float, float, float]:
        a = torch.cat([t.double().flatten() for t in grads])
        return (
            float(a @ b / (a.norm() * b.norm())),
            float((a - b).norm() / b.norm()),
            float(a.norm() / b.norm()),
        )

    d = d32.double()
    out = {"grad_norm": _norm(g)}
    out |= dict(zip(("cosine", "rel_error", "norm_ratio"), against_fp32(g), strict=True))
    out |= {
        "output_subnormal": float((d[d != 0].abs() < FP16_SMALLEST_NORMAL).double().mean()),
        "output_rounding": float((d32.half().double() - d).norm() / d.norm()),
    }
    if train_config.precision == "fp16":  # the same with a GradScaler's first scale
        scaled = _training_gradient(model, chain, train_config, seed, step, GRAD_SCALE)[0]
        keys = ("scaled_cosine", "scaled_rel_error", "scaled_norm_ratio")
        out |= dict(zip(keys, against_fp32(scaled), strict=True))
    return out


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
    gradient's 2-norm there, training_gradient_norm), gradient_fidelity's numbers there
    (cosine, rel_error, norm_ratio against the float32 gradient at the same weights;
    output_subnormal, output_rounding), eval_steps and eval_loss (nats),
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
        fidelity = [
            gradient_fidelity(run.model(s, device=device), chain, tc, seed, s) for s in steps
        ]
        metrics = res.metrics
        curves[precision] = {
            "steps": steps,
            **{key: [f.get(key) for f in fidelity] for key in FIDELITY},
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
