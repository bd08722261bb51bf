"""Probe targets: what an activation at position n might encode, computed from the sequence,
the chain and (for the model's own output) the cached log-probabilities.

Positions are 0-based: the activation at position n has read tokens[:, :n+1]; x_n denotes
the current token tokens[:, n] and x_{n-K} the token K steps back, tokens[:, n-K].

discrete (logistic probes, accuracy, control tasks):
    x_n        the current token
    x_n-K      the token K steps back (K >= 1); defined for n >= K
continuous (ridge probes, R^2 against the training mean, shuffled baseline):
    position     n itself (what the positional embedding carries)
    next_prob    the true law of the next token given the history, chain.next_token_probs:
                 the kernel row for fixed chains (what a bigram solution must represent); for
                 in-context chains the oracle row of the sequence's own kernel
    marginal     fixed chains: the stationary marginal pi (constant: nothing to probe, R^2 is
                 undefined and reported as nan); in-context chains: the running empirical
                 frequency of each state among the tokens read (the in-context unigram)
    icl_unigram  add-beta running unigram estimate (N_n(s) + beta) / (n + 1 + S beta), N_n(s)
                 the count of s among the n + 1 tokens read
    icl_counts   in-context transition counts N_n(c -> s) for the current context c (the last
                 k = chain.order tokens) and every s: how often c was followed by s so far
    icl_bigram   add-beta in-context estimate (N_n(c -> s) + beta) / (N_n(c) + S beta); with
                 beta = alpha the Bayes predictive of an in-context chain
                 (training.chains.estimates)
    model_prob   the model's own next-token probabilities
    model_logit  the model's own log-probabilities, centred over the vocabulary (binary: the
                 logit difference log P(1) - log P(0))

Probability vectors over a binary vocabulary are reduced to their second entry, P(x = 1)
(the first is 1 minus it); over S > 2 states all S entries are targets. beta defaults to the
chain's alpha for in-context chains and 1 (Laplace) otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from training.chains import InContextChain, MarkovChain, add_pseudocount_probs
from training.references import stationary_marginal

CONTINUOUS = (
    "position",
    "next_prob",
    "marginal",
    "icl_unigram",
    "icl_counts",
    "icl_bigram",
    "model_prob",
    "model_logit",
)
MODEL_TARGETS = ("model_prob", "model_logit")


@dataclass
class Target:
    """A target at the probed positions.

    discrete: values Long[seq, n_pos], n_classes set. continuous: values Float[seq, n_pos, k].
    valid: Bool[seq, n_pos], where the target is defined (x_n-K needs n >= K).
    """

    name: str
    kind: str  # "discrete" | "continuous"
    values: Tensor
    valid: Bool[Tensor, "seq n_pos"]
    n_classes: int | None = None

    @property
    def constant(self) -> bool:
        """True when the target takes a single value on every valid sample."""
        v = self.values[self.valid]
        return bool(v.numel() == 0 or (v == v[:1]).all())


def check_target_name(name: str) -> str:
    """The name if it is a known target, else ValueError listing the allowed names."""
    if name == "x_n" or re.fullmatch(r"x_n-[1-9]\d*", name) or name in CONTINUOUS:
        return name
    raise ValueError(
        f"unknown target {name!r}; allowed: 'x_n', 'x_n-K' (K >= 1), {list(CONTINUOUS)}"
    )


def default_targets(chain: MarkovChain) -> list[str]:
    """Targets worth probing for this chain: tokens, the true next-token law, the in-context
    statistics for in-context chains, the model's own output."""
    names = ["x_n", "x_n-1", "x_n-2", "next_prob"]
    if isinstance(chain, InContextChain):
        names += ["marginal", "icl_counts", "icl_bigram"]
    return names + ["model_prob"]


def _prob_columns(p: Float[Tensor, "... S"]) -> Float[Tensor, "... k"]:
    return p[..., 1:] if p.shape[-1] == 2 else p


def transition_counts_so_far(
    tokens: Int[Tensor, "seq pos"], n_states: int, order: int
) -> Float[Tensor, "seq pos S"]:
    """N_n(c -> s): at every position n, how often the current context c (the last ``order``
    tokens, x_{n-k+1..n}) was followed by s among the transitions seen so far (targets at
    positions <= n). Zero while n < order - 1. Vectorised (one-hot cumulative sums)."""
    B, N = tokens.shape
    S, k = n_states, order
    out = torch.zeros(B, N, S, dtype=torch.float64, device=tokens.device)
    if N <= k - 1:
        return out
    powers = S ** torch.arange(k - 1, -1, -1, device=tokens.device)
    win = (tokens.unfold(1, k, 1) * powers).sum(-1)  # context ending at k-1+i, [B, N-k+1]
    if N > k:
        pairs = win[:, : N - k] * S + tokens[:, k:]  # (context, next) for targets k..N-1
        counts = torch.nn.functional.one_hot(pairs, S**k * S).to(torch.float64).cumsum(1)
    else:
        counts = torch.zeros(B, 0, S**k * S, dtype=torch.float64, device=tokens.device)
    counts = torch.cat([counts.new_zeros(B, 1, S**k * S), counts], dim=1).view(B, -1, S**k, S)
    # position i >= k-1 has seen targets up to i: counts row i-k+1 (row 0 = nothing seen)
    out[:, k - 1 :] = counts.gather(2, win[:, :, None, None].expand(-1, -1, 1, S))[:, :, 0]
    return out


def compute_target(
    name: str,
    tokens: Int[Tensor, "seq seq_len"],
    positions: Int[Tensor, " n_pos"],
    chain: MarkovChain,
    *,
    kernels: Tensor | None = None,
    log_probs: Float[Tensor, "seq n_pos d_vocab"] | None = None,
    pseudocount: float | None = None,
) -> Target:
    """The target ``name`` (see the module docstring) at ``positions`` of ``tokens``."""
    check_target_name(name)
    tokens = tokens.cpu()
    positions = torch.as_tensor(positions).long().cpu()
    B, n_pos = tokens.shape[0], positions.numel()
    S = chain.n_states
    all_valid = torch.ones(B, n_pos, dtype=torch.bool)
    if name == "x_n" or name.startswith("x_n-"):
        lag = 0 if name == "x_n" else int(name[4:])
        src = (positions - lag).clamp_min(0)
        valid = (positions >= lag)[None].expand(B, -1).clone()
        return Target(name, "discrete", tokens[:, src], valid, n_classes=S)
    if name == "position":
        values = positions.float()[None, :, None].expand(B, n_pos, 1).clone()
        return Target(name, "continuous", values, all_valid)
    beta = pseudocount
    if beta is None:
        beta = chain.alpha if isinstance(chain, InContextChain) else 1.0
    if name == "next_prob":
        probs = chain.next_token_probs(tokens, kernels)[:, positions]
        return Target(name, "continuous", _prob_columns(probs).float(), all_valid)
    if name == "marginal":
        if isinstance(chain, InContextChain):
            counts = torch.nn.functional.one_hot(tokens, S).to(torch.float64).cumsum(1)
            freq = counts / torch.arange(1, tokens.shape[1] + 1, dtype=torch.float64)[:, None]
            values = freq[:, positions]
        else:
            values = stationary_marginal(chain).expand(B, n_pos, S)
        return Target(name, "continuous", _prob_columns(values).float(), all_valid)
    if name == "icl_unigram":
        probs = add_pseudocount_probs(tokens, S, 0, beta)[:, positions]
        return Target(name, "continuous", _prob_columns(probs).float(), all_valid)
    if name == "icl_counts":
        counts = transition_counts_so_far(tokens, S, chain.order)[:, positions]
        valid = (positions >= chain.order - 1)[None].expand(B, -1).clone()
        return Target(name, "continuous", counts.float(), valid)
    if name == "icl_bigram":
        probs = add_pseudocount_probs(tokens, S, chain.order, beta)[:, positions]
        valid = (positions >= chain.order - 1)[None].expand(B, -1).clone()
        return Target(name, "continuous", _prob_columns(probs).float(), valid)
    # the model's own output
    if log_probs is None:
        raise ValueError(f"target {name!r} needs the model's log_probs (from cache_activations)")
    if log_probs.shape[:2] != (B, n_pos):
        raise ValueError(
            f"log_probs has shape {tuple(log_probs.shape)}, expected ({B}, {n_pos}, d_vocab)"
        )
    lp = log_probs.float().cpu()
    if name == "model_prob":
        return Target(name, "continuous", _prob_columns(lp.exp()), all_valid)
    centred = lp - lp.mean(-1, keepdim=True)
    values = centred[..., 1:] - centred[..., :1] if lp.shape[-1] == 2 else centred
    return Target(name, "continuous", values, all_valid)
