"""Direct-path effects: where the corruption's effect enters the logits at the readout,
split over the token embedding, each attention head and each MLP, through the final
residual stream (``direct_path_effects``; the hooks it reads: ``direct_path_hooks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from interp.corruptions import PatchingData
from interp.patching.metrics import DIRECTIONS, make_metric
from interp.patching.sweep import PatchingRuns, cache_runs, check_cached

if TYPE_CHECKING:
    from training.config import ModelConfig
    from training.model import MarkovTransformer


def direct_path_hooks(cfg: ModelConfig) -> set[str]:
    """The hooks ``direct_path_effects`` reads: the embedding, every layer's z and mlp_out
    (none in attention-only models) and the positional embedding: the final residual stream
    is rebuilt from them."""
    needed = {"hook_embed", "hook_pos_embed"}
    for layer in range(cfg.n_layers):
        needed.add(f"blocks.{layer}.attn.hook_z")
        if not cfg.attn_only:
            needed.add(f"blocks.{layer}.hook_mlp_out")
    return needed


def readout_logits64(
    model: MarkovTransformer, x: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_vocab"]:
    """ln_final then the unembedding, in float64 (the model's own weights, upcast)."""
    x = x.double()
    if model.cfg.normalization_type == "LN":
        ln = model.ln_final
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * ln.w.double()
        x = x + ln.b.double()  # zeros without ln_bias
    return x @ model.W_U.double() + model.unembed.b_U.double()


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
    reported as ``additivity_gap`` = sum_X share_X - 1. The readout is computed in float64 on
    the final residual rebuilt from the cached components (so that, without a final
    LayerNorm, the gap is float64 rounding on every CPU, not float32 rounding of a
    difference of large residuals; the rebuilt residual equals the model's within float32
    rounding).

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
    check_cached(clean, needed, "runs.clean")
    check_cached(corrupt, needed, "runs.corrupt")
    base, source = (clean, corrupt) if direction == "noise" else (corrupt, clean)

    def at_readout(cache: dict, name: str) -> Tensor:
        return cache[name][:, -1].double()

    def components(cache: dict) -> list[Tensor]:
        """The final residual at the readout, one float64 [B, d] term per component."""
        terms = [at_readout(cache, "hook_embed")]
        for layer in range(cfg.n_layers):
            W_O = model.blocks[layer].attn.W_O.double()
            z = at_readout(cache, f"blocks.{layer}.attn.hook_z")  # [B, H, dh]
            terms.extend(torch.einsum("bhe,hed->hbd", z, W_O).unbind(0))
            if not cfg.attn_only:
                terms.append(at_readout(cache, f"blocks.{layer}.hook_mlp_out"))
        return terms

    def readout(x: Float[Tensor, "*k batch d_model"]) -> Float[Tensor, "*k batch 1 d_vocab"]:
        return readout_logits64(model, x)[..., None, :]

    labels = ["embed"]
    for layer in range(cfg.n_layers):
        labels += [f"L{layer}H{head}" for head in range(cfg.n_heads)]
        if not cfg.attn_only:
            labels.append(f"L{layer}.mlp_out")
    fixed = at_readout(clean, "hook_pos_embed") + sum(
        model.blocks[layer].attn.b_O.double() for layer in range(cfg.n_layers)
    )
    base_terms, source_terms = components(base), components(source)
    diffs = [s - b for s, b in zip(source_terms, base_terms, strict=True)]
    resid = fixed + torch.stack(base_terms).sum(0)  # [B, d]
    resid_clean = fixed + torch.stack(components(clean)).sum(0)
    resid_corrupt = fixed + torch.stack(components(corrupt)).sum(0)
    patched = resid[None] + torch.stack(diffs)  # [K, B, d]
    m_clean = float(fn(readout(resid_clean)).mean())
    m_corrupt = float(fn(readout(resid_corrupt)).mean())
    m_patched = fn(readout(patched)).mean(-1)
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
