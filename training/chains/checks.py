"""Argument checks shared by the chain families, samplers and estimators.

Each check returns the value it accepts, normalised (int, float), or raises ValueError with
the argument's name: probabilities, integers with a minimum, positive numbers, the size of a
kernel [S]*k + [S] (at most MAX_KERNEL_ENTRIES entries), the initial law's name (INITS) and
token tensors.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

INITS = ("stationary", "uniform")
MAX_KERNEL_ENTRIES = 1 << 24  # S^(k+1): a kernel of 128 MiB (float64)


def check_prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}{what}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{what}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_size(states: int, order: int) -> None:
    """ValueError unless a kernel [S]*k + [S] has at most MAX_KERNEL_ENTRIES entries."""
    if order >= 24 or states ** (order + 1) > MAX_KERNEL_ENTRIES:  # S >= 2: 2^25 > the cap
        raise ValueError(
            f"states={states}, order={order}: the kernel would have S^(k+1) = "
            f"{states}^{order + 1} entries, more than the {MAX_KERNEL_ENTRIES} supported; use "
            "fewer states or a lower order"
        )


def check_init(init: Any) -> str:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def check_tokens(tokens: Tensor, n_states: int) -> None:
    if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(
            f"tokens must be an integer tensor [batch, pos], got {tuple(tokens.shape)} {tokens.dtype}"
        )
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= n_states):
        raise ValueError(f"tokens must lie in 0..{n_states - 1}")
