"""One measurement spec per reported quantity, shared by every command that reports it.

``explain``, ``report`` and ``landscape RUN`` read the same quantity off the same checkpoint
(the flip ratio, the head scores, the Hessian verdict); with their defaults they draw the same
sample, so they report the same number. A quantity's sample is ``n_seqs`` sequences of the
run's own training length (capped at the model's n_ctx and, for the position sweeps of
patching, at ``max_patch_len``) drawn with ``seed``; ``Sample.describe`` is the phrase every
output prints next to the number.

- flip ratio, patching, ablations, attention and head scores (``interp.explain``):
  ``flip_seqs`` sequences of min(training length, n_ctx, max_patch_len) tokens;
- Hessian spectrum and verdict (``interp.landscape.hessian_report``): ``hessian_tokens``
  tokens' worth of sequences of min(training length, n_ctx) tokens (at least
  ``hessian_min_seqs``), every other estimation setting ``LandscapeConfig``'s default.

Intervals: ``ratio_interval`` gives the flip ratio's delta-method standard error from the
per-pair effects; a verdict whose interval (estimate +- z_interval standard errors) reaches
across a threshold is "undecided".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.landscape.sample import LandscapeConfig
from training.chains import MarkovChain
from training.jsonconfig import JsonConfig


@dataclass(frozen=True)
class Sample:
    """The sample a number was measured on: n_seqs sequences of seq_len tokens, seed."""

    n_seqs: int
    seq_len: int
    seed: int

    def describe(self) -> str:
        return f"{self.n_seqs} sequences x {self.seq_len} tokens, seed {self.seed}"

    def to_dict(self) -> dict[str, int]:
        return {"n_seqs": self.n_seqs, "seq_len": self.seq_len, "seed": self.seed}


@dataclass
class MeasurementSpec(JsonConfig):
    """Default sample of each quantity (module docstring). z_interval: standard errors on
    each side of an interval (1.96: 95%)."""

    config_name = "measurement spec"

    seed: int = 0
    flip_seqs: int = 64
    max_patch_len: int = 128
    hessian_tokens: int = 32768
    hessian_min_seqs: int = 16
    z_interval: float = 1.96

    def __post_init__(self) -> None:
        for name in ("flip_seqs", "max_patch_len", "hessian_tokens", "hessian_min_seqs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        z = self.z_interval
        if not (isinstance(z, (int, float)) and math.isfinite(z) and z > 0):
            raise ValueError(f"z_interval must be a positive number, got {z!r}")

    def flip_sample(self, train_len: int | None, n_ctx: int, n_seqs: int | None = None) -> Sample:
        """Sample of the flip ratio, patching and head scores: the training length capped at
        n_ctx and max_patch_len (every position is patched)."""
        n = min(train_len or n_ctx, n_ctx, self.max_patch_len)
        return Sample(n_seqs or self.flip_seqs, n, self.seed)

    def hessian_sample(
        self, train_len: int | None, n_ctx: int, n_seqs: int | None = None
    ) -> Sample:
        """Sample of the Hessian verdict: the training length (capped at n_ctx) and
        hessian_tokens // length sequences (at least hessian_min_seqs)."""
        n = min(train_len or n_ctx, n_ctx)
        return Sample(n_seqs or max(self.hessian_min_seqs, self.hessian_tokens // n), n, self.seed)

    def hessian_config(self, sample: Sample, **overrides: Any) -> LandscapeConfig:
        """The LandscapeConfig of a Hessian measurement on ``sample``; overrides: any other
        field (None values keep the default)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return LandscapeConfig(
            n_sequences=sample.n_seqs, seq_len=sample.seq_len, seed=sample.seed, **given
        )


def ratio_interval(
    effects: Float[Tensor, " batch"], true_effects: Float[Tensor, " batch"]
) -> tuple[float, float]:
    """(rho, se): rho = mean(effects) / mean(true_effects) and its delta-method standard
    error sqrt(var(e_i - rho t_i) / n) / |mean t| over the n pairs (nan when mean t is 0)."""
    e, t = effects.double().reshape(-1), true_effects.double().reshape(-1)
    n = e.numel()
    mt = float(t.mean())
    if n < 2 or mt == 0.0:
        return float("nan"), float("nan")
    rho = float(e.mean()) / mt
    resid = e - rho * t
    return rho, float(resid.std(unbiased=True)) / math.sqrt(n) / abs(mt)


def classify_interval(
    estimate: float, se: float, z: float, bands: list[tuple[str, float, float]]
) -> str:
    """The label of the band [lo, hi] that holds the whole interval estimate +- z se;
    "undecided" when the interval reaches across a band edge (nan se: the estimate alone)."""
    if not math.isfinite(estimate):
        return "undecided"
    half = z * se if math.isfinite(se) else 0.0
    lo, hi = estimate - half, estimate + half
    for label, b_lo, b_hi in bands:
        if b_lo <= lo and hi <= b_hi:
            return label
    return "undecided"


def sample_sequences(chain: MarkovChain, sample: Sample) -> Int[Tensor, "n_seqs seq_len"]:
    """The sample's sequences from ``chain`` (a fresh generator seeded with sample.seed): the
    first draw of ``interp.explain.explain_model``, so head scores agree across commands."""
    return chain.sample(
        sample.n_seqs, sample.seq_len, generator=torch.Generator().manual_seed(sample.seed)
    )
