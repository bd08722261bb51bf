"""Probe fitting on synthetic data: ridge with a cross-validated penalty, logistic regression,
R^2 conventions and splits by sequence."""

import math

import pytest
import torch

from probes.fitting import (
    DEFAULT_ALPHAS,
    Split,
    fit_logistic,
    fit_logistic_cv,
    fit_ridge,
    kfold_by_sequence,
    r2_score,
    rows_of,
    score_probe,
    split_by_sequence,
)
from probes.targets import Target

CPU = "cpu"


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _linear_data(gen, n, d, noise, scale=1.0):
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, generator=gen, dtype=torch.float64) * scale
    y = X @ w + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    return X, y, w


# ----------------------------------------------------------------------------------- splits


def test_split_by_sequence_is_a_disjoint_cover(gen):
    split = split_by_sequence(40, 0.25, gen)
    train, test = set(split.train.tolist()), set(split.test.tolist())
    assert not train & test
    assert train | test == set(range(40))
    assert len(test) == 10


def test_kfold_blocks_are_disjoint_and_cover(gen):
    splits = kfold_by_sequence(23, 5, gen)
    tests = [set(s.test.tolist()) for s in splits]
    assert set().union(*tests) == set(range(23))
    assert sum(len(t) for t in tests) == 23
    assert max(map(len, tests)) - min(map(len, tests)) <= 1
    for s in splits:
        assert not set(s.train.tolist()) & set(s.test.tolist())


def test_rows_of_keeps_whole_sequences_and_valid_positions():
    valid = torch.ones(6, 5, dtype=torch.bool)
    valid[:, 0] = False
    seqs, pos = rows_of(torch.tensor([1, 4]), valid)
    assert set(seqs.tolist()) == {1, 4}
    assert (pos > 0).all() and seqs.numel() == 8


def test_splitting_by_sequence_prevents_leakage(gen):
    """Each sequence has its own random code (same at every position) and a random label.
    Nothing generalises across sequences, so a held-out *sequence* is at chance, while a
    split by position (each position its own 'sequence') lets the probe memorise."""
    n_seq, n_pos, d = 80, 8, 96
    codes = torch.randn(n_seq, 1, d, generator=gen).expand(n_seq, n_pos, d)
    X = codes + 0.05 * torch.randn(n_seq, n_pos, d, generator=gen)
    labels = torch.randint(0, 2, (n_seq, 1), generator=gen).expand(n_seq, n_pos)
    target = Target("label", "discrete", labels, torch.ones(n_seq, n_pos, dtype=torch.bool), 2)
    by_seq = score_probe(X, target, [split_by_sequence(n_seq, 0.25, gen)], device=CPU)
    flat = Target(
        "label",
        "discrete",
        labels.reshape(-1, 1),
        torch.ones(n_seq * n_pos, 1, dtype=torch.bool),
        2,
    )
    by_pos = score_probe(
        X.reshape(-1, 1, d), flat, [split_by_sequence(n_seq * n_pos, 0.25, gen)], device=CPU
    )
    assert by_seq.train_score > 0.95  # it memorises the training sequences
    assert by_seq.score < 0.7  # ... which says nothing about new sequences
    assert by_pos.score > 0.9  # the leak a position split would create


def test_bad_split_arguments():
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_sequence(10, 1.0)
    with pytest.raises(ValueError, match="empty train or test"):
        split_by_sequence(2, 0.1)
    with pytest.raises(ValueError, match="folds"):
        kfold_by_sequence(3, 5)


# -------------------------------------------------------------------------------------- R^2


def test_r2_is_zero_for_the_training_mean_and_nan_for_a_constant():
    y = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    ref = torch.tensor([2.5], dtype=torch.float64)
    assert r2_score(y, ref.expand(3, 1), ref) == 0.0
    assert r2_score(y, y, ref) == 1.0
    assert math.isnan(r2_score(torch.ones(4, 1), torch.ones(4, 1), torch.ones(1)))


# ------------------------------------------------------------------------------------ ridge


def test_ridge_recovers_weights_and_picks_a_small_penalty_when_data_are_clean(gen):
    X, y, w = _linear_data(gen, 2000, 10, noise=0.01)
    probe = fit_ridge(X, y, torch.arange(2000) // 20, generator=gen, device=CPU)
    assert probe.alpha <= 1e-3
    raw_w = probe.weight[:, 0] / probe.scaler.std  # back to unstandardised features
    torch.testing.assert_close(raw_w, w, atol=2e-3, rtol=0)


def test_ridge_picks_a_large_penalty_when_features_are_noise(gen):
    X = torch.randn(400, 30, generator=gen, dtype=torch.float64)
    y = torch.randn(400, generator=gen, dtype=torch.float64)
    probe = fit_ridge(X, y, torch.arange(400) // 4, generator=gen, device=CPU)
    assert probe.alpha >= 1.0
    Xt = torch.randn(400, 30, generator=gen, dtype=torch.float64)
    yt = torch.randn(400, 1, generator=gen, dtype=torch.float64)
    assert abs(r2_score(yt, probe.predict(Xt), y.mean()[None])) < 0.02


def test_ridge_cv_choice_matches_brute_force_and_beats_no_penalty(gen):
    """Few noisy samples in many dimensions: the CV choice is the brute-force argmin of the
    fold errors (solved one alpha and one fold at a time) and generalises better than the
    smallest penalty."""
    n, d = 120, 40
    X, y, w = _linear_data(gen, n, d, noise=3.0, scale=0.3)
    groups = torch.arange(n) // 3
    probe = fit_ridge(X, y, groups, folds=5, generator=torch.Generator().manual_seed(7), device=CPU)
    splits = kfold_by_sequence(40, 5, torch.Generator().manual_seed(7))
    Z = probe.scaler(X)
    errors = []
    for alpha in probe.alphas:
        sse = 0.0
        for s in splits:
            test = torch.isin(groups, s.test)
            Ztr, ytr = Z[~test], y[~test]
            zm, ym = Ztr.mean(0), ytr.mean()
            A = (Ztr - zm).T @ (Ztr - zm) + Ztr.shape[0] * alpha * torch.eye(d, dtype=Z.dtype)
            wa = torch.linalg.solve(A, (Ztr - zm).T @ (ytr - ym))
            sse += float((((Z[test] - zm) @ wa + ym - y[test]) ** 2).sum())
        errors.append(sse / n)
    torch.testing.assert_close(torch.tensor(probe.cv_mse), torch.tensor(errors), rtol=1e-6, atol=0)
    assert probe.alpha == probe.alphas[min(range(len(errors)), key=errors.__getitem__)]
    assert probe.alpha > min(DEFAULT_ALPHAS)
    Xt, yt = X.new_empty(0), None
    Xt = torch.randn(4000, d, generator=gen, dtype=torch.float64)
    yt = (Xt @ w + 3.0 * torch.randn(4000, generator=gen, dtype=torch.float64))[:, None]
    loose = fit_ridge(X, y, alphas=[min(DEFAULT_ALPHAS)], device=CPU)
    ref = y.mean()[None]
    assert r2_score(yt, probe.predict(Xt), ref) > r2_score(yt, loose.predict(Xt), ref) + 0.05


def test_ridge_rejects_bad_input():
    with pytest.raises(ValueError, match="alphas"):
        fit_ridge(torch.randn(10, 2), torch.randn(10), alphas=[-1.0], device=CPU)
    with pytest.raises(ValueError, match="equal n"):
        fit_ridge(torch.randn(10, 2), torch.randn(9), alphas=[1.0], device=CPU)


# --------------------------------------------------------------------------------- logistic


def test_logistic_recovers_a_known_linear_separator(gen):
    d = 8
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    w = w / w.norm()
    X = torch.randn(6000, d, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 2, d)
    y = (X @ w + 0.3 > 0).long()
    probe = fit_logistic(X[:4000], y[:4000], 2, device=CPU)
    acc = float((probe.predict(X[4000:]) == y[4000:]).double().mean())
    assert acc > 0.985
    direction = (probe.weight[:, 1] - probe.weight[:, 0]) / probe.scaler.std  # raw features
    cosine = float(direction @ w / direction.norm())
    assert cosine > 0.995
    # the offset: the boundary direction . x = -0.3 maps to logit 0
    offset = float(
        probe.bias[1]
        - probe.bias[0]
        - (probe.scaler.mean / probe.scaler.std) @ (probe.weight[:, 1] - probe.weight[:, 0])
    )
    assert offset / direction.norm() == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logistic_solution_is_the_penalised_optimum(gen, n_classes):
    """The gradient of the symmetric multinomial objective (autograd) vanishes at the fit,
    for the three-class Newton solver and the two-class one-logit form alike."""
    X = torch.randn(800, 5, generator=gen, dtype=torch.float64)
    W_true = torch.randn(5, n_classes, generator=gen, dtype=torch.float64)
    y = (X @ W_true + torch.randn(800, n_classes, generator=gen, dtype=torch.float64)).argmax(-1)
    l2 = 0.05
    probe = fit_logistic(X, y, n_classes, l2=l2, device=CPU)
    W = probe.weight.clone().requires_grad_(True)
    b = probe.bias.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(probe.scaler(X) @ W + b, y) + 0.5 * l2 * (W**2).sum()
    loss.backward()
    assert float(W.grad.abs().max()) < 1e-7 and float(b.grad.abs().max()) < 1e-7
    assert probe.train_loss == pytest.approx(loss.item(), abs=1e-10)


def test_logistic_cv_prefers_a_strong_penalty_on_noise(gen):
    X = torch.randn(600, 20, generator=gen)
    y = torch.randint(0, 2, (600,), generator=gen)
    probe, cv = fit_logistic_cv(X, y, 2, torch.arange(600) // 6, l2s=[1e-4, 1.0], device=CPU)
    assert probe.l2 == 1.0 and cv[1] < cv[0]


def test_logistic_rejects_bad_input():
    with pytest.raises(ValueError, match="l2 must be > 0"):
        fit_logistic(torch.randn(10, 2), torch.zeros(10, dtype=torch.long), 2, l2=0.0, device=CPU)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        fit_logistic(torch.randn(10, 2), torch.full((10,), 2), 2, device=CPU)


def test_score_probe_kfold_averages_and_checks_shapes(gen):
    X = torch.randn(20, 6, 3, generator=gen)
    y = (X[..., :1] * 2.0).double()
    target = Target("y", "continuous", y, torch.ones(20, 6, dtype=torch.bool))
    s = score_probe(X, target, kfold_by_sequence(20, 4, gen), device=CPU)
    assert s.score > 0.999 and s.n_test == 30
    with pytest.raises(ValueError, match="differ"):
        score_probe(X[:10], target, [Split(torch.arange(5), torch.arange(5, 10))], device=CPU)
