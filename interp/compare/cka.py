"""Linear CKA between the representations of two models on the same inputs.

``linear_cka`` (one pair, batched), ``cka_matrix`` (every hook point of A against every one of
B at once, as a ``CKAResult``), ``cka_components`` (the default hook points) and
``representations`` (a model's activations at those hook points, plus its log-probabilities).
The definition is in the ``interp.compare`` package docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.compare.outputs import json_float
from probes.activations import cache_activations, resolve_components
from training.model import MarkovTransformer


def linear_cka(
    x: Float[Tensor, "*batch n d1"], y: Float[Tensor, "*batch n d2"]
) -> Float[Tensor, "*batch"]:
    """Linear CKA of representations of the same n inputs (``interp.compare`` package
    docstring), batched over leading dims; computed in float64 in feature space (cost n d1
    d2). nan when either side is constant over the inputs."""
    if x.shape[-2] != y.shape[-2]:
        raise ValueError(
            f"CKA needs the same inputs on both sides: got {x.shape[-2]} and {y.shape[-2]} rows"
        )
    if x.shape[-2] < 2:
        raise ValueError(f"CKA needs at least 2 inputs, got {x.shape[-2]}")
    x = x.double() - x.double().mean(-2, keepdim=True)
    y = y.double() - y.double().mean(-2, keepdim=True)
    cross = (x.mT @ y).pow(2).sum((-2, -1))
    norm_x = (x.mT @ x).pow(2).sum((-2, -1)).sqrt()
    norm_y = (y.mT @ y).pow(2).sum((-2, -1)).sqrt()
    denom = norm_x * norm_y
    out = cross / denom
    return torch.where(denom > 0, out, torch.full_like(out, math.nan))


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
    ln_final, and log_probs for the output log-probabilities).
    """

    names_a: list[str]
    names_b: list[str]
    matrix: Float[Tensor, "hooks_a hooks_b"]
    n_inputs: int

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
    return CKAResult(names_a, names_b, matrix.float().cpu(), n)


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
