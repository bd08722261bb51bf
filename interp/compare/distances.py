"""Distances between the parameters of two models of equal shapes.

Parameters go by their HookedTransformer names (``named_weights``: ``unembed.W_U`` listed for
tied models too); ``parameter_distances`` gives per-parameter, per-module and total norms of
the difference, relative distances and cosines, or says why the shapes do not match.

The distances compare the parameters as they are, coordinate by coordinate: they do not
align the model's symmetries (``ignored_symmetries`` lists those of a configuration), so two
models computing the same function can be far apart (two seeds, say, with their heads in
another order). The total leaves the LayerNorm weights out and reports them on their own:
they start at 1 and mostly stay near it, so in a total they make any two models look alike
(cosine near 1) whatever their other weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from training.model import MarkovTransformer


def is_layernorm(name: str) -> bool:
    """A LayerNorm (or RMSNorm) parameter: blocks.{l}.ln1.w, blocks.{l}.ln2.b, ln_final.w."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2].startswith("ln")


def ignored_symmetries(model: MarkovTransformer) -> list[str]:
    """The reparametrisations of ``model`` that leave its function unchanged and that the
    parameter distances do not align (each moves the parameters, not the outputs)."""
    cfg = model.cfg
    out = []
    if cfg.n_heads > 1:
        out.append(f"the order of the {cfg.n_heads} heads within a layer")
    out += [
        "W_Q -> W_Q M, W_K -> W_K M^-T for any invertible d_head x d_head M per head "
        "(rotations, signs, scales: only W_Q W_K^T matters)",
        "W_V -> W_V M, W_O -> M^-1 W_O per head (only W_V W_O matters)",
    ]
    if not cfg.attn_only:
        out.append(f"the order of the MLP's {cfg.d_mlp} hidden units (W_in columns, W_out rows)")
    if cfg.normalization_type in ("LN", "RMS"):
        out.append(
            "the order of the d_model residual coordinates (every matrix and LayerNorm weight "
            "permuted together)"
        )
        readers = ["ln1: W_Q, W_K, W_V"] + ([] if cfg.attn_only else ["ln2: W_in"])
        readers += [] if cfg.tie_embeddings else ["ln_final: W_U"]  # tied: W_U is W_E
        out.append(
            "a LayerNorm weight (and bias) times c != 0 per coordinate, the matrix rows reading "
            f"it divided by c ({'; '.join(readers)})"
        )
    if cfg.unembed_bias:
        out.append("a constant added to every entry of b_U (the softmax ignores it)")
    return out


def named_weights(model: MarkovTransformer) -> dict[str, Float[Tensor, "..."]]:
    """Every parameter by its HookedTransformer name, plus ``unembed.W_U`` for a tied model
    (there it is embed.W_E transposed), so tied and untied models list the same names."""
    weights = {name: p.detach() for name, p in model.named_parameters()}
    if "unembed.W_U" not in weights:
        weights["unembed.W_U"] = model.W_U.detach()
    return weights


@dataclass
class ParameterDistances:
    """Per-parameter distances between two models of equal shapes.

    rows: one per parameter name: shape, norm_a, norm_b (Frobenius), diff_norm = ||A - B||,
    relative = ||A - B|| / (||A|| + ||B||) in [0, 1] (0: equal, 1: B = -cA), cosine of the
    flattened tensors. groups: the same per module (the name without its last part: embed,
    pos_embed, blocks.0.attn, blocks.0.mlp, blocks.0.ln1, ..., unembed), all its parameters
    together. total: every parameter but the LayerNorm ones together; layernorm: the
    LayerNorm parameters together (None when the model has none). symmetries: what the
    distances do not align (``ignored_symmetries``, of model A). comparable is False (rows
    empty) when the names or shapes differ; ``reason`` says which.
    """

    rows: list[dict[str, Any]]
    total: dict[str, float] | None
    comparable: bool
    reason: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    layernorm: dict[str, float] | None = None
    symmetries: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _distance(a: Tensor, b: Tensor) -> dict[str, float]:
    a, b = a.double().flatten(), b.double().flatten()
    na, nb, nd = float(a.norm()), float(b.norm()), float((a - b).norm())
    denom = na + nb
    cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan
    return {
        "norm_a": na,
        "norm_b": nb,
        "diff_norm": nd,
        "relative": nd / denom if denom > 0 else 0.0,
        "cosine": cos,
    }


def shape_mismatch(model_a: MarkovTransformer, model_b: MarkovTransformer) -> str | None:
    """Why parameter distances are undefined for this pair (None when names and shapes agree)."""
    wa, wb = named_weights(model_a), named_weights(model_b)
    only_a, only_b = sorted(set(wa) - set(wb)), sorted(set(wb) - set(wa))
    wrong = [n for n in wa if n in wb and wa[n].shape != wb[n].shape]
    if not (only_a or only_b or wrong):
        return None
    parts = []
    if only_a:
        parts.append(f"only in A: {', '.join(only_a)}")
    if only_b:
        parts.append(f"only in B: {', '.join(only_b)}")
    if wrong:
        parts.append(
            "different shapes: "
            + ", ".join(f"{n} {list(wa[n].shape)} vs {list(wb[n].shape)}" for n in wrong)
        )
    return "parameter distances need equal parameter names and shapes; " + "; ".join(parts)


def parameter_distances(
    model_a: MarkovTransformer, model_b: MarkovTransformer, strict: bool = False
) -> ParameterDistances:
    """Per-parameter distances (``ParameterDistances``). Models of different shapes give
    comparable=False with the reason, or a ValueError with strict=True."""
    reason = shape_mismatch(model_a, model_b)
    if reason is not None:
        if strict:
            raise ValueError(reason)
        return ParameterDistances(rows=[], total=None, comparable=False, reason=reason)
    wa, wb = named_weights(model_a), named_weights(model_b)
    rows = []
    for name in wa:
        a, b = wa[name], wb[name].to(wa[name].device)
        rows.append({"name": name, "shape": list(a.shape)} | _distance(a, b))

    def flat(names: list[str]) -> tuple[Tensor, Tensor]:
        a = torch.cat([wa[n].double().flatten() for n in names])
        return a, torch.cat([wb[n].double().flatten().to(a.device) for n in names])

    modules: dict[str, list[str]] = {}
    for name in wa:
        modules.setdefault(name.rsplit(".", 1)[0], []).append(name)
    groups = [
        {"group": g, "parameters": names} | _distance(*flat(names)) for g, names in modules.items()
    ]
    norms = [n for n in wa if is_layernorm(n)]
    rest = [n for n in wa if not is_layernorm(n)]
    return ParameterDistances(
        rows=rows,
        total=_distance(*flat(rest)),
        comparable=True,
        groups=groups,
        layernorm=_distance(*flat(norms)) | {"parameters": norms} if norms else None,
        symmetries=ignored_symmetries(model_a),
    )
