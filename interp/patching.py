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

Metrics map logits [*patches, batch, readout, vocab] to [*patches, batch] (nats or logits).
Normalised effect (docs/theory.md section 5): (M - M_corrupt) / (M_clean - M_corrupt), on batch
means; denoising (clean activations into the corrupted run) measures sufficiency (1 = the patch
restores the clean behaviour), noising (corrupted activations into the clean run) measures
necessity (0 = the patch destroys it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.corruptions import PatchingData

if TYPE_CHECKING:
    from training.config import ModelConfig
    from training.model import MarkovTransformer

LAYER_ACTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_ACTS = ("z", "q", "k", "v")
ACTS = LAYER_ACTS + HEAD_ACTS + ("pattern",)
DIRECTIONS = ("denoise", "noise")
METRICS = ("logit_diff", "logprob")
ABLATIONS = ("mean", "resample")
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


def _check_cached(cache: dict[str, Tensor], names: Collection[str], what: str) -> None:
    missing = sorted(set(names) - set(cache))
    if missing:
        raise ValueError(f"{what} has no activation {', '.join(map(repr, missing))}")


def _check_act(model: MarkovTransformer, act: str) -> None:
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
    _check_act(model, act)
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
    _check_cached(target, names, "target_run")
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


# ------------------------------------------------------------------------ metrics and runs


def make_metric(name: str, data: PatchingData) -> Metric:
    """The per-example metric ``name`` on the last readout position (nats / logits):

    - "logit_diff": logit[answer] - logit[foil], the two tokens whose true probability the
      corruption lowers / raises most (binary: the clean-favoured token minus the other);
      0 for examples the corruption leaves unchanged under the true law;
    - "logprob": log-probability of the true next token x_{N+1} (the label).
    """
    if name not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {name!r}")
    if name == "logit_diff":
        answer, foil, weight = data.answer, data.foil, data.informative.float()

        def logit_diff(logits: Tensor) -> Tensor:
            last = logits[..., -1, :]
            idx = torch.stack([answer, foil], -1).to(last.device)
            picked = last.gather(-1, idx.expand(*last.shape[:-1], 2))
            return (picked[..., 0] - picked[..., 1]) * weight.to(last.device)

        return logit_diff
    labels = data.labels

    def logprob(logits: Tensor) -> Tensor:
        last = logits[..., -1, :].log_softmax(-1)
        idx = labels.to(last.device).expand(last.shape[:-1])
        return last.gather(-1, idx[..., None])[..., 0]

    return logprob


def normalise(raw: Tensor, clean: float, corrupt: float) -> Tensor:
    """(M - M_corrupt) / (M_clean - M_corrupt); nan where clean == corrupt (nothing to
    recover: the model does not react to the corruption)."""
    gap = clean - corrupt
    if abs(gap) < 1e-12:
        return torch.full_like(raw, float("nan"))
    return (raw - corrupt) / gap


@dataclass
class PatchingResult:
    """Batch-mean patching sweeps of one corruption, direction and metric.

    raw[act]: the metric after each patch (layout ``result_axes(act)``); clean / corrupt: the
    unpatched metric on each batch; true_clean / true_corrupt: a perfect predictor's.
    """

    corruption: str
    direction: str
    metric: str
    clean: float
    corrupt: float
    true_clean: float
    true_corrupt: float
    position: int
    raw: dict[str, Tensor] = field(default_factory=dict)

    def normalised(self, act: str) -> Tensor:
        return normalise(self.raw[act], self.clean, self.corrupt)

    @property
    def effect(self) -> float:
        """M_clean - M_corrupt: how much the model reacts to the corruption."""
        return self.clean - self.corrupt

    @property
    def true_effect(self) -> float:
        return self.true_clean - self.true_corrupt

    def to_dict(self) -> dict:
        return {
            "corruption": self.corruption,
            "direction": self.direction,
            "metric": self.metric,
            "position": self.position,
            "clean": self.clean,
            "corrupt": self.corrupt,
            "true_clean": self.true_clean,
            "true_corrupt": self.true_corrupt,
            "raw": {a: v.tolist() for a, v in self.raw.items()},
            "normalised": {a: self.normalised(a).tolist() for a in self.raw},
            "axes": {a: list(result_axes(a)) for a in self.raw},
        }


@torch.no_grad()
def run_patching(
    model: MarkovTransformer,
    data: PatchingData,
    acts: Sequence[str] = ("resid_pre", "attn_out", "mlp_out", "z"),
    direction: str = "denoise",
    metric: str = "logit_diff",
    budget: int = DEFAULT_BUDGET,
    runs: PatchingRuns | None = None,
) -> PatchingResult:
    """Patch every (layer, position[, head]) of each activation kind in ``acts``.

    direction "denoise": clean activations into the corrupted run (sufficiency);
    "noise": corrupted activations into the clean run (necessity).
    runs: ``cache_runs(model, data)`` (every hook) if already computed, e.g. shared between
    both directions; None: both batches are run here.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    for act in acts:
        _check_act(model, act)
    dev = model.W_E.device
    data = data.to(dev)
    fn = make_metric(metric, data)
    if runs is None:
        runs = cache_runs(model, data)
    (clean_logits, clean_cache), (corrupt_logits, corrupt_cache) = runs.clean, runs.corrupt
    m_clean = float(fn(clean_logits[:, -1:]).mean())
    m_corrupt = float(fn(corrupt_logits[:, -1:]).mean())
    if metric == "logit_diff":
        true_clean, true_corrupt = data.true_logit_diff()
    else:
        true_clean, true_corrupt = data.true_logprob()
    if direction == "denoise":
        target, target_run, source = data.corrupt, runs.corrupt, clean_cache
    else:
        target, target_run, source = data.clean, runs.clean, corrupt_cache
    raw = {
        act: patch_sweep(model, target, source, act, fn, budget=budget, target_run=target_run).cpu()
        for act in acts
    }
    return PatchingResult(
        corruption=data.corruption,
        direction=direction,
        metric=metric,
        clean=m_clean,
        corrupt=m_corrupt,
        true_clean=true_clean,
        true_corrupt=true_corrupt,
        position=data.position,
        raw=raw,
    )


@torch.no_grad()
def ablation_source(
    model: MarkovTransformer,
    batch: int,
    reference_tokens: Int[Tensor, "ref pos"],
    mode: str,
    generator: torch.Generator | None = None,
    reference_cache: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Source activations for ablating a batch of ``batch`` sequences (docs/theory.md section 5):
    "mean": every activation's mean over ``reference_tokens`` at the same position;
    "resample": the activations of a reference sequence drawn at random (with ``generator``)
    for each example. Pass the result to ``patch_sweep`` as ``source`` (one patch at a time),
    or to ``ablation_hooks`` (whole activations, several at once). reference_cache: the cache
    of ``cache_run(model, reference_tokens)`` (or the part of one to ablate) if already
    computed (e.g. for both modes); the result has its hooks."""
    if mode not in ABLATIONS:
        raise ValueError(f"ablation mode must be one of {ABLATIONS}, got {mode!r}")
    tokens = model.check_tokens(reference_tokens).to(model.W_E.device)
    cache = cache_run(model, tokens)[1] if reference_cache is None else reference_cache
    if mode == "mean":
        return {k: v.mean(0, keepdim=True).expand(batch, *v.shape[1:]) for k, v in cache.items()}
    pick = torch.randint(0, tokens.shape[0], (batch,), generator=generator)
    return {k: v[pick.to(v.device)] for k, v in cache.items()}


def ablation_hooks(
    source: dict[str, Tensor], names: Collection[str]
) -> list[tuple[str, Callable[[Tensor, object], Tensor]]]:
    """Forward hooks ablating every activation in ``names`` whole and all at once: each is
    replaced, at every position (and head), by its ``source`` value (``ablation_source`` for a
    batch of the size the hooked model runs). ``patch_sweep`` / ``run_ablation`` ablate one
    (layer, position[, head]) or one layer at a time instead."""
    _check_cached(source, names, "source")

    def replace(x: Tensor, hook) -> Tensor:
        value = source[hook.name]
        if value.shape != x.shape:
            raise ValueError(
                f"ablation source {hook.name!r} has shape {tuple(value.shape)}, the run's "
                f"activation {tuple(x.shape)} (ablation_source for this batch size needed)"
            )
        return value

    return [(name, replace) for name in names]


@torch.no_grad()
def run_ablation(
    model: MarkovTransformer,
    data: PatchingData,
    reference_tokens: Int[Tensor, "ref pos"],
    mode: str,
    acts: Sequence[str] = ("attn_out", "mlp_out", "z"),
    generator: torch.Generator | None = None,
    budget: int = DEFAULT_BUDGET,
    runs: PatchingRuns | None = None,
    reference_cache: dict[str, Tensor] | None = None,
) -> dict:
    """Mean or resample ablation of each (layer, position[, head]) in the clean run: the
    increase of the next-token loss, -log p(x_{N+1}) (nats), per patch (layout as
    ``result_axes``); and with ``_all`` suffixes the whole layer / head at every position.
    runs / reference_cache: ``cache_runs(model, data)`` (every hook; its clean run is the
    target) and the cache of ``cache_run(model, reference_tokens)``, if already computed."""
    dev = model.W_E.device
    data = data.to(dev)
    fn = make_metric("logprob", data)
    logits = model(data.clean)
    base = float(fn(logits[:, -1:]).mean())
    source = ablation_source(
        model, data.clean.shape[0], reference_tokens, mode, generator, reference_cache
    )
    target_run = None if runs is None else runs.clean
    out: dict = {"mode": mode, "clean_logprob": base, "loss_increase": {}}
    for act in acts:
        _check_act(model, act)
        for by_pos in (True, False):
            grid = patch_sweep(
                model,
                data.clean,
                source,
                act,
                fn,
                by_pos=by_pos,
                budget=budget,
                target_run=target_run,
            )
            key = act if by_pos else f"{act}_all"
            out["loss_increase"][key] = (base - grid).cpu()
    return out


def direct_path_hooks(cfg: ModelConfig) -> set[str]:
    """The hooks ``direct_path_effects`` reads: the embedding, every layer's z and mlp_out
    (none in attention-only models), and the final residual stream."""
    needed = {"hook_embed", f"blocks.{cfg.n_layers - 1}.hook_resid_post"}
    for layer in range(cfg.n_layers):
        needed.add(f"blocks.{layer}.attn.hook_z")
        if not cfg.attn_only:
            needed.add(f"blocks.{layer}.hook_mlp_out")
    return needed


@torch.no_grad()
def direct_path_effects(
    model: MarkovTransformer,
    data: PatchingData,
    metric: str = "logit_diff",
    direction: str = "noise",
    runs: PatchingRuns | None = None,
) -> dict:
    """Where the corruption's effect enters the logits at the readout (last position).

    The final residual stream there is embed + pos_embed + sum_l attn_out_l + sum_l mlp_out_l.
    For each component X (the token embedding = the direct path, each head's z W_O, each MLP)
    and direction "noise", the clean final residual gets X's corrupted value instead of its
    clean one and the logits are recomputed through ln_final and the unembedding (everything
    else clean): effect E_X = M_clean - M_patched. "denoise": the corrupted final residual gets
    X's clean value, E_X = M_patched - M_corrupt. share_X = E_X / (M_clean - M_corrupt). The
    shares of all components add up to 1 up to the final LayerNorm / softmax non-linearity,
    reported as ``additivity_gap`` = sum_X share_X - 1.

    runs: ``cache_runs(model, data, direct_path_hooks(model.cfg))`` if already computed (e.g.
    shared between both directions; caches with more hooks do too, but every hook takes the
    explicit attention branch, equal up to float rounding); None: both batches are run here.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    dev = model.W_E.device
    data = data.to(dev)
    fn = make_metric(metric, data)
    cfg = model.cfg
    needed = direct_path_hooks(cfg)
    if runs is None:  # caching only these keeps attention fused
        runs = cache_runs(model, data, needed)
    clean, corrupt = runs.clean[1], runs.corrupt[1]
    _check_cached(clean, needed, "runs.clean")
    _check_cached(corrupt, needed, "runs.corrupt")
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"

    def at_readout(cache: dict, name: str) -> Tensor:
        return cache[name][:, -1]

    labels, diffs = ["embed"], [at_readout(source, "hook_embed") - at_readout(base, "hook_embed")]
    for layer in range(cfg.n_layers):
        W_O = model.blocks[layer].attn.W_O
        z_name = f"blocks.{layer}.attn.hook_z"
        dz = at_readout(source, z_name) - at_readout(base, z_name)  # [B, H, dh]
        head_diff = torch.einsum("bhe,hed->hbd", dz, W_O)
        for head in range(cfg.n_heads):
            labels.append(f"L{layer}H{head}")
            diffs.append(head_diff[head])
        if not cfg.attn_only:
            name = f"blocks.{layer}.hook_mlp_out"
            labels.append(f"L{layer}.mlp_out")
            diffs.append(at_readout(source, name) - at_readout(base, name))
    resid = at_readout(base, last)  # [B, d]
    patched = resid[None] + torch.stack(diffs)  # [K, B, d]
    logits = model.unembed(model.ln_final(patched))[:, :, None]  # [K, B, 1, V]
    m_clean = float(fn(model.unembed(model.ln_final(at_readout(clean, last)))[:, None]).mean())
    m_corrupt = float(fn(model.unembed(model.ln_final(at_readout(corrupt, last)))[:, None]).mean())
    m_patched = fn(logits).mean(-1)
    effects = (m_clean - m_patched if direction == "noise" else m_patched - m_corrupt).tolist()
    total = m_clean - m_corrupt
    effect_of = dict(zip(labels, effects, strict=True))
    groups = {"direct": 0.0, "attention": 0.0, "mlp": 0.0}
    for label, e in effect_of.items():
        key = (
            "direct" if label == "embed" else ("mlp" if label.endswith("mlp_out") else "attention")
        )
        groups[key] += e
    defined = abs(total) > 1e-9
    shares = {k: (v / total if defined else float("nan")) for k, v in groups.items()}
    return {
        "metric": metric,
        "direction": direction,
        "clean": m_clean,
        "corrupt": m_corrupt,
        "total_effect": total,
        "effects": effect_of,
        "group_effects": groups,
        "shares": shares,
        "additivity_gap": (sum(shares.values()) - 1.0) if defined else float("nan"),
    }
