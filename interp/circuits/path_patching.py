"""Path patching (Wang et al. 2022, IOI): one sender's output, taken from a corrupted run,
reaches one receiver head through a single input (its query, key or value) only; everything
else is the clean run.

For a sender s (the token embedding, head h of layer l, or the MLP of layer l) and a receiver
(head h' of layer l' > l, input x in q, k, v) the receiver's input residual is

    resid' = clean resid_pre[l'] + (corrupt out_s - clean out_s)

(out of a head: z[:, :, h] @ W_O[h]; of the MLP: hook_mlp_out; of the embedding: hook_embed),
i.e. the direct path from s to l' with every other component frozen at its clean value. The
receiver's x = ln1(resid') @ W_X[h'] + b_X[h'] is written through ``hook_x`` of layer l' (head
h' only) into a clean forward pass, and everything downstream of the receiver is recomputed,
as in IOI's second step. The metric of that pass is the result.

Batched: every (sender, receiver) pair runs as one patched copy of the clean batch, many copies
per forward pass (chunked to bound memory, as ``interp.patching.patch_sweep``), with one hook
per (layer, input) writing all of its copies in one vectorised index assignment. Sequences are
cut after the last readout position (causal attention: later positions cannot change it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.patching.sweep import DEFAULT_BUDGET, Metric, cache_run

if TYPE_CHECKING:
    from training.model import MarkovTransformer

SENDER_KINDS = ("embed", "head", "mlp")
RECEIVER_INPUTS = ("q", "k", "v")


@dataclass(frozen=True)
class Sender:
    """A component whose output is patched: kind "embed" (layer -1, before every block),
    "head" (head ``head`` of ``layer``) or "mlp" (the MLP of ``layer``)."""

    kind: str
    layer: int = -1
    head: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "embed":
            return "embed"
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"MLP{self.layer}"


@dataclass(frozen=True)
class Receiver:
    """Input ``input`` ("q", "k" or "v") of head ``head`` in ``layer``."""

    layer: int
    head: int
    input: str

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}.{self.input}"


def all_senders(model: MarkovTransformer, before: int | None = None) -> list[Sender]:
    """The embedding, then every head and MLP of the layers < ``before`` (None: all layers)."""
    cfg = model.cfg
    stop = cfg.n_layers if before is None else min(before, cfg.n_layers)
    out = [Sender("embed")]
    for layer in range(stop):
        out += [Sender("head", layer, h) for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            out.append(Sender("mlp", layer))
    return out


def head_receivers(
    layer: int, head: int, inputs: Sequence[str] = RECEIVER_INPUTS
) -> list[Receiver]:
    """The q, k and v inputs (or those in ``inputs``) of one head."""
    return [Receiver(layer, head, x) for x in inputs]


def check_sender(model: MarkovTransformer, s: Sender) -> None:
    cfg = model.cfg
    if s.kind not in SENDER_KINDS:
        raise ValueError(f"sender kind must be one of {SENDER_KINDS}, got {s.kind!r}")
    if s.kind == "embed":
        return
    if not 0 <= s.layer < cfg.n_layers:
        raise ValueError(f"sender layer {s.layer} is outside 0..{cfg.n_layers - 1}")
    if s.kind == "head" and (s.head is None or not 0 <= s.head < cfg.n_heads):
        raise ValueError(f"sender head {s.head} is outside 0..{cfg.n_heads - 1}")
    if s.kind == "mlp" and cfg.attn_only:
        raise ValueError("an attention-only model has no MLP sender")


def check_receiver(model: MarkovTransformer, r: Receiver) -> None:
    cfg = model.cfg
    if r.input not in RECEIVER_INPUTS:
        raise ValueError(f"receiver input must be one of {RECEIVER_INPUTS}, got {r.input!r}")
    if not 0 <= r.layer < cfg.n_layers:
        raise ValueError(f"receiver layer {r.layer} is outside 0..{cfg.n_layers - 1}")
    if not 0 <= r.head < cfg.n_heads:
        raise ValueError(f"receiver head {r.head} is outside 0..{cfg.n_heads - 1}")


def _sender_hooks(senders: Sequence[Sender]) -> set[str]:
    names = set()
    for s in senders:
        if s.kind == "embed":
            names.add("hook_embed")
        elif s.kind == "head":
            names.add(f"blocks.{s.layer}.attn.hook_z")
        else:
            names.add(f"blocks.{s.layer}.hook_mlp_out")
    return names


def sender_outputs(
    model: MarkovTransformer, cache: dict[str, Tensor], senders: Sequence[Sender]
) -> Float[Tensor, "sender batch pos d_model"]:
    """What each sender writes into the residual stream, from a run's cache (a head: its z
    through its rows of W_O, without the layer's shared b_O)."""
    outs = []
    for s in senders:
        if s.kind == "embed":
            outs.append(cache["hook_embed"])
        elif s.kind == "head":
            z = cache[f"blocks.{s.layer}.attn.hook_z"][:, :, s.head]
            outs.append(z @ model.blocks[s.layer].attn.W_O[s.head])
        else:
            outs.append(cache[f"blocks.{s.layer}.hook_mlp_out"])
    return torch.stack(outs)


def _readout(readout: Sequence[int], n: int) -> list[int]:
    r = sorted({p + n if p < 0 else p for p in readout})
    if not r or r[0] < 0 or r[-1] >= n:
        raise ValueError(f"readout positions {list(readout)} must lie in 0..{n - 1}")
    return r


def _receiver_values(
    model: MarkovTransformer,
    resid_pre: Float[Tensor, "layer batch pos d_model"],
    delta: Float[Tensor, "sender batch pos d_model"],
    pairs: Tensor,
    receivers: Sequence[Receiver],
) -> Float[Tensor, "pair batch pos d_head"]:
    """x = ln1(clean resid_pre[l'] + delta_s) @ W_X[h'] + b_X[h'] for every (s, r) in pairs."""
    layers = torch.tensor([receivers[j].layer for j in pairs[:, 1].tolist()], device=delta.device)
    resid = resid_pre[layers] + delta[pairs[:, 0]]  # [K, B, T, D]
    out = resid.new_empty(*resid.shape[:-1], model.cfg.d_head)
    for layer in layers.unique().tolist():
        at = (layers == layer).nonzero()[:, 0]
        block = model.blocks[layer]
        x = block.ln1(resid[at].flatten(0, 1)).view(len(at), *resid.shape[1:])
        rs = [receivers[j] for j in pairs[at, 1].tolist()]
        heads = torch.tensor([r.head for r in rs], device=x.device)
        W = torch.stack([getattr(block.attn, f"W_{r.input.upper()}") for r in rs])
        b = torch.stack([getattr(block.attn, f"b_{r.input.upper()}") for r in rs])
        idx = torch.arange(len(rs), device=x.device)
        W, b = W[idx, heads], b[idx, heads]  # [K_l, D, Dh], [K_l, Dh]
        out[at] = torch.einsum("kbtd,kde->kbte", x, W) + b[:, None, None]
    return out


def _write_hook(copies: Tensor, heads: Tensor, values: Tensor):
    def write(x: Tensor, hook) -> Tensor:
        x[copies, :, heads] = values
        return x

    return write


@torch.no_grad()
def path_patch(
    model: MarkovTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupt_tokens: Int[Tensor, "batch pos"],
    senders: Sequence[Sender],
    receivers: Sequence[Receiver],
    metric: Metric,
    *,
    readout: Sequence[int] = (-1,),
    reduce: str = "mean",
    budget: int = DEFAULT_BUDGET,
) -> Float[Tensor, "sender receiver *batch"]:
    """The metric after patching each sender's corrupted-minus-clean output into each
    receiver's input only (module doc), [sender, receiver] (batch mean) or, with
    reduce="none", [sender, receiver, batch]; nan where the sender is not in an earlier layer
    than the receiver (no path).

    metric: logits at the ``readout`` positions (sorted ascending, duplicates dropped)
    [*patch, batch, readout, vocab] -> [*patch, batch], as ``patch_sweep``'s.
    budget: bound (float elements) on the largest tensor of one forward pass.
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    if model.training:
        raise ValueError("patch the model in eval mode (model.eval())")
    for s in senders:
        check_sender(model, s)
    for r in receivers:
        check_receiver(model, r)
    dev = model.W_E.device
    clean = model.check_tokens(clean_tokens).to(dev)
    corrupt = model.check_tokens(corrupt_tokens).to(dev)
    if clean.shape != corrupt.shape:
        raise ValueError(
            f"clean tokens {tuple(clean.shape)} and corrupted tokens {tuple(corrupt.shape)} "
            "must have the same shape"
        )
    B, N = clean.shape
    R = _readout(readout, N)
    T = R[-1] + 1
    clean, corrupt = clean[:, :T], corrupt[:, :T]
    cfg = model.cfg
    out = torch.full(
        (len(senders), len(receivers), B), float("nan"), device=dev, dtype=model.W_E.dtype
    )
    pairs = torch.tensor(
        [
            (i, j)
            for j, r in enumerate(receivers)
            for i, s in enumerate(senders)
            if s.layer < r.layer
        ],
        dtype=torch.long,
    ).view(-1, 2)
    if len(pairs):
        names = _sender_hooks(senders) | {
            f"blocks.{layer}.hook_resid_pre" for layer in range(cfg.n_layers)
        }
        _, clean_cache = cache_run(model, clean, names)
        _, corrupt_cache = cache_run(model, corrupt, names)
        delta = sender_outputs(model, corrupt_cache, senders) - sender_outputs(
            model, clean_cache, senders
        )
        resid_pre = torch.stack(
            [clean_cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(cfg.n_layers)]
        )
        pairs = pairs.to(dev)
        width = max(cfg.d_model, cfg.n_heads * cfg.d_head, cfg.d_vocab)
        width = max(width, 0 if cfg.attn_only else cfg.d_mlp)
        max_copies = max(1, budget // max(cfg.n_heads * T * T, T * width))
        per_chunk = max(1, max_copies // B)
        readout_t = torch.tensor(R, device=dev)
        for start in range(0, len(pairs), per_chunk):
            chunk = pairs[start : start + per_chunk]
            K = len(chunk)
            values = _receiver_values(model, resid_pre, delta, chunk, receivers)
            hooks = []
            keys = [(receivers[j].layer, receivers[j].input) for j in chunk[:, 1].tolist()]
            for key in sorted(set(keys)):
                k = torch.tensor([i for i, kk in enumerate(keys) if kk == key], device=dev)
                copies = (k[:, None] * B + torch.arange(B, device=dev)).flatten()
                heads = torch.tensor(
                    [receivers[j].head for j in chunk[k, 1].tolist()], device=dev
                ).repeat_interleave(B)
                vals = values[k].flatten(0, 1)  # [K_key * B, T, Dh]
                name = f"blocks.{key[0]}.attn.hook_{key[1]}"
                hooks.append((name, _write_hook(copies, heads, vals)))
            logits = model.run_with_hooks(clean.repeat(K, 1), fwd_hooks=hooks)
            logits = logits[:, readout_t].view(K, B, len(R), -1)
            out[chunk[:, 0], chunk[:, 1]] = metric(logits).to(out.dtype)
    return out.mean(-1) if reduce == "mean" else out
