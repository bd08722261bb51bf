"""Q-, K- and V-composition scores between heads (Elhage et al. 2021), as TransformerLens
computes them (``utilities.composition_scores`` on ``FactoredMatrix`` circuits).

For a head h1 in layer l1 and a head h2 in a later layer l2, with row-vector circuits
OV = W_V W_O and QK = W_Q W_K^T (each d_model x d_model, score = x_q QK x_k^T):

- Q-composition: ||OV^h1 QK^h2||_F / (||OV^h1||_F ||QK^h2||_F) (h1 writes what h2's query reads);
- K-composition: the same with QK^h2 transposed (h1 writes what h2's key reads; a previous-token
  head feeding an induction head's key);
- V-composition: the same with OV^h2 (h1 writes what h2's value reads).

The receiving head reads ln1(resid): its LayerNorm weight is folded into its W_Q, W_K, W_V
(rows scaled by w); the mean-centring and the scale are not (they are not linear maps of the
residual with fixed weights). Random baseline: the mean (and standard deviation) of the same
score for independent Gaussian factor matrices of the model's shapes ([d_model, d_head] and
[d_head, d_model]), the level two unrelated heads of this size compose at.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import FactoredMatrix
from transformer_lens.utilities import composition_scores

from interp.explain import finite_json

if TYPE_CHECKING:
    from training.model import MarkovTransformer

COMPOSITIONS = ("Q", "K", "V")


@dataclass
class CompositionScores:
    """scores[l1, h1, l2, h2] for h1 in layer l1 composing into h2 in layer l2 (nan unless
    l1 < l2), and the random baseline (mean, sd) of the score."""

    mode: str
    scores: Float[Tensor, "layer head layer head"]
    baseline: float
    baseline_sd: float

    @property
    def excess(self) -> Float[Tensor, "layer head layer head"]:
        return self.scores - self.baseline

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "scores": finite_json(self.scores.tolist()),
            "baseline": self.baseline,
            "baseline_sd": self.baseline_sd,
            "layout": "[layer1][head1][layer2][head2], nan (null) unless layer1 < layer2",
        }


def _folded(model: MarkovTransformer, name: str) -> Float[Tensor, "layer head d_model d_head"]:
    """W_Q, W_K or W_V of every layer with that layer's ln1 weight folded into its rows."""
    out = []
    for block in model.blocks:
        W = getattr(block.attn, name)
        w = getattr(block.ln1, "w", None)
        out.append(W if w is None else W * w[None, :, None])
    return torch.stack(out).detach()


def head_circuits(
    model: MarkovTransformer,
) -> tuple[FactoredMatrix, FactoredMatrix, FactoredMatrix]:
    """(OV, OV with the reader's ln1 folded in, QK with ln1 folded in), each a
    FactoredMatrix [layer, head, d_model, d_model]."""
    W_O = torch.stack([b.attn.W_O for b in model.blocks]).detach()
    W_V = torch.stack([b.attn.W_V for b in model.blocks]).detach()
    ov = FactoredMatrix(W_V, W_O)
    ov_read = FactoredMatrix(_folded(model, "W_V"), W_O)
    qk = FactoredMatrix(_folded(model, "W_Q"), _folded(model, "W_K").transpose(-2, -1))
    return ov, ov_read, qk


@functools.lru_cache(maxsize=64)
@torch.no_grad()
def random_composition_baseline(
    d_model: int, d_head: int, n_samples: int = 64, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of the composition score of ``n_samples`` pairs of
    independent random circuits (Gaussian factors [d_model, d_head] x [d_head, d_model]; the
    same for Q, K and V), seeded, so computed once per argument set (cached)."""
    gen = torch.Generator().manual_seed(seed)

    def draw() -> FactoredMatrix:
        a = torch.randn(n_samples, d_model, d_head, generator=gen, dtype=torch.float64)
        b = torch.randn(n_samples, d_head, d_model, generator=gen, dtype=torch.float64)
        return FactoredMatrix(a, b)

    scores = composition_scores(draw(), draw(), broadcast_dims=False)
    return float(scores.mean()), float(scores.std())


@torch.no_grad()
def head_composition(
    model: MarkovTransformer, mode: str = "K", n_samples: int = 64, seed: int = 0
) -> CompositionScores:
    """``mode``-composition score of every head pair h1 (layer l1) -> h2 (layer l2 > l1), with
    the random baseline (module doc)."""
    if mode not in COMPOSITIONS:
        raise ValueError(f"composition mode must be one of {COMPOSITIONS}, got {mode!r}")
    ov, ov_read, qk = head_circuits(model)
    right = {"Q": qk, "K": qk.T, "V": ov_read}[mode]
    scores = composition_scores(ov, right, broadcast_dims=True)  # [l1, h1, l2, h2]
    L = model.cfg.n_layers
    later = torch.arange(L)[:, None] < torch.arange(L)[None, :]
    scores = torch.where(later[:, None, :, None], scores, torch.nan)
    mean, sd = random_composition_baseline(model.cfg.d_model, model.cfg.d_head, n_samples, seed)
    return CompositionScores(mode, scores.cpu(), mean, sd)
