"""What ``markov-lens bench`` runs: its modes, its sections and their sizes per mode.

Plain data (no torch), so that ``markov-lens bench --help`` can list the sections without
importing the benchmarks.
"""

from __future__ import annotations

from typing import Any

MODES = ("full", "quick", "tiny")
SECTIONS = (
    "step",
    "auto",
    "window",
    "ensemble",
    "sampler",
    "patching",
    "reproductions",
    "scaling",
    "startup",
)
# (p, q) of the ensemble members, cycled: the paper's chains on both sides of p + q = 1
CHAINS = ((0.5, 0.8), (0.2, 0.3), (0.6, 0.8), (0.3, 0.4))
# The attention backends of the step section: model backend name -> what it is
STEP_BACKENDS = ("auto", "torch", "explicit")
# The start-up target: a markov-lens command within this factor of `import torch`
STARTUP_TARGET = 1.5

# Per mode: paper step (batch, seq_len, repeats), window grid, ensemble comparison (members,
# seq_lens, iters), sampler (length, repeats), reproductions (experiment size, seeds, iters
# override or None), scaling grids, start-up (repeats, untimed warm-up runs).
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "step": {"batch": 16, "seq_len": 1024, "repeats": 7},
        "auto": {"batch": 16, "seq_lens": [128, 256, 512, 1024, 2048], "repeats": 5},
        "window": {
            "batch": 16,
            "seq_lens": [512, 1024, 2048],
            "windows": [2, 8, 32, None],
            "repeats": 5,
        },
        "matmul": {"size": 1024, "repeats": 10},
        "ensemble": {"members": 32, "seq_lens": [256, 1024], "iters": 20},
        "sampler": {"length": 1024, "repeats": 10},
        "reproductions": {"size": "full", "seeds": 3, "iters": None},
        "scaling": {
            "seq_len": {"members": 32, "values": [64, 128, 256, 512, 1024]},
            "members": {"seq_len": 256, "values": [1, 2, 4, 8, 16, 32, 64]},
            "layers": {"seq_len": 256, "members": 8, "values": [1, 2, 4, 8]},
            "repeats": 3,
        },
        "startup": {"repeats": 5, "warmup": 1},
    },
    "quick": {
        "step": {"batch": 16, "seq_len": 1024, "repeats": 5},
        "auto": {"batch": 16, "seq_lens": [128, 256, 512, 1024, 2048], "repeats": 3},
        "window": {
            "batch": 16,
            "seq_lens": [512, 1024],
            "windows": [2, 8, 32, None],
            "repeats": 3,
        },
        "matmul": {"size": 512, "repeats": 10},
        "ensemble": {"members": 32, "seq_lens": [256, 1024], "iters": 4},
        "sampler": {"length": 1024, "repeats": 3},
        "reproductions": {"size": "quick", "seeds": 3, "iters": 10},
        "scaling": {
            "seq_len": {"members": 4, "values": [64, 256, 1024]},
            "members": {"seq_len": 128, "values": [1, 4, 16]},
            "layers": {"seq_len": 128, "members": 4, "values": [1, 2, 4]},
            "repeats": 2,
        },
        "startup": {"repeats": 5, "warmup": 1},
    },
    "tiny": {
        "step": {"batch": 2, "seq_len": 64, "repeats": 1},
        "auto": {"batch": 2, "seq_lens": [32, 64], "repeats": 1},
        "window": {"batch": 2, "seq_lens": [32, 64], "windows": [2, 8, 32, None], "repeats": 1},
        "matmul": {"size": 128, "repeats": 2},
        "ensemble": {"members": 4, "seq_lens": [16, 32], "iters": 3},
        "sampler": {"length": 64, "repeats": 1},
        "reproductions": {"size": "test", "seeds": 2, "iters": 4},
        "scaling": {
            "seq_len": {"members": 2, "values": [16, 32]},
            "members": {"seq_len": 16, "values": [1, 2]},
            "layers": {"seq_len": 16, "members": 2, "values": [1, 2]},
            "repeats": 1,
        },
        "startup": {"repeats": 1, "warmup": 0},
    },
}
