"""Metrics of a patching run and the normalised effect.

Metrics map logits [*patches, batch, readout, vocab] to [*patches, batch] (nats or logits).
Normalised effect (docs/theory.md section 5): (M - M_corrupt) / (M_clean - M_corrupt), on batch
means; denoising (clean activations into the corrupted run) measures sufficiency (1 = the patch
restores the clean behaviour), noising (corrupted activations into the clean run) measures
necessity (0 = the patch destroys it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from interp.corruptions import PatchingData
from interp.patching.sweep import Metric

DIRECTIONS = ("denoise", "noise")
METRICS = ("logit_diff", "logprob")


def make_metric(name: str, data: PatchingData) -> Metric:
    """The per-example metric ``name`` on the last readout position (nats / logits):

    - "logit_diff": logit[answer] - logit[foil], the two tokens whose true probability the
      corruption lowers / raises most (binary: the clean-favoured token minus the other);
      0 for examples the corruption leaves unchanged under the true law;
    - "logprob": log-probability of the true next token x_{N+1} (the label).
    """
    if name not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {name!r}")
    if name == "logit_diff":
        answer, foil, weight = data.answer, data.foil, data.informative.float()

        def logit_diff(logits: Tensor) -> Tensor:
            last = logits[..., -1, :]
            idx = torch.stack([answer, foil], -1).to(last.device)
            picked = last.gather(-1, idx.expand(*last.shape[:-1], 2))
            return (picked[..., 0] - picked[..., 1]) * weight.to(last.device)

        return logit_diff
    labels = data.labels

    def logprob(logits: Tensor) -> Tensor:
        last = logits[..., -1, :].log_softmax(-1)
        idx = labels.to(last.device).expand(last.shape[:-1])
        return last.gather(-1, idx[..., None])[..., 0]

    return logprob


def normalise(raw: Tensor, clean: float, corrupt: float) -> Tensor:
    """(M - M_corrupt) / (M_clean - M_corrupt); nan where clean == corrupt (nothing to
    recover: the model does not react to the corruption)."""
    gap = clean - corrupt
    if abs(gap) < 1e-12:
        return torch.full_like(raw, float("nan"))
    return (raw - corrupt) / gap
