"""training.stats: Wilson intervals against published values, bootstrap intervals, quartiles
and the claim rule."""

from __future__ import annotations

import math

import pytest

from training.stats import (
    bootstrap_interval,
    claim_status,
    exact_mcnemar,
    fmt_fraction,
    quartiles,
    wilson_interval,
)


def test_wilson_interval_known_values():
    # Newcombe (1998), table I: 81/263 -> [0.2553, 0.3662]; 15/148 -> [0.0624, 0.1605]
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = wilson_interval(15, 148)
    assert lo == pytest.approx(0.0624, abs=1e-4) and hi == pytest.approx(0.1605, abs=1e-4)
    # the edges: 0/10 and 10/10 are not degenerate
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(3, 2)


def test_wilson_interval_covers_about_95_percent():
    """Exact binomial coverage at p = 0.3, n = 20 (sum over all k) is close to 0.95."""
    n, p = 20, 0.3
    cover = 0.0
    for k in range(n + 1):
        lo, hi = wilson_interval(k, n)
        if lo <= p <= hi:
            cover += math.comb(n, k) * p**k * (1 - p) ** (n - k)
    assert 0.93 < cover < 0.98


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    vals = [0.1, 0.4, 0.35, 0.2, 0.9, 0.3, 0.25]
    m, lo, hi = bootstrap_interval(vals)
    assert m == pytest.approx(sum(vals) / len(vals))
    assert lo < m < hi and min(vals) <= lo and hi <= max(vals)
    assert bootstrap_interval(vals) == (m, lo, hi)  # same seed, same interval
    assert bootstrap_interval([2.0]) == (2.0, 2.0, 2.0)
    assert bootstrap_interval([]) is None
    assert bootstrap_interval([1.0, float("nan"), None, 3.0])[0] == 2.0
    # constant values: a zero-width interval
    assert bootstrap_interval([0.5] * 5) == (0.5, 0.5, 0.5)


def test_quartiles():
    assert quartiles([1, 2, 3, 4, 5]) == (2, 3, 4)
    assert quartiles([7]) == (7, 7, 7)
    assert quartiles([]) is None


def test_claim_status_reads_the_interval():
    assert claim_status(10, 10) == "held"  # [0.72, 1]
    assert claim_status(0, 10) == "not held"  # [0, 0.28]
    assert claim_status(6, 10) == "undecided"  # [0.31, 0.83]
    assert claim_status(3, 3) == "undecided"  # [0.44, 1]: three seeds cannot tell
    assert claim_status(2, 3) == "undecided"
    assert claim_status(0, 0) == "no runs"
    assert fmt_fraction(0, 10) == "0/10 [0.00, 0.28]"


def test_exact_mcnemar_known_values():
    """Discordant pairs 0 vs 6: 2 / 2^6; symmetric; no discordant pair gives 1;
    1 vs 9 -> 2 * (C(10,0) + C(10,1)) / 2^10."""
    assert exact_mcnemar(0, 6) == pytest.approx(2 / 64)
    assert exact_mcnemar(6, 0) == exact_mcnemar(0, 6)
    assert exact_mcnemar(0, 0) == 1.0
    assert exact_mcnemar(3, 3) == 1.0
    assert exact_mcnemar(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    with pytest.raises(ValueError, match="b=-1"):
        exact_mcnemar(-1, 2)
