"""Activation patching of one corruption: ``run_patching`` sweeps every (layer,
position[, head]) of each activation kind in one direction (denoising or noising) and
returns the batch means as a ``PatchingResult``, raw and normalised."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from interp.corruptions import PatchingData
from interp.patching.metrics import DIRECTIONS, make_metric, normalise
from interp.patching.sweep import (
    DEFAULT_BUDGET,
    PatchingRuns,
    cache_runs,
    check_act,
    patch_sweep,
    result_axes,
)

if TYPE_CHECKING:
    from training.model import MarkovTransformer


@dataclass
class PatchingResult:
    """Batch-mean patching sweeps of one corruption, direction and metric.

    raw[act]: the metric after each patch (layout ``result_axes(act)``); clean / corrupt: the
    unpatched metric on each batch; true_clean / true_corrupt: a perfect predictor's.
    """

    corruption: str
    direction: str
    metric: str
    clean: float
    corrupt: float
    true_clean: float
    true_corrupt: float
    position: int
    raw: dict[str, Tensor] = field(default_factory=dict)

    def normalised(self, act: str) -> Tensor:
        return normalise(self.raw[act], self.clean, self.corrupt)

    @property
    def effect(self) -> float:
        """M_clean - M_corrupt: how much the model reacts to the corruption."""
        return self.clean - self.corrupt

    @property
    def true_effect(self) -> float:
        return self.true_clean - self.true_corrupt

    def to_dict(self) -> dict:
        return {
            "corruption": self.corruption,
            "direction": self.direction,
            "metric": self.metric,
            "position": self.position,
            "clean": self.clean,
            "corrupt": self.corrupt,
            "true_clean": self.true_clean,
            "true_corrupt": self.true_corrupt,
            "raw": {a: v.tolist() for a, v in self.raw.items()},
            "normalised": {a: self.normalised(a).tolist() for a in self.raw},
            "axes": {a: list(result_axes(a)) for a in self.raw},
        }


@torch.no_grad()
def run_patching(
    model: MarkovTransformer,
    data: PatchingData,
    acts: Sequence[str] = ("resid_pre", "attn_out", "mlp_out", "z"),
    direction: str = "denoise",
    metric: str = "logit_diff",
    budget: int = DEFAULT_BUDGET,
    runs: PatchingRuns | None = None,
) -> PatchingResult:
    """Patch every (layer, position[, head]) of each activation kind in ``acts``.

    direction "denoise": clean activations into the corrupted run (sufficiency);
    "noise": corrupted activations into the clean run (necessity).
    runs: ``cache_runs(model, data)`` (every hook) if already computed, e.g. shared between
    both directions; None: both batches are run here.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    for act in acts:
        check_act(model, act)
    dev = model.W_E.device
    data = data.to(dev)
    fn = make_metric(metric, data)
    if runs is None:
        runs = cache_runs(model, data)
    (clean_logits, clean_cache), (corrupt_logits, corrupt_cache) = runs.clean, runs.corrupt
    m_clean = float(fn(clean_logits[:, -1:]).mean())
    m_corrupt = float(fn(corrupt_logits[:, -1:]).mean())
    if metric == "logit_diff":
        true_clean, true_corrupt = data.true_logit_diff()
    else:
        true_clean, true_corrupt = data.true_logprob()
    if direction == "denoise":
        target, target_run, source = data.corrupt, runs.corrupt, clean_cache
    else:
        target, target_run, source = data.clean, runs.clean, corrupt_cache
    raw = {
        act: patch_sweep(model, target, source, act, fn, budget=budget, target_run=target_run).cpu()
        for act in acts
    }
    return PatchingResult(
        corruption=data.corruption,
        direction=direction,
        metric=metric,
        clean=m_clean,
        corrupt=m_corrupt,
        true_clean=true_clean,
        true_corrupt=true_corrupt,
        position=data.position,
        raw=raw,
    )
