"""Next-token laws from tokens: the oracle law under a known kernel, in-context add-pseudocount
estimates and transition counts.

``[:, i]`` of every law here predicts ``tokens[:, i+1]`` from ``tokens[:, :i+1]``: exactly
what a causal model's output at position i should be. All are float64 and computed for every
position at once.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.chains.checks import check_int, check_positive, check_tokens
from training.chains.kernels import tuple_index


def oracle_probs(
    tokens: Int[Tensor, "B N"],
    kernels: Float[Tensor, "Bk M S"],
    init_law: Float[Tensor, "Bk M"],
    k: int,
) -> Float[Tensor, "B N S"]:
    """Law of x_{i+1} given x_1..x_i under a known kernel and initial law of the first k tokens.

    Positions with a full context (i >= k-1, 0-indexed) read the kernel row of the last k
    tokens; earlier ones use the conditional of ``init_law`` (uniform if the prefix has
    probability 0).
    """
    B, N = tokens.shape
    _, M, S = kernels.shape
    out = torch.empty(B, N, S, dtype=torch.float64, device=tokens.device)
    if N >= k:
        z = tuple_index(tokens.unfold(1, k, 1), S)  # [B, N-k+1]
        if kernels.shape[0] == 1:
            out[:, k - 1 :] = kernels[0][z]
        else:
            out[:, k - 1 :] = kernels.gather(1, z[..., None].expand(-1, -1, S))
    for i in range(min(k - 1, N)):  # at most order-1 prefix positions
        joint = init_law.reshape(-1, S ** (i + 1), S, S ** (k - i - 2)).sum(-1)
        total = joint.sum(-1, keepdim=True)
        cond = torch.where(total > 0, joint / total.clamp_min(1e-300), 1.0 / S)
        prefix = tuple_index(tokens[:, : i + 1], S)
        out[:, i] = cond[0][prefix] if cond.shape[0] == 1 else cond[torch.arange(B), prefix]
    return out


def add_pseudocount_probs(
    tokens: Int[Tensor, "batch pos"], n_states: int, order: int, pseudocount: float
) -> Float[Tensor, "batch pos S"]:
    """In-context add-beta order-j estimator, for every position at once (no loop).

    Output [:, i] predicts x_{i+1} from x_1..x_i (0-indexed tokens[:, :i+1]):
    (N_i(c, s) + beta) / (N_i(c) + S beta), where c is the last ``order`` tokens and N_i
    counts the (context, next) pairs seen so far. order = 0 is the unigram estimator
    (counts of all tokens so far); positions with fewer than ``order`` tokens get uniform.
    With beta = alpha this is the Dirichlet(alpha) posterior predictive (Bayes optimal for
    in-context chains with independent Dirichlet rows and uniform first tokens).
    """
    check_int("order", order, 0)
    check_positive("pseudocount", pseudocount)
    check_tokens(tokens, n_states)
    B, N = tokens.shape
    S, j = n_states, order
    out = torch.full((B, N, S), 1.0 / S, dtype=torch.float64, device=tokens.device)
    if N < max(j, 1):
        return out
    M = S**j
    # contexts: windows of the last j tokens, win[:, s] covers tokens s..s+j-1
    win = tuple_index(tokens.unfold(1, j, 1), S)  # [B, N-j+1]
    # (context, target) pairs for targets t = j..N-1, counted cumulatively over t
    pairs = win[:, : N - j] * S + tokens[:, j:]
    counts = torch.zeros(B, N - j + 1, M * S, dtype=torch.float32, device=tokens.device)
    counts[:, 1:].scatter_(2, pairs[..., None], 1.0)  # exact counts up to 2^24
    counts = torch.cumsum(counts, 1, out=counts).view(B, -1, M, S)  # [:, m]: first m targets
    # predictions at i = max(j-1, 0)..N-1: context win[:, i-j+1], counts of targets t <= i
    first = 1 if j == 0 else 0
    seen = counts[:, first:].gather(2, win[:, first:, None, None].expand(-1, -1, 1, S))[:, :, 0]
    seen = seen.to(torch.float64)
    out[:, max(j - 1, 0) :] = (seen + pseudocount) / (seen.sum(-1, keepdim=True) + S * pseudocount)
    return out


def transition_counts(
    tokens: Int[Tensor, "batch pos"], n_states: int, order: int
) -> Float[Tensor, "*ctx S"]:
    """Counts of (last k tokens, next token) over all sequences, float64 [S]*k + [S]."""
    check_tokens(tokens, n_states)
    order = check_int("order", order, 0)
    S, k = n_states, order
    if tokens.shape[1] <= k:
        return torch.zeros([S] * (k + 1), dtype=torch.float64, device=tokens.device)
    grams = tuple_index(tokens.unfold(1, k + 1, 1), S)  # (k+1)-tuple = context * S + next
    counts = torch.bincount(grams.flatten(), minlength=S ** (k + 1))
    return counts.to(torch.float64).reshape([S] * (k + 1))
