"""Linear CKA between the representations of two models on the same inputs.

``linear_cka`` (one pair, batched), ``cka_matrix`` (every hook point of A against every one of
B at once, as a ``CKAResult``), ``cka_components`` (the default hook points) and
``representations`` (a model's activations at those hook points, plus its log-probabilities).
The definition is in the ``interp.compare`` package docstring.

Floors: a representation whose centred norm is below VARIANCE_FLOOR times its uncentred norm
(about a thousand float32 rounding steps) is constant up to rounding, and its CKA would be
computed on rounding noise (a checkpoint whose dependence on x_n is 3e-10 gave 0.20): its
entries are nan, with the reason in ``CKAResult.undefined``. A representation of rank 1 after
centring (e.g. any function of x_n on a two-token vocabulary, at every position) has CKA 1
with every other rank-1 one on the same inputs, whatever the functions: ``CKAResult.notes``
says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.compare.outputs import json_float
from probes.activations import cache_activations, resolve_components
from training.model import MarkovTransformer

VARIANCE_FLOOR = 1e-4  # centred / uncentred Frobenius norm below which a representation is constant
RANK_ONE_TOL = 1e-6  # second / first singular value below which a centred representation is rank 1


def relative_spread(x: Float[Tensor, "*batch n d"]) -> Float[Tensor, "*batch"]:
    """||x - mean_n x||_F / ||x||_F (0 for an all-zero x): how much x varies over its n rows,
    relative to its size."""
    x = x.double()
    total = x.pow(2).sum((-2, -1)).sqrt()
    spread = (x - x.mean(-2, keepdim=True)).pow(2).sum((-2, -1)).sqrt()
    return torch.where(total > 0, spread / total.clamp_min(1e-300), torch.zeros_like(total))


def floor_reason(x: Float[Tensor, "n d"]) -> str | None:
    """Why CKA is undefined for ``x`` (constant up to rounding), or None."""
    rel = float(relative_spread(x))
    if rel < VARIANCE_FLOOR:
        return (
            f"constant over the inputs up to rounding (relative spread {rel:.2g} < "
            f"{VARIANCE_FLOOR:g})"
        )
    return None


def is_rank_one(x: Float[Tensor, "n d"]) -> bool:
    """Whether ``x`` centred over its rows has rank 1 (e.g. a function of one binary token)."""
    c = x.double() - x.double().mean(0, keepdim=True)
    sv = torch.linalg.svdvals(c)
    return sv.numel() < 2 or bool(sv[1] <= RANK_ONE_TOL * sv[0])


def linear_cka(
    x: Float[Tensor, "*batch n d1"], y: Float[Tensor, "*batch n d2"]
) -> Float[Tensor, "*batch"]:
    """Linear CKA of representations of the same n inputs (``interp.compare`` package
    docstring), batched over leading dims; computed in float64 in feature space (cost n d1
    d2). nan when either side is constant over the inputs up to rounding (relative spread
    below VARIANCE_FLOOR, module docstring)."""
    if x.shape[-2] != y.shape[-2]:
        raise ValueError(
            f"CKA needs the same inputs on both sides: got {x.shape[-2]} and {y.shape[-2]} rows"
        )
    if x.shape[-2] < 2:
        raise ValueError(f"CKA needs at least 2 inputs, got {x.shape[-2]}")
    ok = (relative_spread(x) >= VARIANCE_FLOOR) & (relative_spread(y) >= VARIANCE_FLOOR)
    x = x.double() - x.double().mean(-2, keepdim=True)
    y = y.double() - y.double().mean(-2, keepdim=True)
    cross = (x.mT @ y).pow(2).sum((-2, -1))
    norm_x = (x.mT @ x).pow(2).sum((-2, -1)).sqrt()
    norm_y = (y.mT @ y).pow(2).sum((-2, -1)).sqrt()
    denom = norm_x * norm_y
    out = cross / denom
    return torch.where(ok & (denom > 0), out, torch.full_like(out, math.nan))


def _stack_padded(acts: list[Tensor]) -> Float[Tensor, "hooks n width"]:
    """Stack [n, d_i] representations into [hooks, n, max d], zero-padding the features (zero
    columns change neither centring nor any Frobenius norm, so CKA is unchanged)."""
    width = max(a.shape[-1] for a in acts)
    return torch.stack(
        [torch.nn.functional.pad(a.double(), (0, width - a.shape[-1])) for a in acts]
    )


@dataclass
class CKAResult:
    """Linear CKA between every hook point of A (rows) and of B (columns) on the same inputs.

    names: component names (``probes.activations``: embed, resid_pre.0, attn_out.0, ...,
    ln_final, and log_probs for the output log-probabilities). undefined: "A:name" /
    "B:name" -> why that representation's row / column is nan (below the variance floor);
    notes: caveats such as rank-1 representations, whose CKA with each other is 1 whatever
    they compute (module docstring).
    """

    names_a: list[str]
    names_b: list[str]
    matrix: Float[Tensor, "hooks_a hooks_b"]
    n_inputs: int
    undefined: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def per_hook(self) -> dict[str, float]:
        """CKA at each hook point both models have (the diagonal of the matrix)."""
        return {
            n: float(self.matrix[i, self.names_b.index(n)])
            for i, n in enumerate(self.names_a)
            if n in self.names_b
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "names_a": self.names_a,
            "names_b": self.names_b,
            "matrix": [[json_float(v) for v in row] for row in self.matrix.tolist()],
            "per_hook": {k: json_float(v) for k, v in self.per_hook().items()},
            "n_inputs": self.n_inputs,
            "variance_floor": VARIANCE_FLOOR,
            "undefined": dict(self.undefined),
            "notes": list(self.notes),
        }


def cka_matrix(
    acts_a: dict[str, Float[Tensor, "n d"]], acts_b: dict[str, Float[Tensor, "n d"]]
) -> CKAResult:
    """Linear CKA between every representation of ``acts_a`` and every one of ``acts_b``, all
    pairs at once: one [hooks_a * d, n] x [n, hooks_b * d] product (features zero-padded)."""
    if not acts_a or not acts_b:
        raise ValueError("cka_matrix needs at least one representation on each side")
    names_a, names_b = list(acts_a), list(acts_b)
    rows = {a.shape[0] for a in acts_a.values()} | {b.shape[0] for b in acts_b.values()}
    if len(rows) != 1:
        raise ValueError(f"every representation must cover the same inputs; got row counts {rows}")
    x = _stack_padded([acts_a[n] for n in names_a])  # [Ha, n, Da]
    y = _stack_padded([acts_b[n] for n in names_b])  # [Hb, n, Db]
    x = x - x.mean(-2, keepdim=True)
    y = y.to(x.device) - y.to(x.device).mean(-2, keepdim=True)
    ha, n, da = x.shape
    hb, _, db = y.shape
    cross = x.permute(0, 2, 1).reshape(ha * da, n) @ y.permute(1, 0, 2).reshape(n, hb * db)
    cross = cross.view(ha, da, hb, db).pow(2).sum((1, 3))  # [Ha, Hb]
    norm_x = (x.mT @ x).pow(2).sum((-2, -1)).sqrt()
    norm_y = (y.mT @ y).pow(2).sum((-2, -1)).sqrt()
    denom = norm_x[:, None] * norm_y[None, :]
    matrix = torch.where(denom > 0, cross / denom, torch.full_like(cross, math.nan))
    undefined: dict[str, str] = {}
    rank_one: list[str] = []
    for side, names, acts in (("A", names_a, acts_a), ("B", names_b, acts_b)):
        for i, name in enumerate(names):
            reason = floor_reason(acts[name])
            if reason is not None:
                undefined[f"{side}:{name}"] = reason
                (matrix[i] if side == "A" else matrix[:, i]).fill_(math.nan)
            elif is_rank_one(acts[name]):
                rank_one.append(f"{side}:{name}")
    notes = []
    if len(rank_one) >= 2:
        notes.append(
            f"{', '.join(rank_one)} are rank 1 over the inputs (e.g. functions of x_n on a "
            "two-token vocabulary): their CKA with each other is 1 whatever they compute"
        )
    return CKAResult(names_a, names_b, matrix.float().cpu(), n, undefined, notes)


def cka_components(model: MarkovTransformer) -> list[str]:
    """Default hook points for CKA: the ``default`` probe components (embed, per block
    resid_pre, attn_out, per-head results with several heads, resid_mid, mlp_out, then
    resid_post of the last block, ln_final) with pos_embed after embed when the model has one."""
    names = [c.name for c in resolve_components(model.cfg, ["default"])]
    if model.cfg.positional_embedding_type == "standard":
        names.insert(1, "pos_embed")
    return names


def representations(
    model: MarkovTransformer,
    tokens: Int[Tensor, "seq pos"],
    components: list[str] | None = None,
    batch_size: int = 64,
) -> dict[str, Float[Tensor, "n width"]]:
    """Activations of ``components`` (default ``cka_components``) over every position of
    ``tokens``, flattened to [seq * pos, width], plus "log_probs" (the output, nats)."""
    comps = resolve_components(model.cfg, components or cka_components(model))
    acts = cache_activations(model, tokens, comps, batch_size=batch_size)
    out = {name: a.reshape(-1, a.shape[-1]) for name, a in acts.acts.items()}
    out["log_probs"] = acts.log_probs.reshape(-1, acts.log_probs.shape[-1])
    return out
