"""The experiments' settings: the sweep specs of each experiment at each size, the default
seed counts, and the wall times measured at the paper's settings.

Sizes: "full" = the paper's settings (docs/theory.md section 3); "quick" = shorter sequences,
fewer seeds, minutes on a 2-core CPU; "test" = tiny (TINY), for the test suite.

Arithmetic: every preset trains in float32 (TrainConfig's default) unless an arithmetic is
named (ARITHMETICS, with_arithmetic); "authors-gpu" is the paper's GPU runs.
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
    "eval_batches": 4,  # 4 x 4 x 15 = 240 predicted tokens: above the verdicts' 200
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


# The arithmetic of a run by name (TrainConfig precision, grad_scaler, tf32). "authors-gpu" is
# what the paper's code does on CUDA (optim/base.py: fp16 autocast without a GradScaler;
# main.py: TF32 matmuls on), so CUDA only; "fp16" is it without TF32 (what a CPU emulates),
# "fp16-scaled" the same with dynamic loss scaling.
ARITHMETICS = {
    "fp32": {"precision": "fp32", "grad_scaler": False, "tf32": False},
    "bf16": {"precision": "bf16", "grad_scaler": False, "tf32": False},
    "fp16": {"precision": "fp16", "grad_scaler": False, "tf32": False},
    "fp16-scaled": {"precision": "fp16", "grad_scaler": True, "tf32": False},
    "authors-gpu": {"precision": "fp16", "grad_scaler": False, "tf32": True},
}


def with_arithmetic(specs: list[dict], name: str) -> list[dict]:
    """`specs` (sweep specs) with every train section set to ARITHMETICS[name]."""
    if name not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {name!r}; available: {', '.join(ARITHMETICS)}")
    return [s | {"train": dict(s.get("train") or {}) | ARITHMETICS[name]} for s in specs]


def _train(size: str, full: dict, quick: dict) -> dict:
    base = {"full": full, "quick": quick, "test": TINY}[size]
    return dict(base) | {"eval_seed": EVAL_SEED}


def default_seeds(name: str, size: str) -> int:
    """Seeds per cell when none are given: the paper's 3 (full), 3 for a quick reproduction
    (2 for the 24-cell quick phase diagram), 5 for in-context (both sizes), 1 at test size."""
    if size == "test":
        return 1
    if name == "in-context":
        return 5
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


# --------------------------------------------------------------------------- in-context

# The authors' depth settings (Bond1995/Markov, Markov-LLM-depth): length 512, d_model 32,
# lr 0.01, AdamW, 8,000 iterations: a GPU preset ("full"). "quick" is the CPU-sized preset
# (NOT the paper's settings): length 128, batch 32, d_model 32, the authors' lr 0.01 held
# constant, IN_CONTEXT_CPU_ITERS updates (the in-context atlas preset's recipe,
# interp.atlas.grid; at lr 3e-3 a 2-layer model with LayerNorm had not reached the add-alpha
# loss after 1,800 steps).
IN_CONTEXT_CPU_ITERS = 3000


def in_context_specs(size: str, seeds: int) -> list[dict]:
    """The in-context reproduction's three blocks (training.experiments.in_context):

    (a) stages: 2 layers, attention-only, untied, 3 states, a kernel per sequence, Dirichlet(1)
        rows vs the doubly stochastic prior (Edelman et al. 2024);
    (b) depth: layers {1, 2, 3} (full: {1, 2, 3, 4}) on binary first-order chains with one
        kernel per minibatch (group_size "batch": the authors' --chain random);
    (c) constant depth: binary order k in {1, 2, 3} (full: {1, 2, 3, 4}) x layers {2, 3},
        a kernel per sequence (Rajaraman et al. 2024).
    """
    train = _train(
        size,
        {"iters": 8000, "seq_len": 512, "batch": 16, "lr": 0.01},
        {
            "iters": IN_CONTEXT_CPU_ITERS,
            "seq_len": 128,
            "batch": 32,
            "lr": 0.01,
            "schedule": "constant",
            "eval_every": 50,
        },
    )
    d = 32 if size != "test" else 8
    layers = {"full": [1, 2, 3, 4], "quick": [1, 2, 3], "test": [1, 2]}[size]
    orders = {"full": [1, 2, 3, 4], "quick": [1, 2, 3], "test": [1, 2]}[size]
    deep = {"full": [2, 3], "quick": [2, 3], "test": [2]}[size]
    return [
        {
            "chain": {"in_context": True, "states": 3, "doubly_stochastic": [False, True]},
            "model": {"layers": 2, "d_model": d, "mlp": False, "tie": False},
            "train": train,
            "seeds": seeds,
        },
        {
            "chain": {"in_context": True, "group_size": "batch"},
            "model": {"layers": layers, "d_model": d},
            "train": train,
            "seeds": seeds,
        },
        {
            "chain": {"in_context": True, "order": orders},
            "model": {"layers": deep, "d_model": d},
            "train": train,
            "seeds": seeds,
        },
    ]
