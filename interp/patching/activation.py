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
from interp.measurement import ratio_interval
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
    n_pairs: clean/corrupted pairs; n_changed: pairs whose input the corruption changed
    (the effective sample: "resample" leaves some identical); ratio +- ratio_se: effect /
    true_effect with its delta-method standard error over the pairs
    (``interp.measurement.ratio_interval``); first_changed: the first position where any
    pair differs (a causal model's activations before it are identical in both runs).
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
    n_pairs: int = 0
    n_changed: int = 0
    ratio: float = float("nan")
    ratio_se: float = float("nan")
    first_changed: int = 0

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
            "n_pairs": self.n_pairs,
            "n_changed": self.n_changed,
            "ratio": self.ratio,
            "ratio_se": self.ratio_se,
            "first_changed": self.first_changed,
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
    per_clean, per_corrupt = fn(clean_logits[:, -1:]), fn(corrupt_logits[:, -1:])
    m_clean, m_corrupt = float(per_clean.mean()), float(per_corrupt.mean())
    t_clean, t_corrupt = data.true_metric(metric)
    true_clean, true_corrupt = float(t_clean.mean()), float(t_corrupt.mean())
    changed_at = (data.clean != data.corrupt).any(0).cpu()
    ratio, ratio_se = ratio_interval(per_clean - per_corrupt, (t_clean - t_corrupt).to(dev))
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
        n_pairs=int(data.clean.shape[0]),
        n_changed=int(data.changed.sum()),
        ratio=ratio,
        ratio_se=ratio_se,
        first_changed=int(changed_at.nonzero()[0]) if changed_at.any() else data.position,
    )
