"""In-context chains (issue 22): kernels shared by groups of sequences, the add-alpha (Bayes)
reference against independent oracles, and the train / sweep / reproduce wiring."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from markov_lens.cli import main
from training.chains import InContextChain, add_pseudocount_probs, chain_from_dict
from training.experiments import EXPERIMENTS, in_context_specs
from training.experiments.presets import EVAL_SEED
from training.options import build_chain
from training.references import IN_CONTEXT_REFERENCES, in_context_references
from training.sweeps import expand

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ kernels per group


def test_group_size_one_is_the_per_sequence_sampler():
    def draw(chain):
        gen = torch.Generator().manual_seed(5)
        return chain.sample(6, 30, generator=gen, return_kernels=True)

    for kw in ({}, {"states": 3, "order": 2, "doubly_stochastic": True}):
        t1, k1 = draw(InContextChain(**kw))
        t2, k2 = draw(InContextChain(**kw, group_size=1))
        assert torch.equal(t1, t2) and torch.equal(k1, k2)
    assert "group_size" not in InContextChain().to_dict()  # old run configs read the same


@pytest.mark.parametrize(
    "kw", [{}, {"states": 3, "order": 2}, {"states": 3, "doubly_stochastic": True}]
)
def test_sequences_of_a_group_share_one_kernel(kw):
    gen = torch.Generator().manual_seed(0)
    chain = InContextChain(**kw, group_size=4)
    _, kernels = chain.sample(10, 20, generator=gen, return_kernels=True)
    flat = kernels.flatten(1)
    for group in ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9)):  # the last group is shorter
        assert all(torch.equal(flat[group[0]], flat[i]) for i in group)
    heads = flat[[0, 4, 8]]
    assert all(not torch.equal(heads[a], heads[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    whole = InContextChain(**kw, group_size=None)
    _, kernels = whole.sample(7, 20, generator=gen, return_kernels=True)
    assert bool((kernels == kernels[:1]).all())
    assert chain_from_dict(json.loads(json.dumps(whole.to_dict()))) == whole


def _homogeneity(tokens: torch.Tensor) -> float:
    """Chi-square / df of "these binary sequences switch state at the same rates": per state
    a, sum_i (k_i - n_i r)^2 / (n_i r (1 - r)), k_i switches out of a in n_i visits of
    sequence i, r the pooled rate. About 1 for one kernel; far above for several."""
    prev, nxt = tokens[:, :-1], tokens[:, 1:]
    chi2 = df = 0.0
    for a in (0, 1):
        n = (prev == a).sum(1).double()
        k = ((prev == a) & (nxt != a)).sum(1).double()
        r = k.sum() / n.sum()
        keep = n > 0
        if not 0 < r < 1 or keep.sum() < 2:
            continue
        chi2 += float(((k - n * r) ** 2 / (n * r * (1 - r)))[keep].sum())
        df += int(keep.sum()) - 1
    return chi2 / df


@pytest.mark.parametrize("group", [4, None])
def test_transition_frequencies_agree_within_a_group_and_differ_between(group):
    """Statistics of the tokens only: within a group the sequences switch state at rates that
    differ by binomial noise (chi-square / df near 1), between groups by the prior's spread."""
    gen = torch.Generator().manual_seed(1)
    chain = InContextChain(2, 1, group_size=group)
    within, across = [], []
    for _ in range(12):
        tokens = chain.sample(8, 2000, generator=gen)
        within += [_homogeneity(tokens[:4]), _homogeneity(tokens[4:])]
        across.append(_homogeneity(tokens))
    assert max(within) < 3 and sum(within) / len(within) < 1.5
    if group == 4:  # two kernels in every batch
        assert min(across) > 5
    else:  # one kernel for the whole batch
        assert sum(across) / len(across) < 1.5
    singles = [_homogeneity(InContextChain(2, 1).sample(4, 2000, generator=gen)) for _ in range(6)]
    assert min(singles) > 5  # a kernel per sequence: four sequences are not alike


def test_references_do_not_depend_on_the_group_size():
    a = in_context_references(InContextChain(2, 1), length=30, n_sequences=500)
    b = in_context_references(InContextChain(2, 1, group_size=None), length=30, n_sequences=500)
    assert a["losses"] == b["losses"] and a["se"] == b["se"]


# ------------------------------------------------------------------ the Bayes predictor


def _log_marginal(tokens: torch.Tensor, S: int, k: int, alpha: float) -> torch.Tensor:
    """log P(x_1..x_n) under uniform first k tokens and independent Dirichlet(alpha) rows:
    -k log S + sum over contexts of log B(counts + alpha) - log B(alpha), by lgamma."""
    B, n = tokens.shape
    out = torch.full((B,), -min(k, n) * math.log(S), dtype=torch.float64)
    if n <= k:
        return out
    grams = tokens.unfold(1, k + 1, 1)  # [B, n-k, k+1]
    ctx = (grams[..., :k] * S ** torch.arange(k - 1, -1, -1)).sum(-1)
    counts = torch.zeros(B, S**k, S, dtype=torch.float64)
    counts.view(B, -1).scatter_add_(1, ctx * S + grams[..., k], torch.ones_like(ctx).double())
    a = torch.tensor(alpha, dtype=torch.float64)
    lb = torch.lgamma(counts + a).sum(-1) - torch.lgamma(counts.sum(-1) + S * a)
    lb0 = S * torch.lgamma(a) - torch.lgamma(S * a)
    return out + (lb - lb0).sum(-1)


@pytest.mark.parametrize("S,k,alpha,n", [(2, 1, 1.0, 7), (2, 2, 0.5, 7), (3, 1, 0.7, 5)])
def test_add_alpha_is_the_ratio_of_dirichlet_marginals_on_every_sequence(S, k, alpha, n):
    """Brute force over all S^n sequences: P(x_{i+1} = s | x_1..x_i) = P(x_1..x_i s) /
    P(x_1..x_i), each marginal a product of Dirichlet integrals (no counting recursion)."""
    seqs = torch.tensor(list(itertools.product(range(S), repeat=n)))
    fast = add_pseudocount_probs(seqs, S, k, alpha)[:, :-1]
    brute = torch.empty_like(fast)
    for i in range(n - 1):
        prefix = _log_marginal(seqs[:, : i + 1], S, k, alpha)
        for s in range(S):
            ext = torch.cat([seqs[:, : i + 1], torch.full((len(seqs), 1), s)], 1)
            brute[:, i, s] = (_log_marginal(ext, S, k, alpha) - prefix).exp()
    assert torch.allclose(fast, brute, atol=1e-12)
    assert (
        InContextChain(S, k, alpha)
        .next_token_probs(seqs)
        .allclose(add_pseudocount_probs(seqs, S, k, alpha))
    )


@pytest.mark.parametrize("k", [1, 2])
def test_add_alpha_reference_is_the_bayes_loss(k):
    """The Monte Carlo add-alpha reference against the exact Bayes loss: the expectation, over
    all 2^n sequences weighted by their marginal probability, of -log of the ratio of marginals."""
    n, alpha = 8, 1.0
    seqs = torch.tensor(list(itertools.product(range(2), repeat=n)))
    logp = _log_marginal(seqs, 2, k, alpha)
    assert abs(float(logp.exp().sum()) - 1) < 1e-12
    losses = torch.stack(
        [
            _log_marginal(seqs[:, :i], 2, k, alpha) - _log_marginal(seqs[:, : i + 1], 2, k, alpha)
            for i in range(1, n)
        ],
        1,
    )  # [2^n, n-1]: -log P(x_{i+1} | x_1..x_i), i = 1..n-1
    exact = float((logp.exp() * losses.mean(1)).sum())
    ref = in_context_references(InContextChain(2, k, alpha), length=n, n_sequences=40_000)
    assert ref["add_alpha_is_bayes"] and ref["labels"]["add_alpha"] == "optimal (add-alpha, Bayes)"
    assert abs(ref["losses"]["add_alpha"] - exact) < 4 * ref["se"]["add_alpha"]
    L = ref["losses"]
    assert L["oracle"] < L["add_alpha"] < min(L["in_context_unigram"], L["uniform"])
    assert set(L) == set(IN_CONTEXT_REFERENCES) and len(ref["order_losses"]) == k + 1


def _monte_carlo_posterior(chain: InContextChain, tokens: torch.Tensor, draws: int):
    """P(x_{i+1} | x_1..x_i) by importance over prior draws: sum_K L_i(K) K[ctx_i] / sum_K
    L_i(K), L_i(K) the likelihood of the transitions seen up to x_{i+1}. [B, n-1, S]."""
    S, k = chain.n_states, chain.order
    K = chain.sample_kernels(draws, generator=torch.Generator().manual_seed(2))
    K = K.reshape(draws, S**k, S)
    B, n = tokens.shape
    ctx = (tokens.unfold(1, k, 1) * S ** torch.arange(k - 1, -1, -1)).sum(-1)  # [B, n-k+1]
    out = torch.full((B, n - 1, S), 1.0 / S, dtype=torch.float64)
    for b in range(B):
        step = K[:, ctx[b, :-1], tokens[b, k:]].log()  # [draws, n-k]: each transition
        loglik = torch.cat([torch.zeros(draws, 1, dtype=torch.float64), step.cumsum(1)], 1)
        w = (loglik - loglik.max(0).values).exp()  # [draws, n-k+1]: before target k, k+1, ...
        rows = K[:, ctx[b, : n - k]]  # [draws, n-k, S]: the row each prediction reads
        w = w[:, : n - k]
        out[b, k - 1 :] = (w[..., None] * rows).sum(0) / w.sum(0)[:, None]
    return out


@pytest.mark.parametrize("S,k,alpha", [(2, 1, 1.0), (2, 2, 1.0), (3, 1, 0.5)])
def test_add_alpha_matches_a_monte_carlo_of_the_bayes_predictor(S, k, alpha):
    chain = InContextChain(S, k, alpha)
    tokens = chain.sample(3, 9, generator=torch.Generator().manual_seed(S + k))
    mc = _monte_carlo_posterior(chain, tokens, 200_000)
    assert (mc - chain.next_token_probs(tokens)[:, :-1]).abs().max() < 0.02


def test_doubly_stochastic_add_alpha_is_labelled_not_bayes():
    """Binary doubly stochastic kernels share one stay probability (Uniform(0, 1)): after six
    stays and one switch out of state 0, the posterior says "stay" in state 1 with
    probability 7/9 (Beta(7, 2) mean); add-alpha has seen nothing from state 1 and says 1/2."""
    chain = InContextChain(2, 1, doubly_stochastic=True)
    tokens = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1, 0]])  # index 7 predicts x_9 after x_8 = 1
    mc = _monte_carlo_posterior(chain, tokens, 200_000)
    add = chain.next_token_probs(tokens)[:, :-1]
    assert float(add[0, 7, 1]) == pytest.approx(0.5)
    assert float(mc[0, 7, 1]) == pytest.approx(7 / 9, abs=0.02)
    assert not chain.add_alpha_is_bayes
    ref = in_context_references(chain, length=12, n_sequences=200)
    assert ref["labels"]["add_alpha"] == "add-alpha (not Bayes: doubly stochastic prior)"
    assert not in_context_references(InContextChain(init="stationary"), 12, 200)[
        "add_alpha_is_bayes"
    ]


# ------------------------------------------------------------------ options, CLI, sweeps


def test_chain_options_group_size():
    assert build_chain({"in_context": True, "group_size": "batch"}).group_size is None
    assert build_chain({"in_context": True, "order": 3, "group_size": 4}).group_size == 4
    for bad in (0, "x", True, 1.5):
        with pytest.raises(ValueError, match="group_size must be an integer >= 1"):
            build_chain({"in_context": True, "group_size": bad})
    with pytest.raises(ValueError, match="'group_size' needs in_context"):
        build_chain({"p": 0.5, "q": 0.8, "group_size": 2})
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        InContextChain(group_size=0)


def test_sweep_spec_with_a_group_size_axis(tmp_path):
    spec = {"chain": {"in_context": True, "group_size": [1, "batch"]}, "seeds": 1}
    tasks = expand(spec, tmp_path)
    assert [t.axes for t in tasks] == [{"group_size": 1}, {"group_size": "batch"}]


TINY = ["--seq-len", "64", "--batch", "4", "--iters", "6", "--eval-every", "3"]
TINY += ["--eval-batches", "1", "--no-progress", "--d-model", "8"]


def test_cli_trains_in_context_with_group_size_and_order(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--in-context", "--order", "2", "--alpha", "0.5", "--group-size", "batch"]
    assert main(argv + ["--layers", "2", "--out", str(out), "--json"] + TINY) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chain"]["group_size"] is None and summary["chain"]["order"] == 2
    refs = summary["references"]
    assert refs["optimal_label"] == "optimal (add-alpha, Bayes)"
    assert refs["optimal_loss"] == refs["in_context_references"]["add_alpha"]
    assert len(refs["order_losses"]) == 3 and "order_label" in summary
    excess = summary["final_excess"]
    assert set(excess) == set(IN_CONTEXT_REFERENCES)
    for name, value in excess.items():
        loss = refs["in_context_references"][name]
        assert value == pytest.approx(summary["final_eval_loss"] - loss)
    config = json.loads((out / "config.json").read_text())
    assert config["chain"]["group_size"] is None


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--in-context", "--group-size", "0"], "got '0'"),
        (["--in-context", "--group-size", "all"], "or 'batch'"),
        (["--p", "0.5", "--q", "0.8", "--group-size", "2"], "'group_size' needs in_context"),
    ],
)
def test_cli_bad_group_size_is_one_line(tmp_path, capsys, argv, words):
    try:  # argparse's own errors exit, ours return: both one line, code 2
        code = main(["train", *argv, "--out", str(tmp_path / "r")] + TINY)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ the reproduction


def test_in_context_presets(tmp_path):
    assert "in-context" in EXPERIMENTS
    full = in_context_specs("full", 5)
    for spec in full:
        assert spec["train"] | {"eval_seed": EVAL_SEED} == spec["train"]
        assert spec["train"]["seq_len"] == 512 and spec["train"]["iters"] == 8000
        assert spec["train"]["lr"] == 0.01 and spec["model"]["d_model"] == 32
    depth = [s for s in full if s["chain"].get("group_size") == "batch"]
    assert depth and depth[0]["model"]["layers"] == [1, 2, 3, 4]
    quick = expand(in_context_specs("quick", 5), tmp_path / "q")
    assert len({t.seed for t in quick}) == 5
    cells = {t.cell for t in quick}
    assert len(quick) == 5 * len(cells)
    stages = [t for t in quick if t.options["model"].get("mlp") is False]
    assert {t.options["chain"].get("doubly_stochastic", False) for t in stages} == {False, True}
    orders = {
        (t.options["chain"]["order"], t.options["model"]["layers"])
        for t in quick
        if t.options["chain"].get("group_size") is None and t.options["model"].get("mlp") is None
    }
    assert orders == {(k, L) for k in (1, 2, 3) for L in (2, 3)}
