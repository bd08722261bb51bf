"""Seed statistics for claims about training runs: fractions with Wilson intervals, means with
bootstrap intervals, medians with quartiles, and the rule that calls a claim held, not held
or undecided.

A paper's claim about what training does ("tied, p + q > 1 ends at the unigram point") is
read as "it happens for most seeds": held when the whole 95% Wilson interval of the fraction
of seeds for which it happened lies above 1/2, not held when the whole interval lies below
1/2, undecided when the interval contains 1/2 (too few seeds to tell).

``exact_mcnemar(b, c)``: the two-sided exact McNemar test for paired outcomes (e.g. the same
seed in two arithmetics), from its discordant counts.

``finite(x)``: whether a value read from a record is a real number (not None, a bool, a
string, nan or inf).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
CLAIM_THRESHOLD = 0.5


def finite(x: Any) -> bool:
    """A real number, not nan or inf (None, booleans and strings are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial fraction k/n (95% by default); (0, 1) for n = 0.

    Unlike k/n +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at k = 0 or n,
    e.g. 0 of 10 gives [0, 0.278]."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact at the edges


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes: b pairs where only the first
    condition happened, c where only the second (concordant pairs do not count). Under the null
    each discordant pair falls either way with probability 1/2, so
    p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)]); 1 when there is no discordant pair.
    E.g. 0 against 6 gives 2/64 = 0.031."""
    if b < 0 or c < 0:
        raise ValueError(f"need discordant counts >= 0, got b={b}, c={c}")
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(
    values: Sequence[float], level: float = 0.95, n_boot: int = 4000, seed: int = 0
) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean of `values` and its percentile bootstrap interval over
    resamples of the values (seeded, so the same values give the same interval). None for no
    values; one value gives (v, v, v)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return mean, mean, mean
    rng = random.Random(seed)
    n = len(vals)
    means = sorted(statistics.fmean(rng.choices(vals, k=n)) for _ in range(n_boot))
    lo = means[int(math.floor((1 - level) / 2 * (n_boot - 1)))]
    hi = means[int(math.ceil((1 + level) / 2 * (n_boot - 1)))]
    return mean, lo, hi


def quartiles(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(lower quartile, median, upper quartile), None for no values."""
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0], vals[0], vals[0]
    q1, q2, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    return q1, q2, q3


def claim_status(k: int, n: int, threshold: float = CLAIM_THRESHOLD) -> str:
    """'held', 'not held' or 'undecided' (see the module docstring); 'no runs' for n = 0."""
    if n == 0:
        return "no runs"
    lo, hi = wilson_interval(k, n)
    if lo > threshold:
        return "held"
    if hi < threshold:
        return "not held"
    return "undecided"


def fmt_fraction(k: int, n: int) -> str:
    """'k/n [lo, hi]' with the Wilson 95% interval."""
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} [{lo:.2f}, {hi:.2f}]"


def fmt_interval(stat: tuple[float, float, float] | None, digits: int = 4) -> str:
    """'mean [lo, hi]' for bootstrap_interval's result, '' for None."""
    if stat is None:
        return ""
    m, lo, hi = stat
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
