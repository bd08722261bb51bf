"""The model's next-token law against the in-context add-beta estimator, with beta fitted.

The add-beta order-k estimator (``training.chains.add_pseudocount_probs``) predicts
(c(ctx, s) + beta) / (c(ctx) + S beta) from the counts of the (last k tokens, next token) pairs
seen so far; with beta = alpha it is the Bayes predictor of in-context chains with
Dirichlet(alpha) rows. ``fit_add_beta`` finds the beta whose estimator is closest to the
model's predictive: it minimises the mean over positions of KL(model || add-beta) (nats; the
same minimiser as the cross-entropy, the model's entropy does not depend on beta), over log
beta: a grid, then golden-section search in the bracket around the grid's best point. The
residual KL says how well the best add-beta law describes the model (0: exactly add-beta).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.chains import add_pseudocount_probs

BETA_BOUNDS = (1e-3, 1e3)
GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass
class AddBetaFit:
    """The fitted pseudocount ``beta`` of the order-``order`` estimator, the residual mean KL
    (model || add-beta at beta), nats, over positions ``start``..N-1, and the KL at beta = 1
    (add-1, Laplace) for comparison."""

    order: int
    beta: float
    kl: float
    kl_add_one: float
    start: int
    at_bound: bool  # the fit ended at an end of BETA_BOUNDS (the minimum may lie beyond)

    def to_dict(self) -> dict:
        return asdict(self)


def add_beta_kl(
    probs: Float[Tensor, "batch pos S"],
    tokens: Int[Tensor, "batch pos"],
    order: int,
    beta: float,
    start: int = 1,
) -> float:
    """Mean over sequences and positions start..N-1 of KL(probs || add-beta order-k), nats.
    probs[:, i] predicts tokens[:, i+1] from tokens[:, :i+1], as the estimator's."""
    S = probs.shape[-1]
    est = add_pseudocount_probs(tokens, S, order, beta)[:, start:]
    p = probs[:, start:].to(torch.float64)
    kl = (torch.special.xlogy(p, p) - p * est.log()).sum(-1)
    return float(kl.mean())


@torch.no_grad()
def fit_add_beta(
    probs: Float[Tensor, "batch pos S"],
    tokens: Int[Tensor, "batch pos"],
    order: int = 1,
    start: int = 1,
    grid: int = 25,
    iters: int = 40,
    bounds: tuple[float, float] = BETA_BOUNDS,
) -> AddBetaFit:
    """Fit beta (module doc): ``grid`` points log-spaced over ``bounds``, then ``iters``
    golden-section steps on log beta around the best grid point."""
    if probs.ndim != 3 or probs.shape[:2] != tokens.shape:
        raise ValueError(
            f"probs {tuple(probs.shape)} must be [batch, pos, S] over tokens {tuple(tokens.shape)}"
        )
    if not 0 <= start < tokens.shape[1]:
        raise ValueError(f"start {start} is outside 0..{tokens.shape[1] - 1}")
    if grid < 3 or iters < 0:
        raise ValueError(f"need grid >= 3 and iters >= 0, got {grid} and {iters}")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])

    def f(u: float) -> float:
        return add_beta_kl(probs, tokens, order, math.exp(u), start)

    us = [lo + (hi - lo) * i / (grid - 1) for i in range(grid)]
    values = [f(u) for u in us]
    best = min(range(grid), key=values.__getitem__)
    a, b = us[max(best - 1, 0)], us[min(best + 1, grid - 1)]
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    u, kl = min([(c, fc), (d, fd), (us[best], values[best])], key=lambda t: t[1])
    return AddBetaFit(
        order=order,
        beta=math.exp(u),
        kl=kl,
        kl_add_one=f(0.0),
        start=start,
        at_bound=min(abs(u - lo), abs(u - hi)) < 1e-6,
    )
