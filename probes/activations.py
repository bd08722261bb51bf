"""Cached activations of a model over held-out sequences, streamed batch by batch.

A *component* names where an activation is read, by a short name (or a raw hook name):

    embed, pos_embed                       hook_embed, hook_pos_embed
    resid_pre.L, resid_mid.L, resid_post.L blocks.L.hook_resid_{pre,mid,post}
    attn_out.L, mlp_out.L                  blocks.L.hook_{attn,mlp}_out
    mlp_pre.L, mlp_post.L                  blocks.L.mlp.hook_{pre,post}     (d_mlp wide)
    z.L.H, result.L.H                      head H of blocks.L.attn.hook_{z,result}
    z.L, result.L                          all heads of layer L, concatenated
    resid_final                            resid_post of the last layer (aligns runs of
                                           different depth in across-runs tables)
    ln_final                               ln_final.hook_normalized (before its weight)
    blocks.0.hook_resid_post, ...          any hook with activations [batch, pos, ...]

Groups expand to several components: ``resid`` (embed, resid_pre of every layer,
resid_final, ln_final), ``outputs`` (attn_out, mlp_out), ``heads`` (result.L.H), ``mlp``
(mlp_post), ``default`` (embed, every block's resid_pre, attn_out, resid_mid, mlp_out, then
resid_final and ln_final; per-head results when n_heads > 1) and ``all`` (default plus
pos_embed, every head's result and mlp_post).

``cache_activations`` runs ``model.run_with_cache(names_filter=...)`` on one batch at a
time and keeps only the requested positions of the requested hooks (float32, on
``store_device``), so memory is bounded by n_seqs x n_positions x width, not by the full
cache of every batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.chains import InContextChain, MarkovChain
from training.model import MarkovTransformer

LAYER_KINDS = {
    "resid_pre": "blocks.{i}.hook_resid_pre",
    "resid_mid": "blocks.{i}.hook_resid_mid",
    "resid_post": "blocks.{i}.hook_resid_post",
    "attn_out": "blocks.{i}.hook_attn_out",
    "mlp_out": "blocks.{i}.hook_mlp_out",
    "mlp_pre": "blocks.{i}.mlp.hook_pre",
    "mlp_post": "blocks.{i}.mlp.hook_post",
}
HEAD_KINDS = {"z": "blocks.{i}.attn.hook_z", "result": "blocks.{i}.attn.hook_result"}
GLOBAL = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final": "ln_final.hook_normalized",
}
GROUPS = ("default", "resid", "outputs", "heads", "mlp", "all")
NOT_POSITIONAL = ("hook_attn_scores", "hook_pattern")
MLP_KINDS = ("resid_mid", "mlp_out", "mlp_pre", "mlp_post")


@dataclass(frozen=True)
class Component:
    """Where an activation is read: a hook, and a head of it (None = all heads / no heads)."""

    name: str
    hook: str
    head: int | None = None

    def select(self, act: Float[Tensor, "batch pos ..."]) -> Float[Tensor, "batch pos width"]:
        """The component's features from the hook's activation, flattened to one width."""
        if self.head is not None:
            act = act[:, :, self.head]
        return act.reshape(act.shape[0], act.shape[1], -1)


def _layer_ok(cfg, kind: str, layer: int, name: str) -> None:
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"component {name!r}: layer {layer} outside 0..{cfg.n_layers - 1}")
    if cfg.attn_only and kind in MLP_KINDS:
        raise ValueError(f"component {name!r}: the model is attention-only (no MLP, no resid_mid)")


def parse_component(cfg, name: str) -> Component:
    """One component from its short name or raw hook name; ValueError naming what is allowed."""
    if name == "resid_final":
        return Component(name, f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    if name in GLOBAL:
        if name == "pos_embed" and cfg.positional_embedding_type != "standard":
            raise ValueError("component 'pos_embed': the model has no positional embedding")
        if name == "ln_final" and cfg.normalization_type != "LN":
            raise ValueError("component 'ln_final': the model has no final LayerNorm")
        return Component(name, GLOBAL[name])
    m = re.fullmatch(r"([a-z_]+)\.(\d+)(?:\.(\d+))?", name)
    if m and (m.group(1) in LAYER_KINDS or m.group(1) in HEAD_KINDS):
        kind, layer = m.group(1), int(m.group(2))
        head = None if m.group(3) is None else int(m.group(3))
        _layer_ok(cfg, kind, layer, name)
        if kind in LAYER_KINDS:
            if head is not None:
                raise ValueError(f"component {name!r}: {kind} has no heads; use {kind}.{layer}")
            return Component(name, LAYER_KINDS[kind].format(i=layer))
        if head is not None and not 0 <= head < cfg.n_heads:
            raise ValueError(f"component {name!r}: head {head} outside 0..{cfg.n_heads - 1}")
        return Component(name, HEAD_KINDS[kind].format(i=layer), head)
    if "hook" in name:
        if name.endswith(NOT_POSITIONAL):
            raise ValueError(
                f"component {name!r}: attention scores/patterns are [batch, head, query, key], "
                "not one vector per position; probe hook_z or hook_result instead"
            )
        return Component(name, name)
    raise ValueError(
        f"unknown component {name!r}; allowed: {sorted(GLOBAL) + ['resid_final']}, KIND.LAYER with KIND in "
        f"{sorted(LAYER_KINDS)}, z.LAYER[.HEAD], result.LAYER[.HEAD], a hook name, or a group "
        f"{list(GROUPS)}"
    )


def expand_group(cfg, group: str) -> list[str]:
    """Component names of a group (see the module docstring)."""
    L, H = cfg.n_layers, cfg.n_heads
    mlp = not cfg.attn_only
    ln = ["ln_final"] if cfg.normalization_type == "LN" else []
    if group == "resid":
        return ["embed"] + [f"resid_pre.{i}" for i in range(L)] + ["resid_final"] + ln
    if group == "outputs":
        return [n for i in range(L) for n in [f"attn_out.{i}"] + ([f"mlp_out.{i}"] if mlp else [])]
    if group == "heads":
        return [f"result.{i}.{h}" for i in range(L) for h in range(H)]
    if group == "mlp":
        return [f"mlp_post.{i}" for i in range(L)] if mlp else []
    if group in ("default", "all"):
        names = ["embed"]
        if group == "all" and cfg.positional_embedding_type == "standard":
            names.append("pos_embed")
        for i in range(L):
            names += [f"resid_pre.{i}", f"attn_out.{i}"]
            if H > 1 or group == "all":
                names += [f"result.{i}.{h}" for h in range(H)]
            if mlp:
                names += [f"resid_mid.{i}"] + ([f"mlp_post.{i}"] if group == "all" else [])
                names += [f"mlp_out.{i}"]
        return names + ["resid_final"] + ln
    raise ValueError(f"unknown component group {group!r}; allowed: {list(GROUPS)}")


def resolve_components(cfg, names: list[str] | str | None = None) -> list[Component]:
    """Components for names and groups (default: the ``default`` group), duplicates dropped,
    order kept."""
    if names is None:
        names = ["default"]
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("no components given")
    out: dict[str, Component] = {}
    for name in names:
        for n in expand_group(cfg, name) if name in GROUPS else [name]:
            out.setdefault(n, parse_component(cfg, n))
    return list(out.values())


ORDER = (
    "resid_pre",
    "attn_out",
    "z",
    "result",
    "resid_mid",
    "mlp_pre",
    "mlp_post",
    "mlp_out",
    "resid_post",
)


def component_sort_key(name: str) -> tuple:
    """Forward-pass order of component names (embed first, ln_final last; raw hook names after
    the named ones), for tables that mix runs of different depths."""
    if name in ("embed", "pos_embed"):
        return (0, 0, 0 if name == "embed" else 1, 0)
    if name == "resid_final":
        return (2, 0, 0, 0)
    if name == "ln_final":
        return (3, 0, 0, 0)
    m = re.fullmatch(r"([a-z_]+)\.(\d+)(?:\.(\d+))?", name)
    if m and m.group(1) in ORDER:
        return (1, int(m.group(2)), ORDER.index(m.group(1)), int(m.group(3) or 0))
    return (4, 0, 0, 0)


def sample_positions(
    seq_len: int, n_positions: int | None, generator: torch.Generator | None = None
) -> Int[Tensor, " n_pos"]:
    """Positions kept for probing: all (None or >= seq_len) or a sorted uniform subset shared
    by every sequence (shared, so sequence-level shuffles keep positions aligned)."""
    if n_positions is None or n_positions >= seq_len:
        return torch.arange(seq_len)
    if n_positions < 1:
        raise ValueError(f"n_positions must be >= 1 (or None for all), got {n_positions}")
    return torch.randperm(seq_len, generator=generator)[:n_positions].sort().values


def held_out_tokens(
    chain: MarkovChain, n_seqs: int, seq_len: int, seed: int
) -> tuple[Int[Tensor, "seq pos"], Float[Tensor, "seq ..."] | None]:
    """Fresh sequences from the chain (seeded; training draws fresh batches too, so these are
    held out with probability ~1) and, for in-context chains, each sequence's kernel."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(chain, InContextChain):
        tokens, kernels = chain.sample(n_seqs, seq_len, generator=gen, return_kernels=True)
        return tokens, kernels
    return chain.sample(n_seqs, seq_len, generator=gen), None


@dataclass
class ActivationSet:
    """Activations of some components at some positions of some sequences.

    tokens: the full sequences [seq, seq_len]; positions: the kept positions [n_pos] (0-based,
    position i holds x_{i+1}); acts[name]: [seq, n_pos, width] float32; log_probs: the model's
    next-token log-probabilities at the kept positions [seq, n_pos, d_vocab] (nats).
    """

    tokens: Int[Tensor, "seq seq_len"]
    positions: Int[Tensor, " n_pos"]
    acts: dict[str, Float[Tensor, "seq n_pos width"]]
    log_probs: Float[Tensor, "seq n_pos d_vocab"]
    kernels: Float[Tensor, "seq ..."] | None = None
    components: list[Component] = field(default_factory=list)

    @property
    def n_seqs(self) -> int:
        return self.tokens.shape[0]

    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() for a in self.acts.values())


@torch.no_grad()
def cache_activations(
    model: MarkovTransformer,
    tokens: Int[Tensor, "seq seq_len"],
    components: list[Component] | list[str] | None = None,
    *,
    positions: Int[Tensor, " n_pos"] | None = None,
    batch_size: int = 64,
    kernels: Tensor | None = None,
    store_device: str | torch.device = "cpu",
) -> ActivationSet:
    """Run ``model`` over ``tokens`` in batches, keeping ``components`` at ``positions``.

    Uses ``run_with_cache(names_filter=...)``, so only the needed hooks are stored; hook_result
    is switched on for the call when a ``result`` component asks for it (and restored).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokens = model.check_tokens(tokens)
    if components is None or (components and isinstance(components[0], str)):
        components = resolve_components(model.cfg, components)
    hooks = {c.hook for c in components}
    unknown = sorted(h for h in hooks if h not in model.hook_dict)
    if unknown:
        raise ValueError(f"hooks {unknown} do not exist on this model")
    seq_len = tokens.shape[1]
    positions = torch.arange(seq_len) if positions is None else torch.as_tensor(positions).long()
    if positions.numel() == 0 or positions.min() < 0 or positions.max() >= seq_len:
        raise ValueError(f"positions must lie in 0..{seq_len - 1}, got {positions.tolist()[:8]}...")
    device = model.W_E.device
    pos_dev = positions.to(device)
    need_result = any(c.hook.endswith("hook_result") for c in components)
    old_result = model.cfg.use_attn_result
    if need_result:
        model.set_use_attn_result(True)
    parts: dict[str, list[Tensor]] = {c.name: [] for c in components}
    lps: list[Tensor] = []
    try:
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size].to(device)
            logits, cache = model.run_with_cache(
                batch, names_filter=lambda n: n in hooks, return_cache_object=False
            )
            for c in components:
                act = c.select(cache[c.hook][:, pos_dev])
                parts[c.name].append(act.float().to(store_device))
            lps.append(logits[:, pos_dev].float().log_softmax(-1).to(store_device))
            del cache, logits
    finally:
        model.set_use_attn_result(old_result)
    return ActivationSet(
        tokens=tokens.cpu(),
        positions=positions.cpu(),
        acts={name: torch.cat(v) for name, v in parts.items()},
        log_probs=torch.cat(lps),
        kernels=None if kernels is None else kernels.cpu(),
        components=list(components),
    )
