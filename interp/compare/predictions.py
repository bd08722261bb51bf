"""Both models' predictions on shared held-out inputs, against the truth.

``shared_inputs`` (one batch of the trainer's evaluation stream), ``behaviour`` (the
trainer's metrics and verdict), ``predicted_probs``, ``transition_table`` (context-mean
predictions for fixed chains) and ``calibration`` (predicted against true probabilities).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.chains import MarkovChain
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.trainer import EvalSet, evaluate
from training.verdicts import verdict

MAX_TABLE_CONTEXTS = 64  # transition tables for fixed chains with at most this many contexts


def shared_inputs(
    chain: MarkovChain, n_seqs: int, seq_len: int, seed: int, device: torch.device
) -> EvalSet:
    """Held-out inputs with their true next-token laws: one batch of the trainer's evaluation
    stream for ``seed`` (``EvalSet``), so metrics match ``training.trainer.evaluate``."""
    cfg = TrainConfig(batch=n_seqs, seq_len=seq_len, eval_batches=1)
    return EvalSet(chain, cfg, seed, device)


def behaviour(
    model: MarkovTransformer, inputs: EvalSet, references: dict[str, Any]
) -> dict[str, Any]:
    """Metrics of ``model`` on ``inputs`` (``training.trainer.evaluate``: eval_loss, kl,
    rel_excess, rel_unigram, dependence, accuracy, p_hat/q_hat ...; nats) plus the verdict."""
    out = evaluate(model, inputs, references, contextlib.nullcontext)
    gap = references["unigram_loss"] - references["optimal_loss"]
    out["verdict"] = verdict(
        out.get("rel_excess"), out.get("rel_unigram"), out.get("dependence"), gap=gap, kl=out["kl"]
    )
    return out


@torch.no_grad()
def predicted_probs(
    model: MarkovTransformer, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_m1 S"]:
    """The model's next-token law at positions 0..N-2 (float64)."""
    return model(tokens)[:, :-1].double().softmax(-1)


@dataclass
class TransitionTable:
    """Mean predicted next-token law given each context of the last k tokens, against the
    truth (fixed chains). contexts: labels (the k tokens, oldest first); true, predicted[label]:
    [M, S]; weights: context frequencies in the inputs [M]."""

    contexts: list[str]
    true: Float[Tensor, "M S"]
    predicted: dict[str, Float[Tensor, "M S"]]
    weights: Float[Tensor, " M"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "contexts": self.contexts,
            "true": self.true.tolist(),
            "predicted": {k: v.tolist() for k, v in self.predicted.items()},
            "weights": self.weights.tolist(),
        }


def transition_table(
    inputs: EvalSet, probs: dict[str, Float[Tensor, "batch pos_m1 S"]]
) -> TransitionTable | None:
    """Context-mean predictions of each model (``probs`` from ``predicted_probs`` on
    ``inputs.tokens[0]``) and of the truth, via ``EvalSet.group_means``. None for in-context
    chains (no fixed kernel) or more than MAX_TABLE_CONTEXTS contexts."""
    if inputs.in_context or inputs.M > MAX_TABLE_CONTEXTS:
        return None
    true, weights = inputs.group_means(inputs.true)
    S, k = inputs.S, inputs.k
    digits = torch.cartesian_prod(*[torch.arange(S)] * k) if k > 1 else torch.arange(S)[:, None]
    contexts = ["".join(str(int(t)) for t in row) for row in digits.reshape(-1, k)]
    predicted = {label: inputs.group_means([p])[0].cpu() for label, p in probs.items()}
    return TransitionTable(contexts, true.cpu(), predicted, weights.cpu())


def calibration(
    true: Float[Tensor, "... S"], predicted: Float[Tensor, "... S"], bins: int = 20
) -> dict[str, list[float]]:
    """Predicted against true probabilities of every (input, position, state), binned by the
    true probability: bin centres, mean true, mean predicted, counts (empty bins dropped)."""
    t = true.detach().double().flatten().cpu()
    p = predicted.detach().double().flatten().cpu()
    idx = (t * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins).double()
    sum_t = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, t)
    sum_p = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, p)
    keep = counts > 0
    return {
        "true": (sum_t[keep] / counts[keep]).tolist(),
        "predicted": (sum_p[keep] / counts[keep]).tolist(),
        "count": counts[keep].long().tolist(),
    }
