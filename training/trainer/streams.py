"""The trainer's random streams: every source of randomness of a run is a generator seeded
from (seed, stream, step) through numpy's SeedSequence.

- STREAM_INIT (0): the model init;
- STREAM_TRAIN (1), step t: the training batch of update t, a fresh batch every step,
  independent of how the run was interrupted (member_batches);
- STREAM_EVAL (2): the fixed held-out evaluation batches (evaluation.EvalSet).

There is no running generator, so the "generator state" of a checkpoint is its step. The
seed range itself is training.seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from training.chains import MarkovChain
from training.recipe import TrainConfig
from training.stacked import sample_members

STREAM_INIT, STREAM_TRAIN, STREAM_EVAL = 0, 1, 2


def derive_seed(seed: int, stream: int, step: int = 0) -> int:
    """A 63-bit seed for (run seed, stream, step), via numpy's SeedSequence (deterministic)."""
    hi, lo = np.random.SeedSequence([int(seed), int(stream), int(step)]).generate_state(2)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def member_batches(
    chains: Sequence[MarkovChain],
    seeds: Sequence[int],
    step: int,
    train_config: TrainConfig,
    device: torch.device,
) -> Int[Tensor, "member batch sample_len"]:
    """The trainer's training batch of update `step` for every member (stream 1), of
    TrainConfig.sample_len tokens per sequence (seq_len, or seq_len + 1 for targets
    "authors")."""
    gens = [make_generator(device, derive_seed(s, STREAM_TRAIN, step)) for s in seeds]
    return sample_members(chains, gens, train_config.batch, train_config.sample_len, device)
