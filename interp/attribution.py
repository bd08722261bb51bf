"""Direct logit attribution: how much each component writes the logit difference directly.

The final residual stream is a sum of components: token embedding, positional embedding,
every head's output (z W_O), the attention output bias b_O of each layer (with linear_bias),
and every MLP output. The final LayerNorm is handled as TransformerLens does (centre each
component, divide by the cached ln_final scale of the actual run; ``ActivationCache
.apply_ln_to_stack`` / ``logit_attrs``), and the unembedding direction includes ln_final.w, so

    sum over components + ln_final.b term = target - b_U term   (exactly, up to float error)

Targets (per position, nats-scaled logits):

- "diff": logit[a] - logit[b] (default a = 1, b = 0: the binary log-odds of a 1);
- "true": the logit of the true next token x_{n+1} minus the mean logit over the vocabulary,
  i.e. the part of log p(x_{n+1}) linear in the residual stream (log p = this minus the
  log-sum-exp of the centred logits); defined at positions 0..N-2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.model import MarkovTransformer

TARGETS = ("diff", "true")


@dataclass
class LogitAttribution:
    """values[c, b, n]: component c's direct contribution to ``target[b, n]``.

    ``bias`` is the b_U part of the target, so values.sum(0) == target - bias.
    """

    labels: list[str]
    values: Float[Tensor, "component batch pos"]
    target: Float[Tensor, "batch pos"]
    bias: Float[Tensor, "batch pos"]
    kind: str

    def residual_error(self) -> float:
        """max |sum of components - (target - bias)|: 0 up to float error."""
        return float((self.values.sum(0) - (self.target - self.bias)).abs().max())

    def grouped(self) -> dict[str, Float[Tensor, "batch pos"]]:
        """Components summed into embed, pos_embed, attn (heads and b_O), mlp, ln_final.b."""
        groups: dict[str, Tensor] = {}
        for label, value in zip(self.labels, self.values, strict=True):
            if label in ("embed", "pos_embed", "ln_final.b"):
                key = label
            elif label.endswith("mlp_out"):
                key = "mlp"
            else:
                key = "attn"
            groups[key] = groups.get(key, 0) + value
        return groups

    def summary(self, position: int | None = None) -> dict:
        """JSON-able means over the batch (and over positions, or at ``position``)."""

        def reduce(x: Tensor) -> float:
            x = x if position is None else x[:, position]
            return float(x.mean())

        return {
            "kind": self.kind,
            "position": position,
            "target_mean": reduce(self.target),
            "bias_mean": reduce(self.bias),
            "components": {lab: reduce(v) for lab, v in zip(self.labels, self.values, strict=True)},
            "groups": {k: reduce(v) for k, v in self.grouped().items()},
            "residual_error": self.residual_error(),
        }


@torch.no_grad()
def logit_attribution(
    model: MarkovTransformer,
    tokens: Int[Tensor, "batch pos"],
    kind: str | None = None,
    tokens_ab: tuple[int, int] = (1, 0),
) -> LogitAttribution:
    """Direct logit attribution of the target ``kind`` ("diff" or "true"; default "diff" for a
    binary vocabulary, else "true") to embed, pos_embed, each head L{l}H{h}, each
    L{l}.b_O (with linear_bias), each L{l}.mlp_out and ln_final.b (with ln_bias)."""
    cfg = model.cfg
    kind = kind or ("diff" if cfg.d_vocab == 2 else "true")
    if kind not in TARGETS:
        raise ValueError(f"kind must be one of {TARGETS}, got {kind!r}")
    a, b = (int(t) for t in tokens_ab)
    if kind == "diff" and not (0 <= a < cfg.d_vocab and 0 <= b < cfg.d_vocab and a != b):
        raise ValueError(
            f"tokens_ab must be two distinct ids in 0..{cfg.d_vocab - 1}, got {tokens_ab}"
        )
    tokens = model.check_tokens(tokens).to(model.W_E.device)
    if kind == "true" and tokens.shape[1] < 2:
        raise ValueError("kind='true' needs sequences of at least 2 tokens (a next token)")
    logits, cache = model.run_with_cache(tokens)

    parts, labels = [cache["hook_embed"]], ["embed"]
    if cfg.positional_embedding_type == "standard":
        parts.append(cache["hook_pos_embed"])
        labels.append("pos_embed")
    heads = cache.stack_head_results(layer=-1)  # [layer*head, batch, pos, d_model]
    for layer in range(cfg.n_layers):
        block = model.blocks[layer]
        for head in range(cfg.n_heads):
            parts.append(heads[layer * cfg.n_heads + head])
            labels.append(f"L{layer}H{head}")
        if cfg.linear_bias:
            parts.append(block.attn.b_O.expand_as(cache["hook_embed"]))
            labels.append(f"L{layer}.b_O")
        if not cfg.attn_only:
            parts.append(cache[f"blocks.{layer}.hook_mlp_out"])
            labels.append(f"L{layer}.mlp_out")
    stack = torch.stack(parts)  # [component, batch, pos, d_model]

    W_U, b_U = model.W_U, model.unembed.b_U
    ln_b = model.ln_final.b if cfg.normalization_type == "LN" else None
    if kind == "diff":
        values = cache.logit_attrs(stack, tokens=a, incorrect_tokens=b)
        target = logits[..., a] - logits[..., b]
        bias = (b_U[a] - b_U[b]).expand_as(target)
        ln_term = None if ln_b is None else (ln_b @ (W_U[:, a] - W_U[:, b])).expand_as(target)
    else:
        stack = stack[:, :, :-1]
        nxt = tokens[:, 1:]
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=slice(0, -1))
        directions = model.tokens_to_residual_directions(torch.arange(cfg.d_vocab))  # [V, d]
        per_token = scaled @ directions.T  # [component, batch, pos-1, V]
        centred = per_token - per_token.mean(-1, keepdim=True)
        values = centred.gather(-1, nxt[None, ..., None].expand(len(parts), -1, -1, 1))[..., 0]
        logit_c = logits[:, :-1] - logits[:, :-1].mean(-1, keepdim=True)
        target = logit_c.gather(-1, nxt[..., None])[..., 0]
        bias = (b_U - b_U.mean())[nxt]
        ln_term = None
        if ln_b is not None:
            ln_logits = ln_b @ W_U
            ln_term = (ln_logits - ln_logits.mean())[nxt]
    if ln_term is not None and cfg.ln_bias:
        values = torch.cat([values, ln_term[None]])
        labels.append("ln_final.b")
    return LogitAttribution(
        labels=labels,
        values=values.detach().cpu(),
        target=target.detach().cpu(),
        bias=bias.detach().cpu(),
        kind=kind,
    )
