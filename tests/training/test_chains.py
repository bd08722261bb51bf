"""Markov sources: validation, sampling (exactness, determinism, statistics), next-token laws."""

import json
import math

import pytest
import torch

from training.chains import (
    BinaryChain,
    InContextChain,
    KthOrderChain,
    add_pseudocount_probs,
    chain_from_dict,
    sample_reference_loop,
    stationary_law,
    transition_counts,
)

P_MIN = 1e-4  # reject a chi-square test only at p < 1e-4 (seeds are fixed)


def chi2_sf(stat: float, dof: int) -> float:
    """P(chi2_dof >= stat): the regularised upper incomplete gamma Q(dof/2, stat/2)."""
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


def chi2_rows(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson statistic of count rows [R, S] against probability rows [R, S] (rows with data).

    Each row is a multinomial given its total; cells with probability 0 must be empty.
    """
    counts, probs = counts.reshape(-1, counts.shape[-1]), probs.reshape(-1, probs.shape[-1])
    assert (counts[probs == 0] == 0).all(), "a zero-probability transition was sampled"
    stat, dof = 0.0, 0
    for row, p in zip(counts, probs, strict=True):
        n = row.sum()
        if n == 0:
            continue
        live = p > 0
        expected = n * p[live]
        stat += float(((row[live] - expected) ** 2 / expected).sum())
        dof += int(live.sum()) - 1
    return stat, dof


def assert_rows_match(counts, probs):
    stat, dof = chi2_rows(counts, probs)
    assert dof > 0
    assert chi2_sf(stat, dof) > P_MIN, f"chi2 = {stat:.1f} on {dof} dof"


def chains():
    return [
        BinaryChain(0.5, 0.8),
        BinaryChain(0.2, 0.3, init="uniform"),
        KthOrderChain.lag(2, 0.2, 0.3),
        KthOrderChain.lag(3, 0.6, 0.9, init="uniform"),
        KthOrderChain.symmetric(5, 0.1),
        KthOrderChain.random(3, 2, seed=0),
        InContextChain(),
        InContextChain(3, 2, alpha=0.5),
        InContextChain(3, 1, doubly_stochastic=True),
        InContextChain(2, 1, init="stationary"),
    ]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: BinaryChain(-0.1, 0.5), r"p must be a probability in \[0, 1\], got -0.1"),
        (lambda: BinaryChain(0.5, 1.2), r"q must be a probability in \[0, 1\], got 1.2"),
        (lambda: BinaryChain(float("nan"), 0.5), "p must be a probability"),
        (lambda: BinaryChain("0.5", 0.5), "p must be a probability"),
        (lambda: BinaryChain(0.0, 0.0), r"p \+ q must be > 0"),
        (lambda: BinaryChain(0.5, 0.5, init="first"), r"init must be one of .*'first'"),
        (lambda: KthOrderChain([[0.5, 0.6], [0.5, 0.5]]), r"kernel row \[0\] sums to 1.1"),
        (lambda: KthOrderChain([[1.2, -0.2], [0.5, 0.5]]), r"kernel\[0, 0\] = 1.2"),
        (lambda: KthOrderChain([0.5, 0.5]), "order k >= 1"),
        (lambda: KthOrderChain([[1.0]]), "S >= 2"),
        (lambda: KthOrderChain(torch.ones(2, 3) / 3), r"every kernel dimension.*\(2, 3\)"),
        (lambda: KthOrderChain([[1.0, 0.0], [0.0]]), "kernel must be a numeric array"),
        (lambda: KthOrderChain(torch.eye(2), init="random"), "init must be one of"),
        (lambda: KthOrderChain.symmetric(1, 0.1), "states must be >= 2, got 1"),
        (lambda: KthOrderChain.symmetric(3, 1.5), "p must be a probability"),
        (lambda: KthOrderChain.symmetric(3, 0.1, order=0), "order must be >= 1, got 0"),
        (lambda: KthOrderChain.lag(0, 0.2, 0.3), "k must be >= 1"),
        (lambda: KthOrderChain.lag(2, 0.0, 0.0), r"p \+ q must be > 0"),
        (lambda: KthOrderChain.random(3, 1, alpha=0.0), "alpha must be a positive"),
        (lambda: KthOrderChain.random(3, 0), "order must be >= 1"),
        (lambda: InContextChain(states=1), "states must be >= 2"),
        (lambda: InContextChain(order=0), "order must be >= 1"),
        (lambda: InContextChain(alpha=-1.0), "alpha must be a positive"),
        (lambda: InContextChain(init="x"), "init must be one of"),
        (lambda: InContextChain(doubly_stochastic=1), "doubly_stochastic must be a bool"),
    ],
)
def test_validation_errors_name_the_bad_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_rows_within_tolerance_are_accepted_and_renormalised():
    chain = KthOrderChain([[0.5 + 5e-7, 0.5], [0.3, 0.7]])
    assert torch.allclose(
        chain.kernel.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-15, rtol=0
    )
    assert chain.kernel.dtype == torch.float64 and chain.n_states == 2 and chain.order == 1


def test_sample_rejects_bad_sizes(gen):
    with pytest.raises(ValueError, match="length must be >= 1"):
        BinaryChain(0.5, 0.8).sample(2, 0, generator=gen)
    with pytest.raises(ValueError, match="batch must be"):
        BinaryChain(0.5, 0.8).sample(1.5, 3, generator=gen)


# ------------------------------------------------------------------------------- interface


def test_interface_properties():
    assert (BinaryChain(0.5, 0.8).family, BinaryChain(0.5, 0.8).n_states) == ("binary", 2)
    lag = KthOrderChain.lag(3, 0.2, 0.3)
    assert (lag.family, lag.n_states, lag.order) == ("kth_order", 2, 3)
    assert lag.kernel_tensor().shape == (2, 2, 2, 2)
    ic = InContextChain(4, 2)
    assert (ic.family, ic.n_states, ic.order) == ("in_context", 4, 2)
    assert "p=0.5" in repr(BinaryChain(0.5, 0.8)) and "lag(k=3" in repr(lag)


def test_kernel_constructors():
    lag = KthOrderChain.lag(2, 0.2, 0.3).kernel_tensor()
    for a in range(2):
        for b in range(2):  # the row depends on the oldest token a only
            assert lag[a, b].tolist() == pytest.approx([[0.8, 0.2], [0.3, 0.7]][a])
    sym = KthOrderChain.symmetric(4, 0.3, order=2).kernel_tensor()
    assert sym[1, 2].tolist() == pytest.approx([0.1, 0.1, 0.7, 0.1])
    r1, r2 = KthOrderChain.random(3, 2, seed=7), KthOrderChain.random(3, 2, seed=7)
    assert r1 == r2 and r1 != KthOrderChain.random(3, 2, seed=8)
    assert torch.allclose(r1.kernel.sum(-1), torch.ones(3, 3, dtype=torch.float64))
    fb = KthOrderChain.from_binary(BinaryChain(0.5, 0.8, init="uniform"))
    assert torch.equal(fb.kernel, BinaryChain(0.5, 0.8).kernel_tensor()) and fb.init == "uniform"


@pytest.mark.parametrize("chain", chains(), ids=repr)
def test_dict_round_trip(chain):
    d = json.loads(json.dumps(chain.to_dict()))
    assert d["family"] == chain.family
    assert chain_from_dict(d) == chain


@pytest.mark.parametrize(
    "d, match",
    [
        ({"family": "hmm"}, "unknown chain family 'hmm'"),
        ({"p": 0.5}, "needs a 'family' key"),
        ({"family": "binary", "p": 0.5}, r"missing \['q'\]"),
        ({"family": "binary", "p": 0.5, "q": 0.5, "r": 1}, r"unknown keys \['r'\]"),
        ({"family": "binary", "p": 2.0, "q": 0.5}, "p must be a probability"),
        ({"family": "kth_order", "kernel": [[0.5, 0.6], [0.5, 0.5]]}, "sums to"),
    ],
)
def test_chain_from_dict_errors(d, match):
    with pytest.raises(ValueError, match=match):
        chain_from_dict(d)


# -------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("chain", chains(), ids=repr)
def test_seeded_sampling_is_deterministic_and_in_range(chain):
    a = chain.sample(8, 50, generator=torch.Generator().manual_seed(1))
    b = chain.sample(8, 50, generator=torch.Generator().manual_seed(1))
    c = chain.sample(8, 50, generator=torch.Generator().manual_seed(2))
    assert a.shape == (8, 50) and a.dtype == torch.long and a.device.type == "cpu"
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= a.min() and a.max() < chain.n_states


def test_default_generator_follows_torch_manual_seed():
    chain = KthOrderChain.random(3, 2)
    torch.manual_seed(3)
    a = chain.sample(4, 30)
    torch.manual_seed(3)
    assert torch.equal(a, chain.sample(4, 30, device="cpu"))


@pytest.mark.parametrize("chain", chains(), ids=repr)
@pytest.mark.parametrize("length", [1, 2, 3, 4, 37, 256])
def test_vectorised_sampler_equals_reference_loop(chain, length):
    fast = chain.sample(5, length, generator=torch.Generator().manual_seed(length))
    slow = sample_reference_loop(chain, 5, length, torch.Generator().manual_seed(length))
    assert torch.equal(fast, slow)


def test_large_state_space_is_scanned_in_chunks(monkeypatch, gen):
    import training.chains.sampling as sampling_module

    monkeypatch.setattr(sampling_module, "SCAN_BUDGET", 64)  # forces many scan chunks
    chain = KthOrderChain.random(4, 2, seed=3)
    fast = chain.sample(3, 100, generator=torch.Generator().manual_seed(0))
    slow = sample_reference_loop(chain, 3, 100, torch.Generator().manual_seed(0))
    assert torch.equal(fast, slow)


def test_return_kernels(gen):
    tokens, kernels = InContextChain(3, 2).sample(6, 20, generator=gen, return_kernels=True)
    assert tokens.shape == (6, 20) and kernels.shape == (6, 3, 3, 3)
    assert kernels.dtype == torch.float64 and not torch.equal(kernels[0], kernels[1])
    chain = KthOrderChain.lag(2, 0.2, 0.3)
    _, fixed = chain.sample(4, 10, generator=gen, return_kernels=True)
    assert fixed.shape == (4, 2, 2, 2) and torch.equal(fixed[3], chain.kernel_tensor())


@pytest.mark.parametrize(
    "chain",
    [
        BinaryChain(0.5, 0.8),
        BinaryChain(0.2, 0.3, init="uniform"),
        KthOrderChain.lag(2, 0.2, 0.3),
        KthOrderChain.symmetric(5, 0.1),
        KthOrderChain.random(3, 2, seed=0),
        KthOrderChain.random(2, 3, alpha=0.5, seed=1),
    ],
    ids=repr,
)
def test_transition_counts_chi_square(chain):
    tokens = chain.sample(64, 512, generator=torch.Generator().manual_seed(11))
    counts = transition_counts(tokens, chain.n_states, chain.order)
    assert counts.sum() == 64 * (512 - chain.order)
    assert_rows_match(counts, chain.kernel_tensor())


@pytest.mark.parametrize(
    "chain",
    [
        BinaryChain(0.5, 0.8),
        BinaryChain(0.5, 0.8, init="uniform"),
        KthOrderChain.lag(2, 0.2, 0.3),
        KthOrderChain.random(3, 2, seed=0),
        KthOrderChain.random(3, 2, seed=0, init="uniform"),
    ],
    ids=repr,
)
def test_law_of_the_first_k_tokens(chain):
    S, k = chain.n_states, chain.order
    tokens = chain.sample(20_000, k, generator=torch.Generator().manual_seed(5))
    counts = transition_counts(tokens, S, k - 1).reshape(1, -1)  # counts of k-tuples
    if chain.init == "uniform":
        law = torch.full((1, S**k), S**-k, dtype=torch.float64)
    else:
        law = stationary_law(chain.kernel_tensor()).reshape(1, -1)
    assert_rows_match(counts, law)


def test_stationary_init_stays_stationary():
    chain = BinaryChain(0.5, 0.8)
    tokens = chain.sample(20_000, 40, generator=torch.Generator().manual_seed(6))
    counts = torch.bincount(tokens[:, 39], minlength=2).to(torch.float64)[None]
    assert_rows_match(counts, torch.tensor([[0.8, 0.5]], dtype=torch.float64) / 1.3)


def test_in_context_transitions_follow_each_sequence_kernel():
    chain = InContextChain(3, 1)
    tokens, kernels = chain.sample(
        200, 300, generator=torch.Generator().manual_seed(2), return_kernels=True
    )
    onehot = torch.nn.functional.one_hot(tokens, 3).double()
    counts = torch.einsum("bta,btc->bac", onehot[:, :-1], onehot[:, 1:])
    assert_rows_match(counts, kernels)
    first = torch.bincount(tokens[:, 0], minlength=3).double()[None]
    assert_rows_match(first, torch.full((1, 3), 1 / 3, dtype=torch.float64))


def test_in_context_stationary_init_draws_from_each_kernel_stationary_law():
    chain = InContextChain(2, 1, init="stationary")
    tokens, kernels = chain.sample(
        20_000, 1, generator=torch.Generator().manual_seed(3), return_kernels=True
    )
    pi_1 = kernels[:, 0, 1] / (kernels[:, 0, 1] + kernels[:, 1, 0])
    # x_1 ~ Bernoulli(pi_1) given the kernel: mean and a binned chi-square
    assert abs(float(tokens[:, 0].double().mean() - pi_1.mean())) < 4 * 0.5 / math.sqrt(20_000)
    bins = (pi_1 * 5).long().clamp(max=4)
    ones = torch.zeros(5, dtype=torch.float64).index_add_(0, bins, tokens[:, 0].double())
    n = torch.bincount(bins, minlength=5).double()
    mean_p = torch.zeros(5, dtype=torch.float64).index_add_(0, bins, pi_1) / n
    assert_rows_match(torch.stack([n - ones, ones], 1), torch.stack([1 - mean_p, mean_p], 1))


def test_dirichlet_prior_means_and_doubly_stochastic_prior():
    gen = torch.Generator().manual_seed(0)
    kernels = InContextChain(3, 2).sample_kernels(4000, generator=gen)
    assert torch.allclose(kernels.sum(-1), torch.ones(4000, 3, 3, dtype=torch.float64))
    assert (kernels.mean(0) - 1 / 3).abs().max() < 0.02
    for k in (1, 2):
        chain = InContextChain(3, k, doubly_stochastic=True)
        kernels = chain.sample_kernels(500, generator=gen)
        ones = torch.ones(kernels.shape[:-1], dtype=torch.float64)
        assert torch.allclose(kernels.sum(-1), ones)  # rows
        assert torch.allclose(kernels.sum(1), ones)  # columns: sum over the oldest token
        assert (kernels.mean(0) - 1 / 3).abs().max() < 0.05  # rows still Dirichlet(1) marginally
        assert kernels.flatten(1).std(0).min() > 0.1  # not degenerate
        for kernel in kernels[:5]:
            assert torch.allclose(stationary_law(kernel), torch.full([3] * k, 3.0**-k).double())


# ------------------------------------------------------------------------ next-token laws


def test_next_token_probs_are_kernel_rows(gen):
    chain = KthOrderChain.random(3, 2, seed=4)
    tokens = chain.sample(4, 12, generator=gen)
    probs = chain.next_token_probs(tokens)
    kernel, pi2 = chain.kernel_tensor(), stationary_law(chain.kernel_tensor())
    assert probs.shape == (4, 12, 3) and probs.dtype == torch.float64
    for b in range(4):
        assert torch.allclose(probs[b, 0], pi2[tokens[b, 0]] / pi2[tokens[b, 0]].sum())
        for i in range(1, 12):
            assert torch.equal(probs[b, i], kernel[tokens[b, i - 1], tokens[b, i]])
    uniform = KthOrderChain.random(3, 2, seed=4, init="uniform")
    assert torch.allclose(uniform.next_token_probs(tokens)[:, 0], torch.tensor(1 / 3).double())


def test_next_token_probs_binary_and_bad_tokens():
    chain = BinaryChain(0.5, 0.8)
    probs = chain.next_token_probs(torch.tensor([[0, 1, 1]]))
    assert torch.allclose(probs[0], torch.tensor([[0.5, 0.5], [0.8, 0.2], [0.8, 0.2]]).double())
    with pytest.raises(ValueError, match="tokens must lie in 0..1"):
        chain.next_token_probs(torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="integer tensor"):
        chain.next_token_probs(torch.zeros(2, 3))


def test_in_context_oracle_probs_use_each_kernel(gen):
    chain = InContextChain(3, 1)
    tokens, kernels = chain.sample(5, 9, generator=gen, return_kernels=True)
    probs = chain.next_token_probs(tokens, kernels)
    expected = kernels[torch.arange(5)[:, None], tokens]
    assert torch.equal(probs, expected)


def test_posterior_predictive_hand_computed():
    chain = InContextChain(2, 1, alpha=0.5)
    probs = chain.next_token_probs(torch.tensor([[0, 0, 1, 0, 1, 1]]))
    # counts of (x_n -> x_n+1) seen so far for the current token, add-0.5 smoothed
    expected = [[0.5, 0.5], [0.75, 0.25], [0.5, 0.5], [0.5, 0.5], [0.75, 0.25], [0.5, 0.5]]
    assert torch.allclose(probs[0], torch.tensor(expected).double())
    unigram = add_pseudocount_probs(torch.tensor([[0, 0, 1]]), 2, 0, 1.0)
    expected = torch.tensor([[2 / 3, 1 / 3], [3 / 4, 1 / 4], [3 / 5, 2 / 5]]).double()
    assert torch.allclose(unigram[0], expected)


def brute_force_add_beta(tokens, S, j, beta):
    B, N = tokens.shape
    out = torch.full((B, N, S), 1.0 / S, dtype=torch.float64)
    for b in range(B):
        x = tokens[b].tolist()
        for i in range(N):
            if i + 1 < j:
                continue
            ctx = x[i - j + 1 : i + 1]
            counts = [0] * S
            for t in range(j, i + 1):  # targets seen so far with their context
                if x[t - j : t] == ctx:
                    counts[x[t]] += 1
            total = sum(counts)
            out[b, i] = torch.tensor([(c + beta) / (total + S * beta) for c in counts])
    return out


@pytest.mark.parametrize("S, j", [(2, 0), (2, 1), (3, 1), (3, 2), (2, 3)])
def test_add_beta_estimator_matches_brute_force(S, j, gen):
    tokens = torch.randint(0, S, (3, 17), generator=gen)
    fast = add_pseudocount_probs(tokens, S, j, 0.7)
    assert torch.allclose(fast, brute_force_add_beta(tokens, S, j, 0.7))
    if j:
        assert torch.allclose(InContextChain(S, j, alpha=0.7).next_token_probs(tokens), fast)


def test_benchmark_sampler_smoke():
    from benchmarks.sampler import benchmark_sampler, format_rows

    threads = torch.get_num_threads()
    rows = benchmark_sampler(batch=2, length=32, repeats=1)
    assert torch.get_num_threads() == threads  # restored
    assert [r["name"] for r in rows] == ["binary", "order-2"]
    assert all(r["speedup"] == r["loop_s"] / r["vectorised_s"] > 0 for r in rows)
    lines = format_rows(rows).splitlines()
    assert lines[0].startswith("sampler (binary, B=2, N=32): vectorised vs loop: ")
    assert lines[0].endswith("x")
