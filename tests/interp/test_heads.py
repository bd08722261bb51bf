"""Previous-token and statistical-induction head scores with their shuffled baselines."""

import pytest
import torch

from interp.heads import allowed_keys, head_scores, induction_mask, shuffled_match_rate


def uniform_pattern(n: int, window=None) -> torch.Tensor:
    allowed = allowed_keys(n, window).float()
    return allowed / allowed.sum(-1, keepdim=True)


def test_previous_token_head_scores_one():
    n, batch = 10, 3
    a = torch.zeros(n, n)
    a[0, 0] = 1
    a[torch.arange(1, n), torch.arange(n - 1)] = 1
    patterns = a.expand(1, batch, 1, n, n)
    tokens = torch.randint(0, 2, (batch, n), generator=torch.Generator().manual_seed(1))
    scores = head_scores(patterns, tokens, 2)
    assert scores.previous_token.item() == pytest.approx(1.0)
    expected_baseline = sum(1 / (i + 1) for i in range(1, n)) / (n - 1)
    assert scores.previous_token_baseline.item() == pytest.approx(expected_baseline)
    assert scores.previous_token_excess.item() == pytest.approx(1 - expected_baseline)


def test_uniform_attention_scores_at_its_baselines(gen):
    n = 16
    tokens = torch.randint(0, 3, (4, n), generator=gen)
    patterns = torch.stack([uniform_pattern(n), uniform_pattern(n, 3)])[:, None, None]
    patterns = patterns.expand(2, 4, 1, n, n)
    scores = head_scores(patterns, tokens, 3, windows=[None, 3])
    torch.testing.assert_close(scores.previous_token, scores.previous_token_baseline)
    window_baseline = sum(1 / min(i + 1, 4) for i in range(1, n)) / (n - 1)
    assert scores.previous_token_baseline[1, 0].item() == pytest.approx(window_baseline)
    # uniform attention: the induction score is the fraction of allowed keys that match
    match = induction_mask(tokens).float() * allowed_keys(n, None)
    frac = (match / allowed_keys(n, None).sum(-1, keepdim=True)).sum(-1)[:, 1:].mean()
    assert scores.induction[0, 0].item() == pytest.approx(frac.item(), rel=1e-5)


def test_an_induction_head_scores_one_and_beats_its_baseline(gen):
    n = 24
    tokens = torch.randint(0, 2, (6, n), generator=gen)
    match = induction_mask(tokens) & allowed_keys(n, None)
    # attend uniformly to the matching keys (or to position 0 when there are none)
    weights = match.float()
    weights[..., 0] += (match.sum(-1) == 0).float()
    patterns = (weights / weights.sum(-1, keepdim=True))[None, :, None]
    scores = head_scores(patterns, tokens, 2)
    has_match = match[:, 1:].any(-1).float().mean().item()
    assert scores.induction.item() == pytest.approx(has_match, rel=1e-6)
    assert 0.3 < scores.induction_baseline.item() < 0.6  # binary: about half match by chance
    assert scores.induction_excess.item() > 0.3


def test_shuffled_baseline_is_the_expectation_over_shuffles(gen):
    """The closed-form baseline equals the Monte Carlo mean of the score with the sequence's
    tokens shuffled (pattern held fixed)."""
    n, batch = 12, 4
    tokens = torch.randint(0, 3, (batch, n), generator=gen)
    scores = torch.randn(2, batch, 2, n, n, generator=gen) * 2
    patterns = scores.masked_fill(~allowed_keys(n, None), float("-inf")).softmax(-1)
    exact = head_scores(patterns, tokens, 3).induction_baseline
    draws = 4000
    perms = torch.rand(draws, batch, n, generator=gen).argsort(-1)
    shuffled = tokens[torch.arange(batch)[None, :, None], perms]  # [draws, batch, n]
    match = induction_mask(shuffled.reshape(-1, n)).reshape(draws, batch, n, n).float()
    mass = (patterns[:, None] * match[None, :, :, None]).sum(-1)[..., 1:]  # [L, draws, B, H, n-1]
    monte_carlo = mass.mean((1, 2, 4))
    torch.testing.assert_close(monte_carlo, exact, atol=4e-3, rtol=0)
    rate = shuffled_match_rate(tokens, 3)
    counts = torch.nn.functional.one_hot(tokens, 3).sum(1).float()
    torch.testing.assert_close(rate, (counts * (counts - 1)).sum(-1) / (n * (n - 1)))


def test_bad_inputs():
    patterns = uniform_pattern(5)[None, None, None].expand(1, 2, 1, 5, 5)
    with pytest.raises(ValueError, match="tokens of shape"):
        head_scores(patterns, torch.zeros(3, 5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="layer, batch, head"):
        head_scores(patterns[0], torch.zeros(2, 5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="windows"):
        head_scores(patterns, torch.zeros(2, 5, dtype=torch.long), 2, windows=[None, 2])
