"""Sequence metrics for path patching: the model's log-probability of the next token and its
in-context dependence, averaged over readout positions.

Both are ``interp.patching.Metric``s: logits at the readout positions R (sorted ascending)
[*patch, batch, R, vocab] -> [*patch, batch], where the output at position r predicts
tokens[:, r + 1].

The in-context dependence (nats/token) is the model's mean log-probability of the next token
minus that of the in-context add-1 unigram estimate (``training.chains.add_pseudocount_probs``,
order 0): how much the model gains over counting the tokens seen so far, i.e. over the best it
can do without reading which token followed which. A model that falls back to the token counts
scores about 0; the in-context bigram (Bayes) predictor on in-context chains scores its gap to
the unigram (binary, Dirichlet(1) rows, 101 tokens: 0.577 - 0.511 = 0.066, docs/theory.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.patching.sweep import Metric
from training.chains import add_pseudocount_probs


def dependence_readout(n: int) -> list[int]:
    """Positions N/4 .. N-2 (0-indexed) of a length-N sequence: enough context to estimate
    from, and each with a next token to score."""
    if n < 3:
        raise ValueError(f"need sequences of at least 3 tokens, got {n}")
    return list(range(n // 4, n - 1))


def next_token_metric(
    tokens: Int[Tensor, "batch pos"],
    readout: Sequence[int],
    reference: Float[Tensor, "batch pos S"] | None = None,
) -> Metric:
    """Mean over the readout positions r of log p_model(tokens[:, r+1]) (nats), minus
    log reference[:, r, tokens[:, r+1]] when a reference law is given."""
    n = tokens.shape[1]
    R = sorted({r + n if r < 0 else r for r in readout})
    if not R or R[0] < 0 or R[-1] > n - 2:
        raise ValueError(f"readout positions {list(readout)} must lie in 0..{n - 2}")
    r = torch.tensor(R, device=tokens.device)
    labels = tokens[:, r + 1]  # [batch, R]
    offset = None
    if reference is not None:
        offset = reference[:, r].gather(-1, labels[..., None])[..., 0].log()

    def metric(logits: Tensor) -> Tensor:
        lab = labels.to(logits.device).expand(logits.shape[:-1])
        lp = logits.log_softmax(-1).gather(-1, lab[..., None])[..., 0]
        if offset is not None:
            lp = lp - offset.to(device=logits.device, dtype=lp.dtype)
        return lp.mean(-1)

    return metric


def in_context_dependence(
    tokens: Int[Tensor, "batch pos"], n_states: int, readout: Sequence[int]
) -> Metric:
    """The model's log-probability gain over the in-context add-1 unigram estimate, nats per
    token, mean over the readout positions (module doc)."""
    unigram = add_pseudocount_probs(tokens, n_states, 0, 1.0)
    return next_token_metric(tokens, readout, unigram)
