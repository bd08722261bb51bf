"""The experiments' settings: the sweep specs of each experiment at each size, the default
seed counts, and the wall times measured at the paper's settings.

Sizes: "full" = the paper's settings (docs/theory.md section 3); "quick" = shorter sequences,
fewer seeds, minutes on a 2-core CPU; "test" = tiny (TINY), for the test suite.
"""

from __future__ import annotations

SIZES = ("full", "quick", "test")
# Every run of every preset (and of the atlas) is evaluated on the same held-out batches, drawn
# from this seed: cells and seeds are compared pair-wise on identical tokens, and the true
# predictor's loss is the same number in every row of a table.
EVAL_SEED = 20261203
TINY = {
    "iters": 24,
    "seq_len": 16,
    "batch": 4,
    "eval_every": 6,
    "eval_batches": 1,
    "checkpoints_per_octave": 0,
}

# Wall time at the paper's settings on this project's 2-core CPU (two worker processes, one
# torch thread each; other work shared the machine at times): docs/results/paper/*/RUN.md.
MEASURED = {
    "tying": "10 seeds per cell (40 runs): 4 min",
    "depth": "5 seeds per depth (20 runs): 4 min",
    "second-order": "5 seeds per cell (45 runs): 56 min",
    "phase-diagram": "10 seeds per cell (400 runs): 46 min",
}


def _train(size: str, full: dict, quick: dict) -> dict:
    base = {"full": full, "quick": quick, "test": TINY}[size]
    return dict(base) | {"eval_seed": EVAL_SEED}


def default_seeds(name: str, size: str) -> int:
    """Seeds per cell when none are given: the paper's 3 (full), 3 for a quick reproduction
    (2 for the 24-cell quick phase diagram), 1 at test size."""
    if size == "test":
        return 1
    return 2 if (name, size) == ("phase-diagram", "quick") else 3


def tying_specs(size: str, seeds: int) -> list[dict]:
    train = _train(
        size,
        {"iters": 400, "seq_len": 1024, "batch": 16},
        {"iters": 400, "seq_len": 256, "batch": 16},
    )
    model = {"layers": 1, "d_model": 8, "tie": [True, False]}
    return [
        {"chain": {"p": p, "q": q}, "model": model, "train": train, "seeds": seeds}
        for p, q in ((0.2, 0.3), (0.5, 0.8))
    ]


def depth_specs(size: str, seeds: int) -> list[dict]:
    train = _train(
        size,
        {"iters": 500, "seq_len": 512, "batch": 16},
        {"iters": 300, "seq_len": 128, "batch": 16},
    )
    layers = {"full": [1, 2, 4, 8], "quick": [1, 2, 4], "test": [1, 2]}[size]
    return [
        {
            "chain": {"p": 0.5, "q": 0.8},
            "model": {"layers": layers, "d_model": 8},
            "train": train,
            "seeds": seeds,
        }
    ]


def second_order_specs(size: str, seeds: int) -> list[dict]:
    train = _train(
        size,
        {"iters": 800, "seq_len": 1024, "batch": 16},
        {"iters": 400, "seq_len": 128, "batch": 16},
    )
    windows = {
        "full": [None, 2, 8, 32, 40, 80, 100],  # the paper's windows, and full attention
        "quick": [None, 2, 8, 32],
        "test": [None, 2],
    }[size]
    depths = {"full": [4, 8], "quick": [4], "test": [2]}[size]
    chain = {"p": 0.2, "q": 0.3, "order": 2}
    d = 32 if size != "test" else 8
    return [
        {
            "chain": chain,
            "model": {"layers": 1, "d_model": d, "window": windows},
            "train": train,
            "seeds": seeds,
        },
        {
            "chain": chain,
            "model": {"layers": depths, "d_model": d, "window": None},
            "train": train,
            "seeds": seeds,
        },
    ]


def phase_grid(size: str) -> list[float]:
    return {
        # 5 x 5 (20 cells off the line p + q = 1, x 2 tyings x 10 seeds = 400 runs at length
        # 1024: about 40 min on 2 cores); a finer grid is a sweep spec away
        "full": [0.1, 0.3, 0.5, 0.7, 0.9],
        "quick": [0.2, 0.4, 0.6, 0.8],
        "test": [0.3, 0.8],
    }[size]


def phase_specs(size: str, seeds: int) -> list[dict]:
    train = _train(
        size,
        {"iters": 400, "seq_len": 1024, "batch": 16},
        {"iters": 300, "seq_len": 128, "batch": 16},
    )
    grid = phase_grid(size)
    tie = [True] if size == "test" else [True, False]
    return [
        {
            "chain": {"p": p, "q": q},
            "model": {"layers": 1, "d_model": 8, "tie": tie},
            "train": train,
            "seeds": seeds,
        }
        for p in grid
        for q in grid
        if abs(p + q - 1) > 1e-9
    ]
