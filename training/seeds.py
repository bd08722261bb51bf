"""Seeds: the one range every seed in markov-lens lives in, and its check.

A seed is an integer in 0..2^63-1: it fits a signed 64-bit integer (JSON readers, numpy,
Ray) and torch.Generator.manual_seed accepts it. Runs derive their sub-seeds (data, eval,
init) from it with training.trainer.derive_seed.
"""

from __future__ import annotations

from typing import Any

MAX_SEED = 2**63 - 1


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` if it is an integer in 0..MAX_SEED, else ValueError naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in 0..2^63-1, got {seed!r}")
    return seed
