"""Exact reference losses of Markov sources, in nats (float64 internally).

A model trained by next-token prediction on a fixed chain should reach the entropy rate
(the "bigram" global minimum); the unigram local minimum predicts the stationary marginal
and pays H(pi). For a binary chain with p = P(1|0), q = P(0|1) (docs/theory.md section 2):

    pi = (q, p) / (p + q),   entropy rate = (q h(p) + p h(q)) / (p + q),   unigram = h(pi_1).

In-context chains have no single kernel; ``in_context_losses`` estimates the losses of the
uniform, in-context unigram/bigram, Bayes and oracle predictors by Monte Carlo, and
``in_context_references`` names the four an in-context run is judged against.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.chains import (
    BinaryChain,
    InContextChain,
    MarkovChain,
    add_pseudocount_probs,
    check_int,
    check_positive,
    stationary_law,
)
from training.seeds import check_seed

# --------------------------------------------------------------------------------- helpers


def entropy(probs: Float[Tensor, "... S"]) -> Float[Tensor, "..."]:
    """Shannon entropy -sum p log p over the last dim, nats (0 log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def kl_divergence(
    pred: Float[Tensor, "... S"], true: Float[Tensor, "... S"]
) -> Float[Tensor, "..."]:
    """KL(true || pred) = sum true (log true - log pred) over the last dim, nats.

    The excess cross-entropy of predicting ``pred`` when the law is ``true``. Zeros in
    ``true`` contribute 0; a zero in ``pred`` where ``true`` > 0 gives inf.
    """
    return (torch.special.xlogy(true, true) - torch.special.xlogy(true, pred)).sum(-1)


def cross_entropy_of(
    probs: Float[Tensor, "... S"], targets: Int[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """-log probs[..., target]: the loss of each prediction, nats."""
    return -probs.gather(-1, targets[..., None]).squeeze(-1).log()


def _fixed_kernel(chain: MarkovChain) -> Float[Tensor, "*ctx S"]:
    if isinstance(chain, InContextChain):
        raise ValueError(
            "an InContextChain has no fixed kernel (each sequence draws its own); "
            "use in_context_losses(chain) for its reference losses"
        )
    if not hasattr(chain, "kernel_tensor"):
        raise ValueError(f"expected a BinaryChain or KthOrderChain, got {type(chain).__name__}")
    return chain.kernel_tensor()


# ------------------------------------------------------------------------- fixed kernels


def stationary_distribution(chain: MarkovChain) -> Float[Tensor, "*ctx"]:
    """Stationary law of the chain lifted to k-tuples, shape [S]*k (oldest token first).

    Solves pi P = pi, sum pi = 1 for the lifted S^k x S^k matrix P. ValueError if the chain
    is reducible (more than one closed class of states: no unique stationary law).
    Transient states are fine (they get probability 0).
    Periodic chains are accepted: the law is unique and, by the ergodic theorem, the
    empirical -log-likelihood per token still converges to the entropy rate.
    """
    return stationary_law(_fixed_kernel(chain))


def stationary_marginal(chain: MarkovChain) -> Float[Tensor, " S"]:
    """Stationary law of a single token, shape [S] (pi; for a binary chain (q, p)/(p+q))."""
    pi = stationary_distribution(chain)
    return pi.reshape(-1, chain.n_states).sum(0)


def _ngram_entropy(chain: MarkovChain, m: int) -> float:
    """H(X_1..X_m) under stationarity for 0 <= m <= k+1, nats."""
    kernel = _fixed_kernel(chain)
    S = chain.n_states
    joint = (stationary_law(kernel)[..., None] * kernel).reshape(-1, S**m)  # (k+1)-gram law
    return float(entropy(joint.sum(0))) if m else 0.0


def order_j_loss(chain: MarkovChain, j: int) -> float:
    """Best cross-entropy using only the last j tokens, nats: H(X_{n+1} | X_{n-j+1..n}).

    = H((j+1)-gram) - H(j-gram) under the stationary law, 0 <= j <= k. j = 0 is the
    unigram loss H(pi), j = k the entropy rate. Non-increasing in j.
    """
    k = chain.order
    j = check_int("j", j, 0)
    if j > k:
        raise ValueError(f"j must be in 0..{k} (the chain's order), got {j}")
    return _ngram_entropy(chain, j + 1) - _ngram_entropy(chain, j)


def entropy_rate(chain: MarkovChain) -> float:
    """Entropy rate sum_z pi(z) H(K[z, :]), nats: the loss of the true kernel (global min)."""
    kernel = _fixed_kernel(chain)
    pi = stationary_law(kernel)
    return float((pi * entropy(kernel)).sum())


def unigram_loss(chain: MarkovChain) -> float:
    """H(pi), nats: the loss of predicting the stationary marginal whatever the context."""
    return float(entropy(stationary_marginal(chain)))


def reference_losses(chain: MarkovChain) -> dict:
    """All exact references of a fixed chain as a JSON-able dict (losses in nats)."""
    pi = stationary_distribution(chain)
    S, k = chain.n_states, chain.order
    out = {
        "family": chain.family,
        "n_states": S,
        "order": k,
        "units": "nats",
        "stationary": pi.reshape(-1, S).sum(0).tolist(),
        "entropy_rate": entropy_rate(chain),
        "unigram_loss": unigram_loss(chain),
        "order_losses": [order_j_loss(chain, j) for j in range(k + 1)],
    }
    if k > 1:
        out["stationary_k_tuples"] = pi.tolist()
    if isinstance(chain, BinaryChain):
        out |= {"pi_1": chain.p / (chain.p + chain.q), "p": chain.p, "q": chain.q}
    return out


# ------------------------------------------------------------------------- in-context


def in_context_losses(
    chain: InContextChain,
    length: int = 101,
    n_sequences: int = 20_000,
    seed: int = 0,
    beta: float = 1.0,
    chunk: int = 4096,
) -> dict:
    """Monte Carlo losses of in-context predictors, nats, as a JSON-able dict.

    Draws ``n_sequences`` sequences of ``length`` tokens (each with its own kernel, seeded
    generator) and scores the prediction of x_{n+1} from x_1..x_n for n = 1..length-1
    (``length - 1`` predictions per sequence; x_1 itself is never predicted). Predictors:
    "uniform" (1/S), "unigram" (add-beta in-context token counts), "bigram" (add-beta
    in-context order-k counts), "bayes" (Dirichlet posterior predictive, add-alpha order-k;
    equal to "bigram" when beta = alpha) and "oracle" (the sequence's true kernel).

    Each entry has per-position means and standard errors (``per_position``,
    ``per_position_se``; index 0 is n = 1) and ``mean``, ``se``: the mean over positions
    and its SE across sequences (sequences are independent, positions are not).
    ``order_losses`` [L_0..L_k]: mean losses of the add-alpha order-j estimators (alpha of the
    chain; L_0 the add-alpha unigram, L_k = "bayes"). ``add_alpha_is_bayes``: whether "bayes"
    is the exact posterior predictive (``InContextChain.add_alpha_is_bayes``; otherwise it is
    only the add-alpha estimator). Sequences are drawn one kernel each: every sequence has
    the same law whatever the chain's ``group_size``, and independent draws keep the SE right.

    The published numbers (docs/theory.md section 2; S = 2, 101 tokens: 0.693 / 0.577 /
    0.511 / 0.481; S = 3: 1.099 / 1.004 / 0.886 / 0.819) are reproduced within the error of 20k sequences with
    this position convention and ``InContextChain(init="stationary")``. With 1M sequences
    that convention gives unigram / bigram / oracle 0.5773 / 0.5106 / 0.4810 (S = 2) and
    1.0044 / 0.8860 / 0.8190 (S = 3), SE <= 0.0002; uniform first tokens (the default)
    give 0.5823 / 0.5113 / 0.4816 for S = 2.
    """
    if not isinstance(chain, InContextChain):
        raise ValueError(f"in_context_losses needs an InContextChain, got {type(chain).__name__}")
    length = check_int("length", length, 2)
    n_sequences = check_int("n_sequences", n_sequences, 2)
    beta = check_positive("beta", beta)
    chunk = check_int("chunk", chunk, 1)
    S, k = chain.n_states, chain.order
    names = ("uniform", "unigram", "bigram", "bayes", "oracle")
    gen = torch.Generator().manual_seed(check_seed(seed))
    total = {n: torch.zeros(length - 1, dtype=torch.float64) for n in names}
    total_sq = {n: torch.zeros(length - 1, dtype=torch.float64) for n in names}
    seq_means = {n: [] for n in names}
    order_sums = [0.0] * (k + 1)
    single = chain.per_sequence()  # the same law of each sequence, independent draws
    for start in range(0, n_sequences, chunk):
        batch = min(chunk, n_sequences - start)
        tokens, kernels = single.sample(batch, length, generator=gen, return_kernels=True)
        targets = tokens[:, 1:]
        bigram = add_pseudocount_probs(tokens, S, k, beta)
        probs = {
            "unigram": add_pseudocount_probs(tokens, S, 0, beta),
            "bigram": bigram,
            "bayes": bigram if beta == chain.alpha else chain.next_token_probs(tokens),
            "oracle": chain.next_token_probs(tokens, kernels),
        }
        losses = {n: cross_entropy_of(p[:, :-1], targets) for n, p in probs.items()}
        losses["uniform"] = torch.full(targets.shape, math.log(S), dtype=torch.float64)
        for n, loss in losses.items():
            total[n] += loss.sum(0)
            total_sq[n] += (loss**2).sum(0)
            seq_means[n].append(loss.mean(1))
        for j in range(k + 1):
            if j == k:
                loss = losses["bayes"]
            elif j == 0 and beta == chain.alpha:
                loss = losses["unigram"]
            else:
                p = add_pseudocount_probs(tokens, S, j, chain.alpha)
                loss = cross_entropy_of(p[:, :-1], targets)
            order_sums[j] += float(loss.sum())
    out = {
        "chain": chain.to_dict(),
        "length": length,
        "n_sequences": n_sequences,
        "seed": seed,
        "beta": beta,
        "units": "nats",
        "positions": f"predict x_(n+1) from x_1..x_n for n = 1..{length - 1}",
        "add_alpha_is_bayes": chain.add_alpha_is_bayes,
        "order_losses": [x / (n_sequences * (length - 1)) for x in order_sums],
    }
    N = n_sequences
    for n in names:
        mean = total[n] / N
        se = ((total_sq[n] / N - mean**2).clamp_min(0) / (N - 1)).sqrt()
        per_seq = torch.cat(seq_means[n])
        out[n] = {
            "mean": float(per_seq.mean()),
            "se": float(per_seq.std() / math.sqrt(N)),
            "per_position": mean.tolist(),
            "per_position_se": se.tolist(),
        }
    return out


IN_CONTEXT_REFERENCES = ("add_alpha", "in_context_unigram", "uniform", "oracle")


def in_context_references(
    chain: InContextChain, length: int, n_sequences: int = 20_000, seed: int = 0
) -> dict:
    """The four references of an in-context run, nats (Monte Carlo, ``in_context_losses`` with
    beta = alpha: means over the predictions of x_2..x_length), as a JSON-able dict.

    ``losses`` and ``se`` map IN_CONTEXT_REFERENCES to mean losses and their SEs: "add_alpha"
    (the add-alpha order-k estimator (c(ctx, s) + alpha) / (c(ctx) + S alpha) of the sequence's
    counts so far: the optimal predictor, Bayes under independent Dirichlet(alpha) rows and
    uniform first tokens), "in_context_unigram" (add-alpha token counts), "uniform" (ln S) and
    "oracle" (knows the sequence's kernel). ``labels`` names them; where the add-alpha
    predictor is not Bayes (doubly stochastic prior, init="stationary":
    ``add_alpha_is_bayes`` false) its label says "add-alpha", not "Bayes". ``order_losses``:
    the add-alpha order-j losses, j = 0..k.
    """
    ic = in_context_losses(
        chain, length=length, n_sequences=n_sequences, seed=seed, beta=chain.alpha
    )
    bayes = ic["add_alpha_is_bayes"]
    why = "doubly stochastic prior" if chain.doubly_stochastic else "stationary first tokens"
    keys = {
        "add_alpha": "bayes",
        "in_context_unigram": "unigram",
        "uniform": "uniform",
        "oracle": "oracle",
    }
    return {
        "losses": {name: ic[key]["mean"] for name, key in keys.items()},
        "se": {name: ic[key]["se"] for name, key in keys.items()},
        "labels": {
            "add_alpha": "optimal (add-alpha, Bayes)" if bayes else f"add-alpha (not Bayes: {why})",
            "in_context_unigram": "in-context unigram (add-alpha)",
            "uniform": "uniform",
            "oracle": "oracle (knows the kernel)",
        },
        "add_alpha_is_bayes": bayes,
        "order_losses": ic["order_losses"],
        "length": length,
        "n_sequences": n_sequences,
        "seed": seed,
        "units": "nats",
    }
