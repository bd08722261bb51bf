"""Head scores from attention patterns: previous-token and statistical-induction heads.

Both scores are the attention mass a query puts on "matching" keys, averaged over the queries
i >= 1 of every sequence (docs/theory.md section 5):

- previous-token score: mass on j = i - 1;
- statistical-induction score (Edelman et al. 2024): mass on the keys j >= 1 whose previous
  token equals the current one, x_{j-1} = x_i (the positions that show what followed x_i
  before, i.e. the in-context estimate of the kernel row of x_i).

With a tiny vocabulary many keys match by chance (for a binary vocabulary about half), so each
score comes with a shuffled baseline, computed as an exact expectation (no sampling noise):

- previous-token: key positions shuffled among the allowed keys, E = mean_i 1 / #allowed(i)
  (what a head that ignores position scores);
- induction: the sequence's tokens shuffled (a uniform permutation of its positions, pattern
  held fixed): P(x'_{j-1} = x'_i) = sum_s c_s (c_s - 1) / (N (N - 1)) for the token counts
  c_s, so E_i = that rate times the mass on keys j >= 1 (what a head whose attention is
  unrelated to the token values scores).

TransformerLens's head_detector needs a tokenizer, so the scores are computed here from the
patterns directly, vectorised over layers, batch, heads and positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from training.fused_attention import band_mask


def allowed_keys(
    n: int, window: int | None, device: torch.device | str = "cpu"
) -> Bool[Tensor, "query key"]:
    """Keys query i may attend to: j <= i, and j >= i - window under an attention window
    (the model's own rule, training.fused_attention.band_mask)."""
    return band_mask(n, window, device)


def induction_mask(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch query key"]:
    """M[b, i, j] = (j >= 1 and tokens[b, j-1] == tokens[b, i]); causality is left to the
    pattern (whose weights vanish on j > i)."""
    prev = torch.nn.functional.pad(tokens, (1, 0), value=-1)[:, :-1]  # x_{j-1}, -1 at j = 0
    return prev[:, None, :] == tokens[:, :, None]


def shuffled_match_rate(tokens: Int[Tensor, "batch pos"], n_states: int) -> Float[Tensor, " batch"]:
    """P(x'_a = x'_b) for two distinct positions of a uniformly shuffled sequence:
    sum_s c_s (c_s - 1) / (N (N - 1)), c_s the count of token s in the sequence."""
    n = tokens.shape[1]
    if n < 2:
        raise ValueError(f"need sequences of at least 2 tokens, got {n}")
    counts = torch.nn.functional.one_hot(tokens, n_states).sum(1).to(torch.float64)
    return ((counts * (counts - 1)).sum(-1) / (n * (n - 1))).float()


@dataclass
class HeadScores:
    """Per-(layer, head) scores [layer][head] and their shuffled baselines (see module doc)."""

    previous_token: Float[Tensor, "layer head"]
    previous_token_baseline: Float[Tensor, "layer head"]
    induction: Float[Tensor, "layer head"]
    induction_baseline: Float[Tensor, "layer head"]

    @property
    def previous_token_excess(self) -> Float[Tensor, "layer head"]:
        return self.previous_token - self.previous_token_baseline

    @property
    def induction_excess(self) -> Float[Tensor, "layer head"]:
        return self.induction - self.induction_baseline

    def to_dict(self) -> dict:
        return {
            "previous_token": self.previous_token.tolist(),
            "previous_token_baseline": self.previous_token_baseline.tolist(),
            "previous_token_excess": self.previous_token_excess.tolist(),
            "induction": self.induction.tolist(),
            "induction_baseline": self.induction_baseline.tolist(),
            "induction_excess": self.induction_excess.tolist(),
            "layout": "[layer][head]",
        }


def head_scores(
    patterns: Float[Tensor, "layer batch head query key"],
    tokens: Int[Tensor, "batch pos"],
    n_states: int,
    windows: list[int | None] | None = None,
) -> HeadScores:
    """Previous-token and induction scores with their shuffled baselines (module doc).

    windows: the attention window of each layer (``model.cfg.windows()``; None = causal),
    needed for the previous-token baseline 1 / #allowed keys.
    """
    if patterns.ndim != 5:
        raise ValueError(
            f"patterns must be [layer, batch, head, query, key], got {tuple(patterns.shape)}"
        )
    n_layers, batch, _, n, n_key = patterns.shape
    if n != n_key or tokens.shape != (batch, n):
        raise ValueError(
            f"tokens of shape {tuple(tokens.shape)} do not match patterns "
            f"{tuple(patterns.shape)} (need [batch, pos] = [{batch}, {n}])"
        )
    if n < 2:
        raise ValueError(f"need sequences of at least 2 tokens, got {n}")
    windows = [None] * n_layers if windows is None else list(windows)
    if len(windows) != n_layers:
        raise ValueError(f"got {len(windows)} windows for {n_layers} layers")
    tokens = tokens.to(patterns.device)
    queries = slice(1, None)  # i >= 1: query 0 has no previous token and no key with j >= 1

    prev = patterns.diagonal(offset=-1, dim1=-2, dim2=-1)  # [L, B, H, n-1]: A[i, i-1]
    previous_token = prev.mean((1, 3))

    n_allowed = torch.stack(
        [allowed_keys(n, w, patterns.device).sum(-1)[queries] for w in windows]
    ).to(patterns.dtype)  # [L, n-1]
    prev_baseline = (1.0 / n_allowed).mean(-1)[:, None].expand_as(previous_token)

    match = induction_mask(tokens).to(patterns.dtype)  # [B, query, key]
    mass = (patterns * match[None, :, None]).sum(-1)[..., queries]  # [L, B, H, n-1]
    induction = mass.mean((1, 3))

    rate = shuffled_match_rate(tokens, n_states).to(patterns.dtype)  # [B]
    off_first = 1.0 - patterns[..., queries, 0]  # mass on keys j >= 1, [L, B, H, n-1]
    induction_baseline = (rate[None, :, None, None] * off_first).mean((1, 3))

    return HeadScores(
        previous_token=previous_token.detach().cpu(),
        previous_token_baseline=prev_baseline.detach().cpu().clone(),
        induction=induction.detach().cpu(),
        induction_baseline=induction_baseline.detach().cpu(),
    )
