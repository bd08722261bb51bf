"""Controls that make probe scores honest (docs/theory.md section 5).

Control tasks (Hewitt & Liang 2019). Each sample gets an *input type*, and each type a random
label drawn once from the real target's label distribution; the control task is to predict
that label. It can only be solved by memorising type -> label, so a probe's accuracy on it
measures the probe's capacity to memorise whatever of the type the representation carries,
not the information the real task asks for. Selectivity = task accuracy - control accuracy.

In language, the type is the word. Here a token alone is a poor type (a binary vocabulary has
two types, and a random relabelling of two types is just x_n or its negation), so the types
are small tuples of what a residual stream at position n is built from:

    pos_token  (n, x_n)                 default: N S types; the token and positional
                                        embeddings both enter every residual stream
    bigram     (x_{n-1}, x_n)           S^2 + S types (n = 0 has no x_{n-1}: its own types)
    trigram    (x_{n-2}, x_{n-1}, x_n)  likewise
    token      x_n                      S types (degenerate for small S; for completeness)

Few types (token, bigram) make the control easy to memorise for any representation that
carries those tokens, so selectivity is low: that is the control doing its job.

Regression targets have no control task; their baseline is a shuffled target: sequences'
targets are permuted among sequences, positions kept, so the baseline R^2 keeps whatever is
explained by position alone and loses everything tied to the particular sequence.

Random-model baseline: the same probes on a randomly initialised model of the same config
(the paper init, whatever init the run used), on the same sequences and targets.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from probes.targets import Target
from training.config import ModelConfig
from training.model import MarkovTransformer

INPUT_TYPES = ("pos_token", "bigram", "trigram", "token")


def input_types(
    tokens: Int[Tensor, "seq seq_len"], positions: Int[Tensor, " n_pos"], kind: str, n_states: int
) -> Int[Tensor, "seq n_pos"]:
    """Integer type id of every (sequence, kept position), for the control task ``kind``."""
    if kind not in INPUT_TYPES:
        raise ValueError(f"unknown control input type {kind!r}; allowed: {list(INPUT_TYPES)}")
    tokens = tokens.cpu().long()
    positions = torch.as_tensor(positions).long().cpu()
    S = n_states
    x = tokens[:, positions]
    if kind == "token":
        return x
    if kind == "pos_token":
        return positions[None] * S + x
    back = 1 if kind == "bigram" else 2
    # S + 1 symbols per slot: S marks "before the sequence start"
    padded = torch.nn.functional.pad(tokens, (back, 0), value=S)
    ids = torch.zeros_like(x)
    for lag in range(back, -1, -1):  # at most 3 slots: fixed tiny loop, not over positions
        ids = ids * (S + 1) + padded[:, positions + back - lag]
    return ids


def control_target(
    target: Target, types: Int[Tensor, "seq n_pos"], generator: torch.Generator | None = None
) -> Target:
    """The control task of a discrete target: one label per type, drawn i.i.d. from the
    target's empirical label distribution over its valid samples."""
    if target.kind != "discrete":
        raise ValueError(f"control tasks are for discrete targets; {target.name!r} is continuous")
    if types.shape != target.values.shape:
        raise ValueError(
            f"types {tuple(types.shape)} do not match the target {tuple(target.values.shape)}"
        )
    labels = target.values[target.valid]
    dist = torch.bincount(labels, minlength=target.n_classes).double()
    uniq, inverse = types.unique(return_inverse=True)
    per_type = torch.multinomial(
        dist / dist.sum(), uniq.numel(), replacement=True, generator=generator
    )
    return Target(
        f"control({target.name})",
        "discrete",
        per_type[inverse],
        target.valid.clone(),
        target.n_classes,
    )


def shuffled_target(target: Target, generator: torch.Generator | None = None) -> Target:
    """The target with whole sequences permuted (positions kept): the regression baseline."""
    perm = torch.randperm(target.values.shape[0], generator=generator)
    return Target(
        f"shuffled({target.name})",
        target.kind,
        target.values[perm],
        target.valid[perm],
        target.n_classes,
    )


def random_model(
    cfg: ModelConfig, seed: int, device: str | torch.device | None = None
) -> MarkovTransformer:
    """A randomly initialised model of the same architecture (paper init, seeded, whatever
    cfg.init says: its cfg.init is "paper"), eval mode."""
    cfg = ModelConfig.from_dict(cfg.to_dict() | {"init": "paper"})  # own copy, paper init
    model = MarkovTransformer(cfg, seed=seed)
    if device is not None:
        model = model.to(device)
    return model.eval()
