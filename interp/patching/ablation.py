"""Mean and resample ablation (docs/theory.md section 5): the source activations
(``ablation_source``), hooks that ablate whole activations at once (``ablation_hooks``),
and the loss increase of ablating each (layer, position[, head]) or each whole layer / head
(``run_ablation``)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from interp.corruptions import PatchingData
from interp.patching.metrics import make_metric
from interp.patching.sweep import (
    DEFAULT_BUDGET,
    PatchingRuns,
    cache_run,
    check_act,
    check_cached,
    patch_sweep,
)

if TYPE_CHECKING:
    from training.model import MarkovTransformer

ABLATIONS = ("mean", "resample")


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
    check_cached(source, names, "source")

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
        check_act(model, act)
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
