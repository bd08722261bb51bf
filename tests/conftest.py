import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny models: one thread is faster than two (thread hand-off dominates at these sizes).
torch.set_num_threads(1)


@pytest.fixture
def gen():
    """A seeded torch.Generator on the CPU."""
    return torch.Generator().manual_seed(0)
