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

In-context presets (the regime where the paper states its depth claim; ``in_context_spec``):
binary chains whose kernel is drawn per sequence (Dirichlet(1) rows, order 1 and full-history
order 2), depth {1, 2, 3, 4} x window {full, 1, 2, 8} x tied/untied x MLP on/off, 5 seeds: 640
runs, in four blocks run in this order (a sweep runs its blocks in order, so the depth
question at full attention finishes first): order 1 full attention, order 1 windows, order 2
full attention, order 2 windows. Every run keeps 4 checkpoints per octave (the stages and the
step each head forms).
- "in-context-paper": the authors' depth settings (length 512, d_model 32, AdamW lr 0.01,
  8,000 steps of batch 16): a GPU preset.
- "in-context": the CPU preset, **not** the paper's settings: length 128, batch 32, d_model
  32, constant lr 0.01, 3,000 steps (the recipe of the zoo's in-context pair at half the
  batch). Several sessions on a 2-core CPU (resumable; finished cells are committed as they
  come).
- "in-context-test": tiny, for the test suite.

Window M: attention to positions n-M..n (M = 1: the current and the previous token); "full"
is ordinary causal attention. Every run of a preset evaluates on the same held-out batches
(eval_seed), so cells compare pair-wise.
"""

from __future__ import annotations

from typing import Any

from training.chains import KthOrderChain
from training.experiments.presets import EVAL_SEED

RANDOM_KERNEL_SEED = 0
IN_CONTEXT_PRESETS = ("in-context-paper", "in-context", "in-context-test")
PRESETS = ("paper", "session", "quick", "test", *IN_CONTEXT_PRESETS)


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
DEFAULT_SEEDS = {
    "paper": 5,
    "session": 5,
    "quick": 2,
    "test": 1,
    "in-context-paper": 5,
    "in-context": 5,
    "in-context-test": 1,
}


IN_CONTEXT_SETTINGS = {  # train section, d_model
    "in-context-paper": ({"iters": 8000, "seq_len": 512, "batch": 16, "lr": 0.01}, 32),
    "in-context": (
        {"iters": 3000, "seq_len": 128, "batch": 32, "lr": 0.01, "schedule": "constant"},
        32,
    ),
    "in-context-test": (
        {"iters": 30, "seq_len": 16, "batch": 8, "eval_batches": 4, "lr": 0.01},
        8,
    ),
}
IN_CONTEXT_GRID = {"layers": [1, 2, 3, 4], "tie": [True, False], "mlp": [True, False]}
IN_CONTEXT_WINDOWS = ([None], [1, 2, 8])  # full attention first, then the windows
IN_CONTEXT_ORDERS = (1, 2)


def in_context_spec(preset: str, seeds: int = 5) -> list[dict[str, Any]]:
    """The sweep spec of an in-context atlas preset: four blocks, order 1 before order 2, full
    attention before the windows (module doc); "in-context-test" is depth {1, 2} x window
    {full, 1}, untied, with an MLP."""
    train, d_model = IN_CONTEXT_SETTINGS[preset]
    train = dict(train) | {"eval_seed": EVAL_SEED, "checkpoints_per_octave": 4}
    grid, windows = dict(IN_CONTEXT_GRID), IN_CONTEXT_WINDOWS
    if preset == "in-context-test":
        grid, windows = {"layers": [1, 2], "tie": [False], "mlp": [True]}, ([None, 1],)
        train["checkpoints_per_octave"] = 1
    else:
        train["eval_every"] = 50
    return [
        {
            "chain": {"in_context": True, "order": order},
            "model": {"d_model": d_model, "window": window} | grid,
            "train": dict(train),
            "seeds": seeds,
        }
        for order in IN_CONTEXT_ORDERS
        for window in windows
    ]


def preset_spec(preset: str, seeds: int | None = None) -> list[dict[str, Any]]:
    """The sweep spec (a list of grids, one per chain) of an atlas preset (module doc)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown atlas preset {preset!r}; allowed: {', '.join(PRESETS)}")
    seeds = DEFAULT_SEEDS[preset] if seeds is None else seeds
    if preset in IN_CONTEXT_PRESETS:
        return in_context_spec(preset, seeds)
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
