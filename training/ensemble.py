"""Ensemble training: many runs of one architecture trained together as one batched computation.

The questions asked of these models are statistical (what fraction of seeds ends where), so
the cost that matters is a sweep of many tiny models. ``train_ensemble(members, train_config,
out_dirs)`` trains M runs that share a ModelConfig shape and a TrainConfig (different seeds,
different chains, even different inits) at once: every parameter is stacked to [M, ...] and
one forward/backward pass (batched matmuls over the member dimension, fused attention over
[M * batch] sequences) computes all M losses. The gradient of the summed member losses is
each member's own gradient (members share no parameter), and one torch AdamW over the
stacked tensors is M independent AdamWs: Adam's moments, bias corrections, epsilon and the
decoupled weight decay are elementwise, the decay groups are the trainer's (by parameter
name) and the OneCycle learning rate is the same for every member because the schedule is.
Gradient clipping, when asked for, is per member (its own global norm).

Every member is the trainer's run, not an approximation of it (training.trainer): the same
initial weights (MarkovTransformer(seed=derive_seed(seed, 0)) + apply_init), the same
training batch at every step (derive_seed(seed, 1, step); the members' samplers are run as
one parallel scan over the stacked uniforms, token for token what ``chain.sample`` draws),
the same held-out batches and metrics (``trainer.evaluate`` on the member's logits), the
same verdict, checkpoints (with resume state) and summary. Each member writes the trainer's
RUN_DIR layout, so ``training.runs.load_run`` reads it and ``trainer.train(resume=True)``
(or ``train_ensemble(resume=True)``) continues it. The same config and seed give the same
curves as ``trainer.train`` up to float rounding (batched kernels sum in another order;
tested: metrics and final weights within 1e-4 relative, same verdicts). Timing fields
(wall_seconds, tokens_per_s) are the ensemble's: each member reports the shared wall clock,
and summary.json adds ``ensemble_members`` (how many were trained together).

For sweeps: ``run_group(tasks)`` trains a list of training.sweeps RunTasks (dicts) of one
shape; ``ensemble_backend(run_fn, tasks, workers)`` is a sweep backend that groups pending
tasks by shape, trains each group with ``run_group`` and the rest with the local backend.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from training.chains import InContextChain, MarkovChain, _draw, _sample_scan, chain_from_dict
from training.checkpoints import save_checkpoint
from training.config import ModelConfig
from training.inits import apply_init
from training.model import MarkovTransformer, per_token_loss
from training.options import RunConfig, build_run_config
from training.recipe import TrainConfig
from training.references import stationary_marginal
from training.runs import (
    CHECKPOINTS,
    LATEST,
    METRICS,
    SUMMARY,
    step_dir_name,
    write_json_atomic,
)
from training.trainer import (
    RUN_FORMAT,
    STREAM_INIT,
    STREAM_TRAIN,
    EvalSet,
    TrainingDiverged,
    TrainResult,
    _clean_partial_saves,
    _config_dict,
    _diverged,
    _load_optimizer_state,
    _optimizer_state,
    _prepare_run_dir,
    _summary,
    _truncate_metrics,
    derive_seed,
    evaluate,
    find_resume_checkpoint,
    make_generator,
    make_optimizer,
    resolve_device,
    run_references,
)

# ModelConfig fields that do not change the computation (only the initial values, or hooks)
NON_ARCHITECTURE_FIELDS = ("init", "init_range", "use_attn_result")
# Default cap on members per ensemble: members * batch * seq_len * n_layers * d_model (floats
# of residual stream per step) is kept under this many. Measured on CPU: about 200-250 bytes of
# peak memory per such float, so about 2 GB (the paper's config: 64 members).
DEFAULT_RESIDUAL_BUDGET = 1 << 23


# ----------------------------------------------------------------------------- members


@dataclass
class Member:
    """One run of an ensemble: its architecture, data source and seed (the recipe is shared)."""

    model_config: ModelConfig
    chain: MarkovChain
    seed: int = 0


def _as_member(item: Any, index: int) -> tuple[Member, TrainConfig | None]:
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
                    "by training.ensemble.architecture_key and train each group separately)"
                )


def _train_key(train_config: TrainConfig) -> dict[str, Any]:
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


def _stack_optimizer_state(
    opt: torch.optim.Optimizer, names: list[str], keep: Tensor | None = None
) -> tuple[dict[str, Tensor], list[dict]]:
    """trainer._optimizer_state of a stacked optimiser, restricted to members `keep`."""
    tensors, groups = _optimizer_state(opt, names)
    if keep is not None:
        tensors = {k: (v[keep].clone() if v.ndim > 0 else v.clone()) for k, v in tensors.items()}
    return tensors, groups


class _MemberOptimizer:
    """A view of member `index` of a stacked optimiser with the ``state_dict()`` of the
    member's own AdamW (what trainer._optimizer_state reads to write a checkpoint)."""

    def __init__(self, opt: torch.optim.Optimizer, index: int):
        self.opt, self.index = opt, index

    def state_dict(self) -> dict[str, Any]:
        sd = self.opt.state_dict()
        state = {
            idx: {k: (v[self.index].clone() if v.ndim > 0 else v.clone()) for k, v in s.items()}
            for idx, s in sd["state"].items()
        }
        return {"state": state, "param_groups": sd["param_groups"]}


# ------------------------------------------------------------------------------ forward


def _layer_norm(
    cfg: ModelConfig, params: dict[str, Tensor], name: str, x: Float[Tensor, "M T d"]
) -> Float[Tensor, "M T d"]:
    """training.model.LayerNorm per member: (x - mean) / sqrt(var + eps) * w (+ b)."""
    if cfg.normalization_type != "LN":
        return x
    out = F.layer_norm(x, (x.shape[-1],), eps=cfg.ln_eps) * params[f"{name}.w"][:, None]
    if cfg.ln_bias:
        out = out + params[f"{name}.b"][:, None]
    return out


def _attention(
    cfg: ModelConfig,
    params: dict[str, Tensor],
    name: str,
    x: Float[Tensor, "M T d_model"],
    batch: int,
    window: int | None,
    fused: bool,
) -> Float[Tensor, "M T d_model"]:
    """training.model.Attention per member: softmax(q k^T / sqrt(d_head) + causal or window
    mask) v, through the fused kernel (fused=True) or materialised scores."""
    M, T, D = x.shape
    H, Dh = cfg.n_heads, cfg.d_head
    N = T // batch
    W = torch.cat([params[f"{name}.{w}"] for w in ("W_Q", "W_K", "W_V")], dim=1)  # [M,3H,D,Dh]
    qkv = torch.bmm(x, W.permute(0, 2, 1, 3).reshape(M, D, 3 * H * Dh))
    if cfg.linear_bias:
        b = torch.cat([params[f"{name}.{b}"] for b in ("b_Q", "b_K", "b_V")], dim=1)
        qkv = qkv + b.reshape(M, 1, 3 * H * Dh)
    q, k, v = qkv.view(M * batch, N, 3, H, Dh).permute(2, 0, 3, 1, 4)  # [M*batch, H, N, Dh]
    mask = None
    if window is not None or not fused:
        i = torch.arange(N, device=x.device)[:, None]
        j = torch.arange(N, device=x.device)[None, :]
        mask = (j <= i) if window is None else (j <= i) & (j >= i - window)
    if fused:
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(Dh)
        z = torch.matmul(scores.masked_fill(~mask, float("-inf")).softmax(-1), v)
    z = z.permute(0, 2, 1, 3).reshape(M, T, H * Dh)
    out = torch.bmm(z, params[f"{name}.W_O"].reshape(M, H * Dh, D))
    if cfg.linear_bias:
        out = out + params[f"{name}.b_O"][:, None]
    return out


def _mlp(
    cfg: ModelConfig, params: dict[str, Tensor], name: str, x: Float[Tensor, "M T d_model"]
) -> Float[Tensor, "M T d_model"]:
    pre = torch.bmm(x, params[f"{name}.W_in"])
    if cfg.linear_bias:
        pre = pre + params[f"{name}.b_in"][:, None]
    post = F.gelu(pre) if cfg.act_fn == "gelu" else F.relu(pre)
    out = torch.bmm(post, params[f"{name}.W_out"])
    if cfg.linear_bias:
        out = out + params[f"{name}.b_out"][:, None]
    return out


def ensemble_logits(
    cfg: ModelConfig,
    params: dict[str, Tensor],
    tokens: Int[Tensor, "member batch pos"],
    fused_attention: bool = True,
) -> Float[Tensor, "member batch pos d_vocab"]:
    """Logits of M stacked MarkovTransformers (params[name]: [M, *shape], the model's
    parameter names), member m on tokens[m]: MarkovTransformer.forward, batched."""
    M, B, N = tokens.shape
    W_E = params["embed.W_E"]  # [M, d_vocab, d_model]
    V, D = W_E.shape[1:]
    if W_E.shape[0] != M:
        raise ValueError(f"tokens are for {M} members but the weights stack {W_E.shape[0]}")
    if N > cfg.n_ctx:
        raise ValueError(f"sequence length {N} is longer than n_ctx={cfg.n_ctx}")
    offset = (torch.arange(M, device=tokens.device) * V)[:, None, None]
    resid = F.embedding(tokens + offset, W_E.reshape(M * V, D))  # [M, B, N, D]
    if cfg.positional_embedding_type == "standard":
        resid = resid + params["pos_embed.W_pos"][:, None, :N]
    resid = resid.reshape(M, B * N, D)
    for layer, window in enumerate(cfg.windows()):
        block = f"blocks.{layer}"
        x = _layer_norm(cfg, params, f"{block}.ln1", resid)
        resid = resid + _attention(cfg, params, f"{block}.attn", x, B, window, fused_attention)
        if not cfg.attn_only:
            x = _layer_norm(cfg, params, f"{block}.ln2", resid)
            resid = resid + _mlp(cfg, params, f"{block}.mlp", x)
    x = _layer_norm(cfg, params, "ln_final", resid)
    W_U = W_E.transpose(1, 2) if cfg.tie_embeddings else params["unembed.W_U"]
    logits = torch.bmm(x, W_U)
    if cfg.unembed_bias:
        logits = logits + params["unembed.b_U"][:, None]
    return logits.view(M, B, N, V)


def member_losses(
    logits: Float[Tensor, "member batch pos d_vocab"], tokens: Int[Tensor, "member batch pos"]
) -> Float[Tensor, " member"]:
    """Each member's mean next-token cross-entropy (nats), as trainer's training loss."""
    M, B, N, V = logits.shape
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
            K, law, u = _draw(chains[m], batch, length, generators[m], device)
            kernels.append(K.expand(batch, -1, -1))
            laws.append(law.expand(batch, -1))
            uniforms.append(u)
        tokens = _sample_scan(torch.cat(kernels), torch.cat(laws), torch.cat(uniforms), k)
        for j, m in enumerate(idx):
            out[m] = tokens[j * batch : (j + 1) * batch]
    return torch.stack(out)


def member_batches(
    chains: Sequence[MarkovChain],
    seeds: Sequence[int],
    step: int,
    train_config: TrainConfig,
    device: torch.device,
) -> Int[Tensor, "member batch seq_len"]:
    """The trainer's training batch of update `step` for every member (stream 1)."""
    gens = [make_generator(device, derive_seed(s, STREAM_TRAIN, step)) for s in seeds]
    return sample_members(chains, gens, train_config.batch, train_config.seq_len, device)


class _PrecomputedLogits:
    """Stands in for a model in trainer.evaluate: returns the member's logits, computed in
    the batched forward, for each of its evaluation batches."""

    training = False

    def __init__(self, tokens: list[Tensor], logits: list[Tensor]):
        self._logits = {id(t): lg for t, lg in zip(tokens, logits, strict=True)}

    def eval(self) -> _PrecomputedLogits:
        return self

    def train(self, mode: bool = True) -> _PrecomputedLogits:
        return self

    def __call__(self, tokens: Tensor) -> Tensor:
        return self._logits[id(tokens)]


# ---------------------------------------------------------------------------- training


@dataclass
class _State:
    """Where one member starts: fresh, or from a resume checkpoint."""

    step: int = 0
    checkpoint: Any = None
    metrics: list | None = None
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    wall_before: float = 0.0


def _initial_model(member: Member, device: torch.device) -> MarkovTransformer:
    """The trainer's initial model for this member (same seed stream and init)."""
    cfg = ModelConfig.from_dict(member.model_config.to_dict())
    model = MarkovTransformer(cfg, seed=derive_seed(member.seed, STREAM_INIT))
    chain = member.chain
    pi = (
        torch.full((chain.n_states,), 1.0 / chain.n_states, dtype=torch.float64)
        if isinstance(chain, InContextChain)
        else stationary_marginal(chain)
    )
    apply_init(model, cfg.init, pi=pi)
    return model.to(device)


def train_ensemble(
    members: Sequence[Member | RunConfig | tuple],
    train_config: TrainConfig | None = None,
    out_dirs: Sequence[str | os.PathLike] | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    timings: dict[str, float] | None = None,
) -> list[TrainResult]:
    """Train `members` (same architecture, different seeds/chains/inits) together, each as
    ``trainer.train(model_config, chain, train_config, seed, out_dir)`` would.

    members: Member, RunConfig (its train section must equal train_config, which defaults to
    it) or (model_config, chain, seed). out_dirs: one run directory per member (None: in
    memory); resume/force/stop_at as in trainer.train (a finished member is only read;
    members resumed from different steps are trained as separate ensembles).
    timings: if given, filled with seconds spent on data, steps (forward, backward, AdamW),
    evaluation and checkpoints, and the number of ensemble steps.

    Returns one TrainResult per member, in order. A member whose loss turns NaN/inf gets the
    trainer's "diverged" summary (written to its run directory) and drops out; the others
    go on. ValueError for members of different architectures or mismatched configs.
    """
    if not members:
        raise ValueError("train_ensemble needs at least one member")
    parsed = [_as_member(item, i) for i, item in enumerate(members)]
    given = [tc for _, tc in parsed if tc is not None]
    if train_config is None:
        train_config = given[0] if given else TrainConfig()
    if not isinstance(train_config, TrainConfig):
        raise ValueError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    for i, tc in enumerate(given):
        if _train_key(tc) != _train_key(train_config):
            raise ValueError(
                f"ensemble member {i} has its own train config that differs from the shared "
                "one; members of an ensemble share one TrainConfig"
            )
    mem = []
    for i, (m, _) in enumerate(parsed):
        chain = chain_from_dict(m.chain) if isinstance(m.chain, dict) else m.chain
        if not isinstance(m.model_config, ModelConfig):
            raise ValueError(
                f"member {i}: model_config must be a ModelConfig, got "
                f"{type(m.model_config).__name__}"
            )
        if m.model_config.n_ctx < train_config.seq_len:
            raise ValueError(
                f"member {i}: model n_ctx={m.model_config.n_ctx} is shorter than "
                f"seq_len={train_config.seq_len}"
            )
        if m.model_config.d_vocab != chain.n_states:
            raise ValueError(
                f"member {i}: model d_vocab={m.model_config.d_vocab} but the chain has "
                f"{chain.n_states} states"
            )
        if isinstance(m.seed, bool) or not isinstance(m.seed, int) or m.seed < 0:
            raise ValueError(f"member {i}: seed must be an integer >= 0, got {m.seed!r}")
        mem.append(Member(m.model_config, chain, m.seed))
    check_same_architecture([m.model_config for m in mem])
    if stop_at is not None and not (0 <= stop_at <= train_config.iters):
        raise ValueError(f"stop_at must be in 0..{train_config.iters}, got {stop_at!r}")
    dirs: list[Path | None] = [None] * len(mem)
    if out_dirs is not None:
        if len(out_dirs) != len(mem):
            raise ValueError(f"{len(mem)} members but {len(out_dirs)} out_dirs")
        dirs = [Path(d) if d is not None else None for d in out_dirs]
        named = [str(d.resolve()) for d in dirs if d is not None]
        if len(set(named)) != len(named):
            raise ValueError("two ensemble members were given the same out_dir")
    device = resolve_device(train_config.device)

    results: list[TrainResult | None] = [None] * len(mem)
    starts: dict[int, _State] = {}
    for i, (m, run_dir) in enumerate(zip(mem, dirs, strict=True)):
        state = _State()
        if run_dir is not None:
            config = _config_dict(m.model_config, m.chain, train_config, m.seed)
            if _prepare_run_dir(run_dir, config, resume, force):
                from training.runs import load_run

                run = load_run(run_dir)
                model = run.model(device=device) if run.checkpoint_steps() else None
                results[i] = TrainResult(run.summary(), model, run.metrics(), run_dir)
                continue
            _clean_partial_saves(run_dir)
            ckpt = find_resume_checkpoint(run_dir) if resume else None
            if ckpt is not None and ckpt.step > 0:
                meta = ckpt.metadata["resume"]
                state = _State(
                    step=ckpt.step,
                    checkpoint=ckpt,
                    metrics=_truncate_metrics(run_dir / METRICS, ckpt.step),
                    train_loss_sum=meta["train_loss_sum"],
                    train_loss_count=meta["train_loss_count"],
                    wall_before=meta["wall_seconds"],
                )
            elif (run_dir / METRICS).exists():
                # no update checkpointed yet: start again from step 0 (the same weights and
                # step-0 record), so that all fresh members can share one ensemble
                (run_dir / METRICS).unlink()
        starts[i] = state
    by_step: dict[int, list[int]] = {}
    for i, state in starts.items():
        by_step.setdefault(state.step, []).append(i)
    for step in sorted(by_step):
        idx = by_step[step]
        group = _EnsembleRun(
            [mem[i] for i in idx],
            [dirs[i] for i in idx],
            [starts[i] for i in idx],
            train_config,
            device,
            timings,
        )
        for i, result in zip(idx, group.run(progress, stop_at), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]


class _EnsembleRun:
    """The training loop of one ensemble whose members all start at the same step."""

    def __init__(
        self,
        members: list[Member],
        dirs: list[Path | None],
        starts: list[_State],
        train_config: TrainConfig,
        device: torch.device,
        timings: dict[str, float] | None,
    ):
        self.members, self.dirs, self.tc, self.device = members, dirs, train_config, device
        self.timings = timings
        self.step = starts[0].step
        ref_cache: dict[str, dict] = {}
        self.refs = []
        for m in members:
            key = json.dumps(m.chain.to_dict(), sort_keys=True)
            if key not in ref_cache:
                ref_cache[key] = run_references(m.chain, train_config)
            self.refs.append(ref_cache[key])
        self.models = [_initial_model(m, device) for m in members]
        for model, state in zip(self.models, starts, strict=True):
            if state.checkpoint is not None:
                model.load_state_dict(state.checkpoint.weights)
        self.weights = StackedWeights.from_models(self.models)
        self.opt, self.opt_names = make_optimizer(self.weights, train_config)
        if starts[0].checkpoint is not None:
            tensors: dict[str, Tensor] = {}
            for key in starts[0].checkpoint.state:
                if key.startswith("optim/"):
                    parts = [s.checkpoint.state[key] for s in starts]
                    tensors[key] = torch.stack(parts) if parts[0].ndim > 0 else parts[0]
            meta = starts[0].checkpoint.metadata["resume"]
            _load_optimizer_state(self.opt, self.opt_names, tensors, meta["param_groups"])
        self.eval_sets = [EvalSet(m.chain, train_config, m.seed, device) for m in members]
        self.metrics = [list(s.metrics or []) for s in starts]
        self.loss_sum = [s.train_loss_sum for s in starts]
        self.loss_count = [s.train_loss_count for s in starts]
        self.wall_before = [s.wall_before for s in starts]
        self.active = list(range(len(members)))  # member index of each stacked row
        self.results: list[TrainResult | None] = [None] * len(members)
        self.autocast_enabled = train_config.precision == "bf16"

    # --- helpers ---------------------------------------------------------------------
    def autocast(self):
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _tick(self, key: str, since: float) -> float:
        now = time.perf_counter()
        if self.timings is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                now = time.perf_counter()
            self.timings[key] = self.timings.get(key, 0.0) + now - since
        return now

    def wall(self, i: int) -> float:
        return self.wall_before[i] + time.perf_counter() - self.t_start

    def forward(self, tokens: Tensor) -> Tensor:
        with self.autocast():
            return ensemble_logits(
                self.weights.cfg, self.weights.params, tokens, self.tc.fused_attention
            )

    # --- evaluation, checkpoints ---------------------------------------------------------
    @torch.no_grad()
    def record_eval(self) -> None:
        rows = self.active
        logits = [
            self.forward(torch.stack([self.eval_sets[i].tokens[b] for i in rows]))
            for b in range(self.tc.eval_batches)
        ]
        now = time.perf_counter()
        for r, i in enumerate(rows):
            es = self.eval_sets[i]
            model = _PrecomputedLogits(es.tokens, [lg[r] for lg in logits])
            rec = {"step": self.step} | evaluate(model, es, self.refs[i], self.autocast)
            count = self.loss_count[i]
            rec["train_loss"] = self.loss_sum[i] / count if count else None
            rec["lr"] = self.last_lr
            rec["tokens_seen"] = self.step * self.tc.tokens_per_step
            rec["wall_seconds"] = self.wall(i)
            dt = now - self.t_last
            done = (self.step - self.step_last) * self.tc.tokens_per_step
            rec["tokens_per_s"] = done / dt if dt > 0 else None
            self.loss_sum[i], self.loss_count[i] = 0.0, 0
            self.metrics[i].append(rec)
            if self.dirs[i] is not None:
                with open(self.dirs[i] / METRICS, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        self.t_last, self.step_last = time.perf_counter(), self.step

    def save(self, name: str) -> None:
        for r, i in enumerate(self.active):
            if self.dirs[i] is None:
                continue
            member = self.members[i]
            tensors, groups = _optimizer_state(_MemberOptimizer(self.opt, r), self.opt_names)
            meta = {
                "run_format": RUN_FORMAT,
                "step": self.step,
                "seed": member.seed,
                "chain": member.chain.to_dict(),
                "train": self.tc.to_dict(),
                "resume": {
                    "param_groups": groups,
                    "lr_schedule": "TrainConfig.lr_at(step), a function of the step",
                    "param_names": self.opt_names,
                    "train_loss_sum": self.loss_sum[i],
                    "train_loss_count": self.loss_count[i],
                    "wall_seconds": self.wall(i),
                    "data_seeds": "SeedSequence([seed, 1, step]) per training batch",
                },
            }
            model = self.weights.copy_to(r, self.models[i])
            path = self.dirs[i] / CHECKPOINTS / name
            save_checkpoint(path, model, metadata=meta, state=tensors, overwrite=True)

    # --- members that diverge ------------------------------------------------------------
    def drop(self, rows: list[int], values: list[float]) -> None:
        """Members at stacked `rows` got a non-finite loss: give them the trainer's diverged
        summary (their weights are those before this update) and remove them."""
        for r in rows:
            i = self.active[r]
            model = self.weights.copy_to(r, self.models[i]).eval()
            try:
                _diverged(
                    self.dirs[i],
                    self.step,
                    values[r],
                    self.last_lr,
                    self.metrics[i],
                    self.refs[i],
                    self.members[i].seed,
                    self.wall(i),
                )
            except TrainingDiverged as err:
                summary = {
                    "status": "diverged",
                    "message": str(err),
                    "verdict": "neither",
                    "steps": self.step,
                    "seed": self.members[i].seed,
                }
                if self.dirs[i] is not None:
                    summary = json.loads((self.dirs[i] / SUMMARY).read_text())
                self.results[i] = TrainResult(summary, model, self.metrics[i], self.dirs[i])
        keep = [r for r in range(len(self.active)) if r not in rows]
        self.active = [self.active[r] for r in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        tensors, groups = _stack_optimizer_state(self.opt, self.opt_names, index)
        params = {
            n: torch.nn.Parameter(p.detach()[index].clone()) for n, p in self.weights.params.items()
        }
        self.weights = StackedWeights(self.weights.cfg, params)
        self.opt, _ = make_optimizer(self.weights, self.tc)
        _load_optimizer_state(self.opt, self.opt_names, tensors, groups)

    # --- the loop ------------------------------------------------------------------------
    def train_step(self, tokens: Tensor) -> list[float]:
        """One update of every active member; returns their losses, in the order of
        self.active after the update (a member with a non-finite loss is dropped before the
        update, as the trainer stops before it)."""
        while True:
            losses = member_losses(self.forward(tokens).float(), tokens)
            values = losses.detach().tolist()
            bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
            if not bad:
                break
            keep = [r for r in range(len(values)) if r not in bad]
            self.drop(bad, values)
            if not keep:
                return []
            tokens = tokens[keep]
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        if self.tc.grad_clip is not None:
            clip_member_grads(self.weights, self.tc.grad_clip)
        self.opt.step()
        return values

    def run(self, progress: bool, stop_at: int | None) -> list[TrainResult]:
        from tqdm.auto import tqdm

        tc = self.tc
        checkpoint_steps = set(tc.checkpoint_steps())
        self.t_start = self.t_last = time.perf_counter()
        self.step_last = self.step
        self.last_lr = tc.lr_at(0)
        bar = tqdm(
            total=tc.iters,
            initial=self.step,
            disable=None if progress else True,
            desc=f"ensemble x{len(self.members)}",
            dynamic_ncols=True,
        )
        with contextlib.closing(bar):
            if self.step == 0 and not self.metrics[0]:
                t = time.perf_counter()
                self.record_eval()
                t = self._tick("eval_s", t)
                if 0 in checkpoint_steps:
                    self.save(step_dir_name(0))
                    self._tick("save_s", t)
            while self.step < tc.iters and self.active:
                if stop_at is not None and self.step >= stop_at:
                    break
                t = time.perf_counter()
                seeds = [self.members[i].seed for i in self.active]
                chains = [self.members[i].chain for i in self.active]
                tokens = member_batches(chains, seeds, self.step, tc, self.device)
                t = self._tick("data_s", t)
                self.last_lr = tc.lr_at(self.step)
                for group in self.opt.param_groups:
                    group["lr"] = self.last_lr
                values = self.train_step(tokens)
                t = self._tick("step_s", t)
                if self.timings is not None:
                    self.timings["steps"] = self.timings.get("steps", 0) + 1
                if not self.active:
                    break
                self.step += 1
                for i, v in zip(self.active, values, strict=True):
                    self.loss_sum[i] += v
                    self.loss_count[i] += 1
                bar.update(1)
                if self.step % tc.eval_every == 0 or self.step == tc.iters:
                    self.record_eval()
                    losses = [self.metrics[i][-1]["eval_loss"] for i in self.active]
                    bar.set_postfix(mean_loss=f"{sum(losses) / len(losses):.4f}", refresh=False)
                    t = self._tick("eval_s", t)
                if self.step in checkpoint_steps:
                    self.save(step_dir_name(self.step))
                    self._tick("save_s", t)
                elif tc.save_every and self.step % tc.save_every == 0:
                    self.save(LATEST)
                    self._tick("save_s", t)
        return self.finish()

    def finish(self) -> list[TrainResult]:
        tc = self.tc
        paused = self.step < tc.iters
        if paused and self.step not in set(tc.checkpoint_steps()):
            self.save(LATEST)
        for r, i in enumerate(self.active):
            model = self.weights.copy_to(r, self.models[i]).eval()
            member, run_dir = self.members[i], self.dirs[i]
            if paused:
                summary = {
                    "status": "paused",
                    "steps": self.step,
                    "seed": member.seed,
                    "wall_seconds": self.wall(i),
                }
                self.results[i] = TrainResult(summary, model, self.metrics[i], run_dir)
                continue
            refs = self.refs[i]
            gap = refs["unigram_loss"] - refs["optimal_loss"]
            summary = _summary(
                self.metrics[i],
                refs,
                gap,
                member.chain,
                tc,
                member.seed,
                self.wall(i),
                self.device,
                model,
            )
            summary["ensemble_members"] = len(self.members)
            if run_dir is not None:
                write_json_atomic(run_dir / SUMMARY, summary)
                shutil.rmtree(run_dir / CHECKPOINTS / LATEST, ignore_errors=True)
                shutil.rmtree(run_dir / CHECKPOINTS / f".{LATEST}.old", ignore_errors=True)
            self.results[i] = TrainResult(summary, model, self.metrics[i], run_dir)
        return self.results  # type: ignore[return-value]


# ------------------------------------------------------------------------------ sweeps


def _task_dict(task: Any) -> dict[str, Any]:
    return task if isinstance(task, dict) else task.to_dict()


def group_key(task: Any) -> str:
    """JSON key shared by sweep tasks (training.sweeps.RunTask or its dict) that can be
    trained as one ensemble: same architecture and same recipe (device included)."""
    t = _task_dict(task)
    rc = build_run_config(t["options"] | {"seed": t["seed"]})
    return json.dumps(
        {"model": architecture_key(rc.model), "train": rc.train.to_dict()}, sort_keys=True
    )


def default_max_members(run_config: RunConfig, budget: int = DEFAULT_RESIDUAL_BUDGET) -> int:
    """Members per ensemble that keep members * batch * seq_len * n_layers * d_model (the
    residual-stream floats of one step) under `budget` (at least 1)."""
    tc, mc = run_config.train, run_config.model
    per_member = tc.batch * tc.seq_len * mc.n_layers * mc.d_model
    return max(1, budget // per_member)


def plan_groups(
    tasks: Iterable[Any], max_members: int | None = None
) -> tuple[list[list[dict]], list[dict]]:
    """Split sweep tasks into ensembles (lists of >= 2 tasks of one group_key, at most
    max_members each; default by memory, default_max_members) and the rest (tasks alone in
    their group, or whose options do not build: those are left to the trainer to report)."""
    by_key: dict[str, list[dict]] = {}
    rest: list[dict] = []
    caps: dict[str, int] = {}
    for task in tasks:
        t = _task_dict(task)
        try:
            key = group_key(t)
        except (ValueError, KeyError, TypeError):
            rest.append(t)
            continue
        if key not in caps:
            rc = build_run_config(t["options"] | {"seed": t["seed"]})
            caps[key] = max_members or default_max_members(rc)
        by_key.setdefault(key, []).append(t)
    groups: list[list[dict]] = []
    for key, ts in by_key.items():
        chunks = [ts[j : j + caps[key]] for j in range(0, len(ts), caps[key])]
        for chunk in chunks:
            (groups if len(chunk) > 1 else rest).append(chunk if len(chunk) > 1 else chunk[0])
    return groups, rest


def run_group(tasks: Sequence[Any], progress: bool = False) -> list[dict[str, Any]]:
    """Train sweep tasks (training.sweeps.RunTask or their dicts: options, seed, run_dir) of
    one architecture and recipe as one ensemble, resuming interrupted ones; finished ones are
    only read. Returns their summaries (a diverged member's is its "diverged" summary)."""
    ts = [_task_dict(t) for t in tasks]
    configs = [build_run_config(t["options"] | {"seed": t["seed"]}) for t in ts]
    results = train_ensemble(
        configs,
        configs[0].train,
        out_dirs=[t["run_dir"] for t in ts],
        resume=True,
        progress=progress,
    )
    return [dict(r) for r in results]


def ensemble_backend(
    run_fn: Callable[[dict], dict],
    tasks: list[dict],
    workers: int,
    max_members: int | None = None,
) -> Iterator[dict]:
    """A training.sweeps backend: tasks of one architecture and recipe are trained together
    (run_group, in this process), then each is reported by `run_fn` (which reads its finished
    run); the other tasks go to the local backend with `workers` processes. If an ensemble
    fails, its tasks are handed to `run_fn` one by one (it resumes each from the ensemble's
    checkpoints, or reports the error)."""
    from training.sweeps import local_backend

    groups, rest = plan_groups(tasks, max_members)
    for group in groups:
        try:
            run_group(group)
        except Exception as err:  # noqa: BLE001 - the runs are retried one by one below
            warnings.warn(
                f"ensemble of {len(group)} runs failed ({type(err).__name__}: {err}); "
                "training them one by one",
                stacklevel=2,
            )
        for task in group:
            yield run_fn(task)
    yield from local_backend(run_fn, rest, workers)
