"""Tiny real training runs for the comparison, timeline and report tests.

Each call trains a one- or two-layer d_model 8 model on the p = 0.5, q = 0.8 binary chain with
the trainer (training.trainer.train) for 80 updates of 16 x 32 tokens: about a second on a CPU,
enough for the untied model to leave the unigram plateau (the tied one usually stays on it
at this length: both cases are useful).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from training.chains import BinaryChain
from training.config import ModelConfig
from training.recipe import TrainConfig
from training.trainer import train

CHAIN = BinaryChain(0.5, 0.8)
SEQ_LEN = 32


def use_one_thread() -> int:
    """Set torch to one CPU thread and return the count it had: models this small run faster
    on one thread, and a shared, loaded machine makes multi-threaded spinning very slow. The
    tests' only place that sets it (conftest's default, its fixtures, one_thread below)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    return old


@contextlib.contextmanager
def one_thread():
    """Run with one torch thread, the previous count restored after."""
    old = use_one_thread()
    try:
        yield
    finally:
        torch.set_num_threads(old)


def tiny_train_config(iters: int = 80) -> TrainConfig:
    return TrainConfig(
        iters=iters,
        batch=16,
        seq_len=SEQ_LEN,
        lr=1e-2,
        eval_every=8,
        eval_batches=1,
        save_every=0,
        device="cpu",
    )


def train_tiny(out_dir: Path, seed: int = 0, iters: int = 80, **model_overrides) -> Path:
    """Train a tiny run into ``out_dir`` and return the directory."""
    cfg = ModelConfig.paper(n_ctx=SEQ_LEN, **model_overrides)
    train(cfg, CHAIN, tiny_train_config(iters), seed=seed, out_dir=out_dir, progress=False)
    return Path(out_dir)
