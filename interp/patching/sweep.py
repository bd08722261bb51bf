"""Batched activation patching: every (layer, position[, head]) patch through the model's hooks.

``patch_sweep`` returns what ``transformer_lens.patching.get_act_patch_*`` returns for a metric
that reads the logits at a few readout positions R (default the last one). Like
TransformerLens it runs the model itself with a hook at the patched activation (the model's
forward is the only forward; its fused attention is taken wherever no hook watches the scores
or the pattern), but instead of one forward pass per patch it

1. runs the target once (the run being patched: corrupted tokens for denoising, clean ones
   for noising) with ``run_with_cache``, or takes that run's cache from the caller
   (``target_run``; ``cache_runs`` runs a clean / corrupted pair once for every sweep);
2. skips every (patch, sequence) pair whose patch changes nothing the readout can see: the
   source's slice equals the target's own (bitwise; for a corruption at position n, every
   position before n in every layer), or lies after the last readout (causal attention).
   Those give the target's metric;
3. runs the remaining pairs as copies of their target sequence, many per forward pass
   (chunked to bound memory), each sequence cut after the last readout, with one hook per
   patched layer that writes every copy's patched slice in one vectorised index assignment.

The cost is one forward pass per patch that changes something, as in TransformerLens, less
the Python overhead (batched) and the positions after the last readout; the speed-ups
``benchmarks/bench_patching.py`` prints come from the skipped pairs (a flip of the last token:
one position per layer to patch) and the batching (every position differs: a resample
corruption, mean or resample ablation).

Activation kinds (TransformerLens names, result layouts as ``get_act_patch_*``):

- "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out": [layer, pos]
- "z", "q", "k", "v" per head: [layer, pos, head]; with ``by_pos=False`` (all positions at
  once, ``get_act_patch_attn_head_*_all_pos``): [layer, head]
- "pattern": [layer, head, dest_pos]; with ``by_pos=False``: [layer, head]
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.corruptions import PatchingData

if TYPE_CHECKING:
    from training.model import MarkovTransformer

LAYER_ACTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_ACTS = ("z", "q", "k", "v")
ACTS = LAYER_ACTS + HEAD_ACTS + ("pattern",)
DEFAULT_BUDGET = 1 << 24  # float elements of the largest tensor of one forward pass

Metric = Callable[[Float[Tensor, "*patch batch readout vocab"]], Float[Tensor, "*patch batch"]]
CachedRun = tuple[Tensor, dict[str, Tensor]]  # (logits, hook name -> activation) of one batch


def hook_name(act: str, layer: int) -> str:
    """TransformerLens hook name of ``act`` in ``layer`` (``utils.get_act_name`` convention)."""
    if act in LAYER_ACTS:
        return f"blocks.{layer}.hook_{act}"
    if act in HEAD_ACTS + ("pattern",):
        return f"blocks.{layer}.attn.hook_{act}"
    raise ValueError(f"unknown activation {act!r}; allowed: {ACTS}")


def result_axes(act: str, by_pos: bool = True) -> tuple[str, ...]:
    """Names of the result axes of a sweep over ``act`` (as get_act_patch_*)."""
    if act in LAYER_ACTS:
        return ("layer", "pos") if by_pos else ("layer",)
    if act in HEAD_ACTS:
        return ("layer", "pos", "head") if by_pos else ("layer", "head")
    if act == "pattern":
        return ("layer", "head", "dest_pos") if by_pos else ("layer", "head")
    raise ValueError(f"unknown activation {act!r}; allowed: {ACTS}")


def cache_run(
    model: MarkovTransformer, tokens: Int[Tensor, "batch pos"], names: Collection[str] | None = None
) -> CachedRun:
    """(logits, cache) of ``model`` on ``tokens``: every hook (names None; the explicit
    attention branch, as ``run_with_cache``), or only the hooks in ``names`` (the fused
    attention branch unless they include a score or pattern hook)."""
    if names is None:
        return model.run_with_cache(tokens, return_cache_object=False)
    wanted = set(names)
    return model.run_with_cache(
        tokens, names_filter=lambda name: name in wanted, return_cache_object=False
    )


@dataclass(frozen=True)
class PatchingRuns:
    """The clean and the corrupted batch of a ``PatchingData``, each run once with a cache:
    computed by ``cache_runs`` and shared by ``run_patching`` (both directions),
    ``run_ablation`` and ``direct_path_effects`` instead of each running both batches again."""

    clean: CachedRun
    corrupt: CachedRun


@torch.no_grad()
def cache_runs(
    model: MarkovTransformer, data: PatchingData, names: Collection[str] | None = None
) -> PatchingRuns:
    """``cache_run`` of ``data``'s clean and corrupted batches (on the model's device). Every
    hook (names None) for ``run_patching`` / ``run_ablation``; ``direct_path_hooks(model.cfg)``
    for ``direct_path_effects`` alone (fused attention, as it computes them itself)."""
    data = data.to(model.W_E.device)
    return PatchingRuns(cache_run(model, data.clean, names), cache_run(model, data.corrupt, names))


def check_cached(cache: dict[str, Tensor], names: Collection[str], what: str) -> None:
    missing = sorted(set(names) - set(cache))
    if missing:
        raise ValueError(f"{what} has no activation {', '.join(map(repr, missing))}")


def check_act(model: MarkovTransformer, act: str) -> None:
    if act not in ACTS:
        raise ValueError(f"unknown activation {act!r}; allowed: {ACTS}")
    if model.cfg.attn_only and act in ("resid_mid", "mlp_out"):
        raise ValueError(f"{act!r} does not exist in an attention-only model")


def _index_grid(act: str, by_pos: bool, n_layers: int, n: int, n_heads: int) -> Tensor:
    """All patch indices [n_patches, 3] = (layer, pos, head) in result order; -1 = all."""
    if act in LAYER_ACTS:
        if not by_pos:
            layers = torch.arange(n_layers)
            return torch.stack(
                [layers, torch.full_like(layers, -1), torch.full_like(layers, -1)], 1
            )
        grid = torch.cartesian_prod(torch.arange(n_layers), torch.arange(n))
        return torch.cat([grid, torch.full((len(grid), 1), -1)], 1)
    if act in HEAD_ACTS and by_pos:
        return torch.cartesian_prod(torch.arange(n_layers), torch.arange(n), torch.arange(n_heads))
    if act == "pattern" and by_pos:  # result order (layer, head, dest_pos)
        g = torch.cartesian_prod(torch.arange(n_layers), torch.arange(n_heads), torch.arange(n))
        return g[:, [0, 2, 1]]
    g = torch.cartesian_prod(torch.arange(n_layers), torch.arange(n_heads))
    return torch.stack([g[:, 0], torch.full((len(g),), -1), g[:, 1]], 1)


def _result_shape(act: str, by_pos: bool, n_layers: int, n: int, n_heads: int) -> tuple[int, ...]:
    sizes = {"layer": n_layers, "pos": n, "head": n_heads, "dest_pos": n}
    return tuple(sizes[a] for a in result_axes(act, by_pos))


def _truncate(act: str, x: Tensor, t: int) -> Tensor:
    """An activation of ``act`` [batch, pos, ...] ([batch, head, q, k] for patterns) cut to
    its first ``t`` positions."""
    return x[:, :, :t, :t] if act == "pattern" else x[:, :t]


def _changed(act: str, by_pos: bool, src: Tensor, tgt: Tensor, n: int, t: int) -> Tensor:
    """Bool [patches of one layer (result order), batch]: does the patch write into target
    sequence b a value that differs from the target's own, at a position < t? (A patch that
    writes what is already there, or only at positions no readout can see, changes nothing.)"""
    diff = _truncate(act, src, t) != _truncate(act, tgt, t)
    batch = diff.shape[0]
    if act == "pattern":
        diff = diff.any(-1)  # [batch, head, dest_pos]
        if not by_pos:
            return diff.any(-1).T
        full = diff.new_zeros(batch, diff.shape[1], n)
        full[:, :, :t] = diff
        return full.permute(1, 2, 0).reshape(-1, batch)
    diff = diff.flatten(2).any(-1) if act in LAYER_ACTS else diff.any(-1)  # [batch, t(, head)]
    if not by_pos:
        return diff.any(1).reshape(batch, -1).T
    full = diff.new_zeros(batch, n, *diff.shape[2:])
    full[:, :t] = diff
    return full.reshape(batch, -1).T  # (pos, head) order


def _patch_hook(act: str, by_pos: bool, src: Tensor, copy: Tensor, seq: Tensor, at: Tensor):
    """Forward hook writing, for every k at once, the source's slice at patch index at[k] =
    (pos, head) of target sequence seq[k] into batch row copy[k] of the activation."""
    pos, head = at[:, 0], at[:, 1]
    if act in LAYER_ACTS:
        where = (pos,) if by_pos else ()
    elif act in HEAD_ACTS:
        where = (pos, head) if by_pos else (slice(None), head)
    else:  # pattern [batch, head, dest_pos, src_pos]
        where = (head, pos) if by_pos else (head,)
    values = src[(seq, *where)]

    def write(x: Tensor, hook) -> Tensor:
        x[(copy, *where)] = values
        return x

    return write


def _run_copies(
    model: MarkovTransformer,
    tokens: Tensor,
    act: str,
    by_pos: bool,
    sources: list[Tensor],
    index: Tensor,
    seq: Tensor,
    readout: Tensor,
) -> Tensor:
    """Readout logits [K, readout, vocab] of K patched copies in one forward pass of the model:
    copy k is target sequence seq[k] (``tokens`` is cut to the last readout) with patch
    index[k] = (layer, pos, head); one hook per patched layer writes all of its copies."""
    hooks = []
    for layer in index[:, 0].unique().tolist():
        k = (index[:, 0] == layer).nonzero()[:, 0]
        src = _truncate(act, sources[layer], tokens.shape[1])
        hooks.append(
            (hook_name(act, layer), _patch_hook(act, by_pos, src, k, seq[k], index[k, 1:]))
        )
    logits = model.run_with_hooks(tokens.index_select(0, seq), fwd_hooks=hooks)
    return logits[:, readout]


def _blocks(counts: list[int], max_copies: int, max_patches: int) -> list[tuple[int, int]]:
    """Consecutive ranges of patches with at most ``max_copies`` patched copies (or a single
    patch) and at most ``max_patches`` patches each."""
    blocks, start, copies = [], 0, 0
    for i, count in enumerate(counts):
        if i > start and (copies + count > max_copies or i - start >= max_patches):
            blocks.append((start, i))
            start, copies = i, 0
        copies += count
    blocks.append((start, len(counts)))
    return blocks


@torch.no_grad()
def patch_sweep(
    model: MarkovTransformer,
    target_tokens: Int[Tensor, "batch pos"],
    source: dict[str, Tensor],
    act: str,
    metric: Metric,
    *,
    by_pos: bool = True,
    readout: Sequence[int] = (-1,),
    reduce: str = "mean",
    budget: int = DEFAULT_BUDGET,
    target_run: CachedRun | None = None,
) -> Tensor:
    """Patch ``source`` activations of kind ``act`` into the run on ``target_tokens``, one
    (layer, position[, head]) at a time, and return the metric for every patch (layout:
    ``result_axes(act, by_pos)``, plus a trailing batch axis with reduce="none").

    source: hook name -> activation of the same shape as the target's (e.g. a clean run's
    cache for denoising; see ``ablation_source`` for mean / resample ablation).
    metric: logits at the ``readout`` positions [*patch, batch, readout, vocab] ->
    [*patch, batch]; it must not read other positions (they are not computed).
    budget: bound (float elements) on the largest tensor of one forward pass.
    target_run: the target's (logits, cache) from ``cache_run(model, target_tokens)`` (every
    hook) if already computed; None: the sweep runs the target itself.
    """
    check_act(model, act)
    result_axes(act, by_pos)
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    if model.training:
        raise ValueError("patch the model in eval mode (model.eval())")
    dev = model.W_E.device
    tokens = model.check_tokens(target_tokens).to(dev)
    B, N = tokens.shape
    R = sorted({r + N if r < 0 else r for r in readout})
    if not R or R[0] < 0 or R[-1] >= N:
        raise ValueError(f"readout positions {list(readout)} must lie in 0..{N - 1}")
    cfg = model.cfg
    names = [hook_name(act, layer) for layer in range(cfg.n_layers)]
    for name in names:
        if name not in source:
            raise ValueError(f"source has no activation {name!r}")
    # Cache every hook, as the source usually was (run_with_cache): the same branch of the
    # attention, so equal activations compare bitwise equal in ``_changed``.
    if target_run is None:
        target_run = cache_run(model, tokens)
    logits, target = target_run
    check_cached(target, names, "target_run")
    if tuple(logits.shape[:2]) != (B, N):
        raise ValueError(
            f"target_run's logits have shape {tuple(logits.shape)}, not those of the "
            f"target tokens {(B, N)}"
        )
    for name in names:
        if tuple(source[name].shape) != tuple(target[name].shape):
            raise ValueError(
                f"source {name!r} has shape {tuple(source[name].shape)}, the target run's is "
                f"{tuple(target[name].shape)} (same batch size and length needed)"
            )
    sources = [source[name].to(dev) for name in names]
    # Causal: the readout logits depend on the first T positions only. A patched pattern row
    # that weights later keys (no real pattern does) reads them, so then keep every position.
    T = R[-1] + 1
    if act == "pattern" and any(bool(s[:, :, :T, T:].any()) for s in sources):
        T = N
    changed = torch.cat(
        [_changed(act, by_pos, s, target[n], N, T) for s, n in zip(sources, names, strict=True)]
    )  # [patches, B]
    index = _index_grid(act, by_pos, cfg.n_layers, N, cfg.n_heads).to(dev)
    readout_t = torch.tensor(R, device=dev)
    base = logits[:, readout_t]  # [B, R, V]: every patch that changes nothing gives these
    width = max(cfg.d_model, cfg.n_heads * cfg.d_head, cfg.d_vocab)
    width = max(width, 0 if cfg.attn_only else cfg.d_mlp)
    max_copies = max(1, budget // max(cfg.n_heads * T * T, T * width))
    max_patches = max(1, budget // base.numel())
    counts = changed.sum(1).tolist()
    out = torch.empty(len(index), B, device=dev, dtype=model.W_E.dtype)
    for start, stop in _blocks(counts, max_copies, max_patches):
        block = base.expand(stop - start, *base.shape).clone()  # [patches, B, R, V]
        patch, seq = changed[start:stop].nonzero(as_tuple=True)
        if len(patch):
            block[patch, seq] = _run_copies(
                model, tokens[:, :T], act, by_pos, sources, index[start + patch], seq, readout_t
            )
        out[start:stop] = metric(block).to(out.dtype)
    out = out.view(*_result_shape(act, by_pos, cfg.n_layers, N, cfg.n_heads), B)
    return out.mean(-1) if reduce == "mean" else out
