"""K runs of one architecture as one computation: stacked weights, their forward, their data.

A training run is a stack of K >= 1 members (training.trainer trains any K with one loop):
every parameter is stacked to [K, *shape] under the model's parameter name, and the *same*
MarkovTransformer module computes all K members at once through ``torch.func.vmap`` over
``functional_call`` (K = 1: one plain call of the module, no vmap). There is no second
forward: the fused attention kernel folds the vmapped dimension into its rows.

The gradient of the summed member losses is each member's own gradient (members share no
parameter), so one torch AdamW over the stacked tensors is K independent AdamWs (Adam's
moments, bias corrections, epsilon and decoupled weight decay are elementwise); gradient
clipping, when asked for, is per member (``clip_member_grads``). Each member's training
batch is drawn from its own generator (``member_batches``: the members' samplers run as one
parallel scan, token for token what ``chain.sample`` draws).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from training.chains import MarkovChain, draw_randomness, sample_scan
from training.config import ModelConfig
from training.model import MarkovTransformer, per_token_loss
from training.options import RunConfig
from training.recipe import TrainConfig

NON_ARCHITECTURE_FIELDS = ("init", "init_range", "use_attn_result")


# ----------------------------------------------------------------------------- members


@dataclass
class Member:
    """One member of a stack: its architecture, data source and seed (the recipe is shared)."""

    model_config: ModelConfig
    chain: MarkovChain
    seed: int = 0


def as_member(item: Any, index: int) -> tuple[Member, TrainConfig | None]:
    if isinstance(item, Member):
        return item, None
    if isinstance(item, RunConfig):
        return Member(item.model, item.chain, item.seed), item.train
    if isinstance(item, tuple) and len(item) == 3:
        return Member(*item), None
    raise ValueError(
        f"ensemble member {index} must be a Member, a RunConfig or a (model_config, chain, "
        f"seed) tuple, got {type(item).__name__}"
    )


def architecture_key(model_config: ModelConfig) -> dict[str, Any]:
    """The ModelConfig fields that define the computation (all but init, init_range and
    use_attn_result): members with equal keys can be trained as one ensemble."""
    d = model_config.to_dict()
    for name in NON_ARCHITECTURE_FIELDS:
        d.pop(name, None)
    return d


def check_same_architecture(configs: Sequence[ModelConfig]) -> None:
    """ValueError naming the first field where a config differs from the first one."""
    ref = architecture_key(configs[0])
    for i, cfg in enumerate(configs[1:], 1):
        key = architecture_key(cfg)
        for name in ref:
            if key[name] != ref[name]:
                raise ValueError(
                    f"ensemble members must share one architecture: member {i} has "
                    f"{name}={key[name]!r} but member 0 has {name}={ref[name]!r} (group runs "
                    "by training.stacked.architecture_key and train each group separately)"
                )


def train_key(train_config: TrainConfig) -> dict[str, Any]:
    """The recipe without the device: members trained together share it."""
    d = train_config.to_dict()
    d.pop("device")
    return d


# ------------------------------------------------------------------------ stacked weights


class StackedWeights:
    """The parameters of M same-shape models, each stacked to [M, *shape] under the model's
    parameter name; duck-types the two things trainer.make_optimizer reads from a model
    (``cfg`` and ``named_parameters()``), so the decay groups are the trainer's."""

    def __init__(self, cfg: ModelConfig, params: dict[str, torch.nn.Parameter]):
        self.cfg = cfg
        self.params = params

    @classmethod
    def from_models(cls, models: Sequence[MarkovTransformer]) -> StackedWeights:
        names = [n for n, _ in models[0].named_parameters()]
        per_model = [dict(m.named_parameters()) for m in models]
        params = {
            n: torch.nn.Parameter(torch.stack([p[n].detach() for p in per_model]).clone())
            for n in names
        }
        return cls(models[0].cfg, params)

    @property
    def n_members(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return iter(self.params.items())

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(self.params.values())

    @torch.no_grad()
    def copy_to(self, index: int, model: MarkovTransformer) -> MarkovTransformer:
        """Write member `index`'s weights into `model` (same architecture); returns it."""
        own = dict(model.named_parameters())
        for name, p in self.params.items():
            own[name].copy_(p[index])
        return model


# ------------------------------------------------------------------------------ forward


def stacked_logits(
    model: MarkovTransformer,
    params: dict[str, Tensor],
    tokens: Int[Tensor, "member batch pos"],
) -> Float[Tensor, "member batch pos d_vocab"]:
    """Logits of K stacked members (params[name]: [K, *shape]), member m on tokens[m]:
    `model`'s own forward with each member's parameters (its buffers are shared)."""
    from torch.func import functional_call, vmap

    K = tokens.shape[0]
    first = next(iter(params.values()))
    if first.shape[0] != K:
        raise ValueError(f"tokens are for {K} members but the weights stack {first.shape[0]}")
    if tokens.shape[-1] > model.cfg.n_ctx:
        raise ValueError(
            f"sequence length {tokens.shape[-1]} is longer than n_ctx={model.cfg.n_ctx}"
        )
    if K == 1:
        return functional_call(model, {n: p[0] for n, p in params.items()}, (tokens[0],))[None]
    model.check_tokens(tokens.reshape(-1, tokens.shape[-1]))
    return vmap(lambda p, t: functional_call(model, p, (t,)))(params, tokens)


def ensemble_logits(
    cfg: ModelConfig,
    params: dict[str, Tensor],
    tokens: Int[Tensor, "member batch pos"],
    fused_attention: bool = True,
) -> Float[Tensor, "member batch pos d_vocab"]:
    """stacked_logits on a fresh MarkovTransformer(cfg) (fused_attention=False: the explicit
    attention branch)."""
    # paper init whatever cfg.init says: `params` replace every weight (and theta_pi needs pi)
    model = MarkovTransformer(ModelConfig.from_dict(cfg.to_dict() | {"init": "paper"}), seed=0)
    model.set_fused_attention(fused_attention)
    return stacked_logits(model.to(tokens.device), params, tokens)


def member_losses(
    logits: Float[Tensor, "member batch pos d_vocab"], tokens: Int[Tensor, "member batch tokens"]
) -> Float[Tensor, " member"]:
    """Each member's mean next-token cross-entropy (nats), as trainer's training loss.

    tokens: the model's input (tokens = pos: the last position has no target, pos - 1
    targets per sequence) or the input and the next token (tokens = pos + 1: every position
    predicts one, the paper code's count, TrainConfig.targets "authors")."""
    M, B, N, V = logits.shape
    if tokens.shape[-1] == N + 1:
        targets = tokens[..., 1:].reshape(-1)
        per_token = F.cross_entropy(logits.reshape(-1, V), targets, reduction="none")
        return per_token.view(M, B * N).mean(-1)
    if tokens.shape[-1] != N:
        raise ValueError(
            f"{tokens.shape[-1]} tokens per sequence for {N} logits: need {N} or {N + 1}"
        )
    per_token = per_token_loss(logits.reshape(M * B, N, V), tokens.reshape(M * B, N))
    return per_token.view(M, B * (N - 1)).mean(-1)


def clip_member_grads(weights: StackedWeights, max_norm: float) -> Float[Tensor, " member"]:
    """torch.nn.utils.clip_grad_norm_ for each member separately (its own global 2-norm over
    all its parameters); returns the members' norms before clipping."""
    grads = [p.grad for p in weights.parameters() if p.grad is not None]
    M = weights.n_members
    norms = torch.stack([g.reshape(M, -1).norm(dim=1) for g in grads]).norm(dim=0)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(M, *[1] * (g.ndim - 1)).to(g.dtype))
    return norms


# --------------------------------------------------------------------------------- data


def _scan_compatible(chain: MarkovChain) -> bool:
    return type(chain).sample is MarkovChain.sample


def sample_members(
    chains: Sequence[MarkovChain],
    generators: Sequence[torch.Generator],
    batch: int,
    length: int,
    device: torch.device,
) -> Int[Tensor, "member batch length"]:
    """tokens[m] = chains[m].sample(batch, length, generator=generators[m]), exactly, with
    the members' parallel scans run as one (each generator is still drawn on its own)."""
    if len(chains) == 1:  # a stack of one: the chain's own sampler (the same draws)
        return chains[0].sample(batch, length, generator=generators[0], device=device)[None]
    out: list[Tensor | None] = [None] * len(chains)
    groups: dict[tuple[int, int], list[int]] = {}
    for m, chain in enumerate(chains):
        if _scan_compatible(chain):
            groups.setdefault((chain.n_states, chain.order), []).append(m)
        else:
            out[m] = chain.sample(batch, length, generator=generators[m], device=device)
    for (_, k), idx in groups.items():
        kernels, laws, uniforms = [], [], []
        for m in idx:
            K, law, u = draw_randomness(chains[m], batch, length, generators[m], device)
            kernels.append(K.expand(batch, -1, -1))
            laws.append(law.expand(batch, -1))
            uniforms.append(u)
        tokens = sample_scan(torch.cat(kernels), torch.cat(laws), torch.cat(uniforms), k)
        for j, m in enumerate(idx):
            out[m] = tokens[j * batch : (j + 1) * batch]
    return torch.stack(out)
