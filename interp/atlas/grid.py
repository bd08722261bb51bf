"""The atlas's grids: chains x depth x attention window x tying x MLP, as sweep specs.

Chains (``CHAINS``): first-order binary p=0.5, q=0.8 (p + q > 1) and p=0.2, q=0.3 (p + q < 1);
the paper's lag-2 chain p=0.2, q=0.3 (x_{n+1} depends on x_{n-1} only); a full-history
order-2 binary kernel with rows drawn once from Dirichlet(1) with seed 0
(``KthOrderChain.random(2, 2, 1.0, seed=0)``, the first seed, not chosen: its order-0/1/2
losses are 0.686 / 0.542 / 0.405 nats, so both x_n and x_{n-1} matter).

Presets (``preset_spec``):
- "paper": depth {1, 2, 4} x window {full, 1, 2, 8, 32} x tied/untied x MLP on/off, 5 seeds;
  the paper's training settings: first-order chains d_model 8, 400 steps of 16 x 1024 (its
  tying experiment); order-2 chains d_model 32, 800 steps of 16 x 1024 (its second-order
  experiment). 1,200 runs: several sessions on a 2-core CPU (resumable).
- "session": the same grid and seeds, shortened to fit one session on a 2-core CPU: length 128
  and d_model 8 throughout, 400 steps (first-order) / 600 steps (order-2) of batch 16.
- "quick": depth {1, 2} x window {full, 1} x tied/untied x MLP on/off on the two binary
  first-order chains and the lag-2 chain, 2 seeds, length 64, 200 steps: minutes.
- "test": a handful of tiny runs for the test suite.

Window M: attention to positions n-M..n (M = 1: the current and the previous token); "full"
is ordinary causal attention. Every run of a preset evaluates on the same held-out batches
(eval_seed), so cells compare pair-wise.
"""

from __future__ import annotations

from typing import Any

from training.chains import KthOrderChain
from training.experiments.presets import EVAL_SEED

RANDOM_KERNEL_SEED = 0
PRESETS = ("paper", "session", "quick", "test")


def chains() -> dict[str, dict[str, Any]]:
    """Atlas chain name -> chain options (a sweep spec's chain section)."""
    random2 = KthOrderChain.random(2, 2, 1.0, seed=RANDOM_KERNEL_SEED).to_dict()
    random2["label"] = "order2-random-seed0"
    return {
        "p0.5-q0.8": {"p": 0.5, "q": 0.8},
        "p0.2-q0.3": {"p": 0.2, "q": 0.3},
        "lag2-p0.2-q0.3": {"p": 0.2, "q": 0.3, "order": 2},
        "order2-random-seed0": random2,
    }


def chain_name(options: dict[str, Any]) -> str:
    """A short name for a chain section: the atlas's own name where it is one of ``chains()``,
    else the options written out (p0.5-q0.8, lag3-p0.2-q0.3, states4-p0.1, in-context-...)."""
    for name, opts in chains().items():
        if opts == options:
            return name
    if "family" in options:
        return str(options.get("label") or options["family"])
    if options.get("in_context"):
        s, k = options.get("states", 2), options.get("order", 1)
        return f"in-context-s{s}-k{k}"
    parts = []
    if (options.get("order") or 1) > 1:
        parts.append(f"lag{options['order']}")
    if (options.get("states") or 2) > 2:
        parts.append(f"states{options['states']}")
    for key in ("p", "q"):
        if options.get(key) is not None:
            parts.append(f"{key}{options[key]:g}")
    return "-".join(parts) or "chain"


def _order(options: dict[str, Any]) -> int:
    if "family" in options:
        kernel = options.get("kernel")
        depth = 0
        while isinstance(kernel, list):
            depth, kernel = depth + 1, kernel[0]
        return max(depth - 1, 1)
    return int(options.get("order") or 1)


SETTINGS = {
    # (first-order train, model), (order-2 train, model)
    "paper": (
        ({"iters": 400, "seq_len": 1024, "batch": 16}, {"d_model": 8}),
        ({"iters": 800, "seq_len": 1024, "batch": 16}, {"d_model": 32}),
    ),
    "session": (
        ({"iters": 400, "seq_len": 128, "batch": 16}, {"d_model": 8}),
        ({"iters": 600, "seq_len": 128, "batch": 16}, {"d_model": 8}),
    ),
    "quick": (
        ({"iters": 200, "seq_len": 64, "batch": 16}, {"d_model": 8}),
        ({"iters": 200, "seq_len": 64, "batch": 16}, {"d_model": 8}),
    ),
    "test": (
        (
            {"iters": 30, "seq_len": 16, "batch": 8, "eval_every": 10, "eval_batches": 1},
            {"d_model": 8},
        ),
        (
            {"iters": 30, "seq_len": 16, "batch": 8, "eval_every": 10, "eval_batches": 1},
            {"d_model": 8},
        ),
    ),
}
GRIDS = {
    "paper": {
        "layers": [1, 2, 4],
        "window": [None, 1, 2, 8, 32],
        "tie": [True, False],
        "mlp": [True, False],
    },
    "session": {
        "layers": [1, 2, 4],
        "window": [None, 1, 2, 8, 32],
        "tie": [True, False],
        "mlp": [True, False],
    },
    "quick": {"layers": [1, 2], "window": [None, 1], "tie": [True, False], "mlp": [True, False]},
    "test": {"layers": [1, 2], "window": [None, 1], "tie": [False], "mlp": [True]},
}
CHAINS_OF = {
    "paper": ["p0.5-q0.8", "p0.2-q0.3", "lag2-p0.2-q0.3", "order2-random-seed0"],
    "session": ["p0.5-q0.8", "p0.2-q0.3", "lag2-p0.2-q0.3", "order2-random-seed0"],
    "quick": ["p0.5-q0.8", "p0.2-q0.3", "lag2-p0.2-q0.3"],
    "test": ["p0.5-q0.8", "lag2-p0.2-q0.3"],
}
DEFAULT_SEEDS = {"paper": 5, "session": 5, "quick": 2, "test": 1}


def preset_spec(preset: str, seeds: int | None = None) -> list[dict[str, Any]]:
    """The sweep spec (a list of grids, one per chain) of an atlas preset (module doc)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown atlas preset {preset!r}; allowed: {', '.join(PRESETS)}")
    seeds = DEFAULT_SEEDS[preset] if seeds is None else seeds
    table = chains()
    specs = []
    for name in CHAINS_OF[preset]:
        options = table[name]
        (train, model) = SETTINGS[preset][0 if _order(options) == 1 else 1]
        specs.append(
            {
                "chain": dict(options),
                "model": dict(model) | GRIDS[preset],
                "train": dict(train) | {"eval_seed": EVAL_SEED},
                "seeds": seeds,
            }
        )
    return specs
