"""Exact references (nats) against docs/theory.md section 2, closed forms and Monte Carlo."""

import json
import math

import pytest
import torch

from training.chains import BinaryChain, InContextChain, KthOrderChain
from training.references import (
    cross_entropy_of,
    entropy_rate,
    in_context_losses,
    kl_divergence,
    order_j_loss,
    reference_losses,
    stationary_distribution,
    stationary_marginal,
    unigram_loss,
)


def h(p: float) -> float:
    return -sum(x * math.log(x) for x in (p, 1 - p) if x > 0)


# ------------------------------------------------------------------ docs/theory.md section 2


@pytest.mark.parametrize(
    "p, q, bigram, unigram",
    [(0.2, 0.3, 0.545, 0.673), (0.5, 0.8, 0.619, 0.666)],
)
def test_reference_binary_values(p, q, bigram, unigram):
    chain = BinaryChain(p, q)
    assert round(entropy_rate(chain), 3) == bigram
    assert round(unigram_loss(chain), 3) == unigram


def test_reference_pi_1_and_symmetric_chain():
    ref = reference_losses(BinaryChain(0.5, 0.8))
    assert round(ref["pi_1"], 3) == 0.385 and ref["stationary"][1] == pytest.approx(ref["pi_1"])
    sym = KthOrderChain.symmetric(5, 0.1)
    assert round(entropy_rate(sym), 3) == 0.464
    assert entropy_rate(sym) == pytest.approx(h(0.1) + 0.1 * math.log(4), abs=1e-12)
    assert stationary_marginal(sym).tolist() == pytest.approx([0.2] * 5)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("q", [0.1, 0.5, 0.8, 1.0])
def test_binary_closed_forms(p, q):
    chain = BinaryChain(p, q)
    assert stationary_marginal(chain).tolist() == pytest.approx([q / (p + q), p / (p + q)])
    assert entropy_rate(chain) == pytest.approx((q * h(p) + p * h(q)) / (p + q), abs=1e-12)
    assert unigram_loss(chain) == pytest.approx(h(p / (p + q)), abs=1e-12)
    as_kernel = KthOrderChain.from_binary(chain)
    assert entropy_rate(as_kernel) == pytest.approx(entropy_rate(chain), abs=1e-14)


def test_periodic_chain_is_fine():
    flip = BinaryChain(1.0, 1.0)  # period 2
    assert stationary_marginal(flip).tolist() == pytest.approx([0.5, 0.5])
    assert entropy_rate(flip) == pytest.approx(0.0, abs=1e-15)


def test_lag_chain_stationary_law_is_a_product():
    pi = stationary_distribution(KthOrderChain.lag(3, 0.2, 0.3))
    marginal = torch.tensor([0.6, 0.4], dtype=torch.float64)
    product = marginal[:, None, None] * marginal[None, :, None] * marginal[None, None, :]
    assert pi.shape == (2, 2, 2) and torch.allclose(pi, product)


@pytest.mark.parametrize(
    "kernel",
    [
        torch.eye(2),
        torch.block_diag(torch.full((2, 2), 0.5), torch.full((2, 2), 0.5)),
        KthOrderChain.symmetric(3, 0.0, order=2).kernel,
    ],
)
def test_reducible_chain_raises(kernel):
    chain = KthOrderChain(kernel, init="uniform")
    with pytest.raises(ValueError, match="reducible.*not unique"):
        stationary_distribution(chain)
    with pytest.raises(ValueError, match="reducible"):
        entropy_rate(chain)
    chain.sample(2, 5, generator=torch.Generator())  # uniform init needs no stationary law
    with pytest.raises(ValueError, match="reducible"):
        KthOrderChain(kernel).sample(2, 5, generator=torch.Generator())


def test_transient_states_still_have_a_unique_law():
    kernel = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.2, 0.8], [0.0, 0.6, 0.4]])  # 0 transient
    pi = stationary_distribution(KthOrderChain(kernel))
    assert pi.tolist() == pytest.approx([0.0, 6 / 14, 8 / 14])


def test_in_context_chain_has_no_fixed_references():
    with pytest.raises(ValueError, match="in_context_losses"):
        entropy_rate(InContextChain())


# ----------------------------------------------------------------------------- order j


@pytest.mark.parametrize(
    "chain",
    [
        BinaryChain(0.5, 0.8),
        KthOrderChain.lag(2, 0.2, 0.3),
        KthOrderChain.random(3, 2, seed=0),
        KthOrderChain.random(2, 4, alpha=0.5, seed=2),
        KthOrderChain.symmetric(4, 0.3, order=3),
    ],
    ids=repr,
)
def test_order_j_losses_decrease_to_the_entropy_rate(chain):
    losses = [order_j_loss(chain, j) for j in range(chain.order + 1)]
    assert losses[0] == pytest.approx(unigram_loss(chain), abs=1e-12)
    assert losses[-1] == pytest.approx(entropy_rate(chain), abs=1e-12)
    assert all(a >= b - 1e-12 for a, b in zip(losses, losses[1:], strict=False))
    with pytest.raises(ValueError, match=f"j must be in 0..{chain.order}"):
        order_j_loss(chain, chain.order + 1)


def test_lag_chain_order_j_losses_equal_unigram_below_k():
    chain = KthOrderChain.lag(3, 0.2, 0.3)
    for j in range(3):
        assert order_j_loss(chain, j) == pytest.approx(unigram_loss(chain), abs=1e-12)
    assert order_j_loss(chain, 3) == pytest.approx(entropy_rate(BinaryChain(0.2, 0.3)), abs=1e-12)


def test_reference_losses_is_json_able():
    ref = json.loads(json.dumps(reference_losses(KthOrderChain.lag(2, 0.2, 0.3))))
    assert ref["family"] == "kth_order" and ref["units"] == "nats"
    assert len(ref["order_losses"]) == 3 and len(ref["stationary"]) == 2
    assert ref["entropy_rate"] == pytest.approx(0.5445871749448701)
    binary = reference_losses(BinaryChain(0.2, 0.3))
    assert (binary["p"], binary["q"], binary["pi_1"]) == (0.2, 0.3, pytest.approx(0.4))


# --------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize(
    "chain",
    [BinaryChain(0.5, 0.8), KthOrderChain.lag(2, 0.2, 0.3), KthOrderChain.random(3, 2, seed=0)],
    ids=repr,
)
def test_sampled_log_likelihood_matches_entropy_rate(chain):
    tokens = chain.sample(256, 512, generator=torch.Generator().manual_seed(9))
    nll = cross_entropy_of(chain.next_token_probs(tokens)[:, :-1], tokens[:, 1:])
    per_sequence = nll[:, chain.order - 1 :].mean(1)  # predictions with a full context
    se = float(per_sequence.std()) / math.sqrt(len(per_sequence))
    assert abs(float(per_sequence.mean()) - entropy_rate(chain)) < 4 * se


def test_kl_divergence_and_cross_entropy():
    true = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    assert torch.equal(kl_divergence(true, true), torch.zeros(2, dtype=torch.float64))
    pred = torch.tensor([[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]], dtype=torch.float64)
    kl = kl_divergence(pred, true)
    manual = [
        math.log(0.5 / 0.4),
        sum(t * math.log(t / p) for t, p in zip([0.2, 0.3, 0.5], [0.3, 0.3, 0.4], strict=True)),
    ]
    assert (kl > 0).all() and kl.tolist() == pytest.approx(manual)
    assert math.isinf(kl_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])))
    ce = cross_entropy_of(pred, torch.tensor([0, 2]))
    assert ce.tolist() == pytest.approx([-math.log(0.4), -math.log(0.4)])


# docs/theory.md section 2: (uniform, add-1 unigram, add-1 bigram, oracle), 101 tokens
REFERENCE_IN_CONTEXT = {2: (0.693, 0.577, 0.511, 0.481), 3: (1.099, 1.004, 0.886, 0.819)}


@pytest.mark.parametrize("states", [2, 3])
def test_in_context_losses_match_reference(states):
    chain = InContextChain(states, init="stationary")
    res = in_context_losses(chain, length=101, n_sequences=20_000, seed=0)
    assert json.loads(json.dumps(res))["n_sequences"] == 20_000
    assert res["uniform"]["mean"] == pytest.approx(math.log(states))
    for name, ref in zip(
        ("unigram", "bigram", "oracle"), REFERENCE_IN_CONTEXT[states][1:], strict=True
    ):
        # 3 SE of our estimate plus the rounding of the quoted 3 decimals
        assert abs(res[name]["mean"] - ref) < 3 * res[name]["se"] + 5e-4, (name, res[name])
    assert res["bayes"]["per_position"] == res["bigram"]["per_position"]  # beta = alpha
    means = [res[n]["mean"] for n in ("uniform", "unigram", "bigram", "oracle")]
    assert means == sorted(means, reverse=True)
    assert len(res["oracle"]["per_position"]) == 100


def test_in_context_losses_higher_order_and_doubly_stochastic():
    res = in_context_losses(InContextChain(2, 2, alpha=0.5), length=40, n_sequences=2000)
    assert res["bayes"]["mean"] < res["bigram"]["mean"]  # add-0.5 is Bayes here, add-1 is not
    assert res["oracle"]["mean"] < res["bayes"]["mean"] < res["uniform"]["mean"]
    ds = in_context_losses(InContextChain(3, doubly_stochastic=True), length=30, n_sequences=2000)
    assert ds["oracle"]["mean"] < ds["bigram"]["mean"] < ds["uniform"]["mean"]
    with pytest.raises(ValueError, match="needs an InContextChain"):
        in_context_losses(BinaryChain(0.5, 0.8))
