"""Chains from dicts: ``chain_from_dict`` inverts ``chain.to_dict()``, checking each family's
keys (``FAMILIES``) and, through the constructors, their values.
"""

from __future__ import annotations

from training.chains.families import BinaryChain, InContextChain, KthOrderChain, MarkovChain

FAMILIES = ("binary", "kth_order", "in_context")

_KEYS = {
    "binary": ({"p", "q"}, {"init"}),
    "kth_order": ({"kernel"}, {"init", "label"}),
    "in_context": (
        set(),
        {"states", "order", "alpha", "doubly_stochastic", "init", "group_size"},
    ),
}


def chain_from_dict(d: dict) -> MarkovChain:
    """Inverse of ``chain.to_dict()``; validates keys and values (ValueError if bad)."""
    if not isinstance(d, dict) or "family" not in d:
        raise ValueError(f"a chain dict needs a 'family' key, one of {FAMILIES}; got {d!r}")
    family = d["family"]
    if not isinstance(family, str) or family not in _KEYS:
        raise ValueError(f"unknown chain family {family!r}; expected one of {FAMILIES}")
    required, optional = _KEYS[family]
    args = {key: value for key, value in d.items() if key != "family"}
    missing, unknown = required - args.keys(), args.keys() - required - optional
    if missing:
        raise ValueError(f"{family} chain dict is missing {sorted(missing)}")
    if unknown:
        raise ValueError(
            f"unknown keys {sorted(unknown)} for a {family} chain; allowed: "
            f"{sorted(required | optional)}"
        )
    cls = {"binary": BinaryChain, "kth_order": KthOrderChain, "in_context": InContextChain}
    return cls[family](**args)
