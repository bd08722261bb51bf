"""The optimiser of the paper's recipe (training.recipe): AdamW with the paper's weight
decay groups (decay_parameter_names, make_optimizer), the learning rate of every update
(lr_schedule), and the optimiser state as a checkpoint holds it (optimizer_state,
load_optimizer_state; stack_optimizer_state and MemberOptimizer for a stack of members).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from training.checkpoints import CheckpointError
from training.model import MarkovTransformer
from training.recipe import TrainConfig

DECAYED_LEAVES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")


def decay_parameter_names(model: MarkovTransformer, train_config: TrainConfig) -> list[str]:
    """Names of the parameters AdamW decays (recipe.py explains the paper's rule): W_Q, W_K,
    W_V, W_O, W_in, W_out, an untied unembed.W_U; a tied embed.W_E only with
    decay_tied_embedding. Never W_pos, LayerNorm weights or biases."""
    names = []
    for name, _ in model.named_parameters():
        leaf = name.split(".")[-1]
        if leaf in DECAYED_LEAVES or name == "unembed.W_U":
            names.append(name)
        elif name == "embed.W_E" and model.cfg.tie_embeddings and train_config.decay_tied_embedding:
            names.append(name)
    return names


def make_optimizer(
    model: MarkovTransformer, train_config: TrainConfig
) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with a decay group (the paper's weight decay) and a no-decay group; also the
    parameter names in the optimiser's index order (for checkpointing its state)."""
    decay = set(decay_parameter_names(model, train_config))
    params = dict(model.named_parameters())
    decay_names = sorted(n for n in params if n in decay)
    other_names = sorted(n for n in params if n not in decay)
    groups = [
        {"params": [params[n] for n in decay_names], "weight_decay": train_config.weight_decay},
        {"params": [params[n] for n in other_names], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        groups, lr=train_config.lr, betas=tuple(train_config.betas), eps=train_config.eps
    )
    return opt, decay_names + other_names


def lr_schedule(train_config: TrainConfig) -> list[float]:
    """The learning rate of every update 0..iters-1 (TrainConfig.lr_at: torch's OneCycleLR in
    closed form, which the tests check against torch itself)."""
    return [train_config.lr_at(i) for i in range(train_config.iters)]


def optimizer_state(
    opt: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, Tensor], list[dict]]:
    """The state of `opt` as a checkpoint stores it: tensors named
    ``optim/<parameter name>/<field>`` (parameters named by `names`, in make_optimizer's
    order) and the param groups (JSON)."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim/{names[idx]}/{key}"] = torch.as_tensor(value)
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    for g in groups:
        g["betas"] = list(g["betas"])
    return tensors, groups


def load_optimizer_state(
    opt: torch.optim.Optimizer, names: list[str], tensors: dict[str, Tensor], groups: list[dict]
) -> None:
    """Restore `opt` from optimizer_state's tensors (other keys are skipped) and groups;
    CheckpointError for the state of a parameter not in `names`."""
    index = {name: i for i, name in enumerate(names)}
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim/"):
            continue
        _, name, field = key.split("/", 2)
        if name not in index:
            raise CheckpointError(f"optimiser state for unknown parameter {name!r}")
        state.setdefault(index[name], {})[field] = value
    groups = [dict(g) for g in groups]
    for g in groups:
        g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def stack_optimizer_state(
    opt: torch.optim.Optimizer, names: list[str], keep: Tensor | None = None
) -> tuple[dict[str, Tensor], list[dict]]:
    """optimizer_state of a stacked optimiser, restricted to members `keep`."""
    tensors, groups = optimizer_state(opt, names)
    if keep is not None:
        tensors = {k: (v[keep].clone() if v.ndim > 0 else v.clone()) for k, v in tensors.items()}
    return tensors, groups


class MemberOptimizer:
    """A view of member `index` of a stacked optimiser with the ``state_dict()`` of the
    member's own AdamW (what optimizer_state reads to write a checkpoint)."""

    def __init__(self, opt: torch.optim.Optimizer, index: int):
        self.opt, self.index = opt, index

    def state_dict(self) -> dict[str, Any]:
        sd = self.opt.state_dict()
        state = {
            idx: {k: (v[self.index].clone() if v.ndim > 0 else v.clone()) for k, v in s.items()}
            for idx, s in sd["state"].items()
        }
        return {"state": state, "param_groups": sd["param_groups"]}
