"""Fast activation patching: every (layer, position[, head]) patch in a few batched passes.

``patch_sweep`` returns exactly what ``transformer_lens.patching.get_act_patch_*`` returns for a
metric that reads the logits at a few readout positions R (default the last one), but instead
of one full forward pass per patch it

1. caches the target run once (the run being patched: corrupted tokens for denoising, clean
   ones for noising),
2. expands the target to [n_patches * batch] copies, chunked to bound memory, and writes each
   copy's patched slice with one vectorised index assignment,
3. recomputes only what a patch can change. Nothing below the patched layer changes, nor any
   position before the patched one (causal attention), so those are read from the cache.
   While the residual stream differs from the target's at the patched position only (after a
   resid_pre, attn_out, mlp_out, z, q or pattern patch at p), attention sees one new key and
   value per copy: each query's output is updated from the target's unnormalised softmax sums
   in float64 (O(d_head) per query; rows where the old key held almost all the weight are
   recomputed exactly), the query at p itself is recomputed. Once every later position has
   changed, the layer is recomputed on the suffix only, and the last layer computes just the
   readout queries.

The cost per patch falls from O(L N^2 d) to O(L N d^2) for one and two layers (and stays
quadratic only in the middle layers of deeper models); with the batching this gives the
speed-ups ``benchmarks/bench_patching.py`` prints. The recomputation reuses the model's own
LayerNorm, MLP and unembedding modules and its weights; only the attention product (masked
scores, softmax, z, W_O) is re-written here, in the model's order.

Activation kinds (TransformerLens names, result layouts as ``get_act_patch_*``):

- "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out": [layer, pos]
- "z", "q", "k", "v" per head: [layer, pos, head]; with ``by_pos=False`` (all positions at
  once, ``get_act_patch_attn_head_*_all_pos``): [layer, head]
- "pattern": [layer, head, dest_pos]; with ``by_pos=False``: [layer, head]

Metrics map logits [*patches, batch, readout, vocab] to [*patches, batch] (nats or logits).
Normalised effect (REFERENCE.md section 5): (M - M_corrupt) / (M_clean - M_corrupt), on batch
means; denoising (clean activations into the corrupted run) measures sufficiency (1 = the patch
restores the clean behaviour), noising (corrupted activations into the clean run) measures
necessity (0 = the patch destroys it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.corruptions import PatchingData
from training.model import MarkovTransformer

LAYER_ACTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_ACTS = ("z", "q", "k", "v")
ACTS = LAYER_ACTS + HEAD_ACTS + ("pattern",)
DIRECTIONS = ("denoise", "noise")
METRICS = ("logit_diff", "logprob")
ABLATIONS = ("mean", "resample")
DEFAULT_BUDGET = 1 << 24  # float elements of the largest per-chunk tensor
SUFFIX_CHUNKS = 8  # positional sweeps use at least this many chunks per layer

Metric = Callable[[Float[Tensor, "*patch batch readout vocab"]], Float[Tensor, "*patch batch"]]


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


def _check_act(model: MarkovTransformer, act: str) -> None:
    if act not in ACTS:
        raise ValueError(f"unknown activation {act!r}; allowed: {ACTS}")
    if model.cfg.attn_only and act in ("resid_mid", "mlp_out"):
        raise ValueError(f"{act!r} does not exist in an attention-only model")


class _Engine:
    """Recomputes a MarkovTransformer's readout logits for many patched copies of a cached
    target run. A copy c is target sequence bidx[c] with one patch; positions before the
    chunk's first patched position s never change and are read from the cache.

    Two regimes: a *row* state (the residual stream differs from the target's at one position
    p per copy, e.g. right after a resid_pre / attn_out / mlp_out / z patch at p) and a *dense*
    state (it differs on positions s..N-1). Attention over a row state changes one key and
    value per copy; every query's output is then updated in O(d_head) from the target's
    unnormalised softmax sums (float64, exact up to rounding; ill-conditioned rows, where the
    patched key held almost all the weight, are recomputed exactly), and the query at p itself
    is recomputed. A dense state is recomputed on the suffix, keys and values of positions < s
    coming from the cache; the last layer computes the readout queries only.
    """

    def __init__(self, model: MarkovTransformer, tokens: Tensor, readout: Tensor):
        self.model = model
        self.cfg = model.cfg
        self.batch, self.n = tokens.shape
        self.readout = readout  # absolute positions, sorted, unique
        _, self.cache = model.run_with_cache(tokens, return_cache_object=False)
        self._sums: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    # ---- cached target activations -------------------------------------------------------
    def target(self, name: str, bidx: Tensor) -> Tensor:
        """The target's activation ``name`` for every copy (a fresh tensor)."""
        return self.cache[name].index_select(0, bidx)

    def qpos(self, layer: int, s: int) -> Tensor:
        """Query positions recomputed in ``layer``: the suffix, or the readout in the last layer."""
        if layer == self.cfg.n_layers - 1:
            return self.readout
        return torch.arange(s, self.n, device=self.readout.device)

    def softmax_sums(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """Float64 U = sum_k e_qk v_k [B, N, H, dh], S = sum_k e_qk [B, N, H] and the row max m
        [B, N, H] of the target's scores, e_qk = exp(score_qk - m_q) (0 where masked)."""
        if layer not in self._sums:
            pre = f"blocks.{layer}.attn.hook_"
            scores = self.cache[pre + "attn_scores"].double()  # [B, H, q, k]
            m = scores.amax(-1, keepdim=True)
            e = (scores - m).exp()
            U = torch.einsum("bhqk,bkhe->bqhe", e, self.cache[pre + "v"].double())
            S = e.sum(-1).transpose(1, 2)
            self._sums[layer] = (U, S, m[..., 0].transpose(1, 2))
        return self._sums[layer]

    def allowed(self, layer: int, qpos: Tensor, kpos: Tensor) -> Tensor:
        """May query qpos[..., i] attend to key kpos[..., j] (broadcast)."""
        window = self.model.blocks[layer].attn.window
        ok = kpos <= qpos
        if window is not None:
            ok = ok & (kpos >= qpos - window)
        return ok

    # ---- attention pieces -----------------------------------------------------------------
    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, qpos: Tensor) -> Tensor:
        """z [C, Q, H, dh] for queries q [C, Q, H, dh] at ``qpos`` over all keys k, v [C, N, H, dh]."""
        scores = torch.einsum("cqhe,ckhe->chqk", q, k) / math.sqrt(self.cfg.d_head)
        keys = torch.arange(self.n, device=qpos.device)
        ok = self.allowed(layer, qpos[:, None], keys[None, :])
        pattern = scores.masked_fill(~ok, float("-inf")).softmax(dim=-1)
        return torch.einsum("chqk,ckhe->cqhe", pattern, v)

    def exact_rows(
        self,
        layer: int,
        bidx: Tensor,
        row_pos: Tensor,
        q_rows: Tensor,
        ppos: Tensor,
        k_new: Tensor,
        v_new: Tensor,
    ) -> Tensor:
        """z [R, H, dh] of single queries q_rows [R, H, dh] at positions row_pos [R] of target
        sequences bidx [R] whose key / value at ppos [R] are replaced by k_new, v_new [R, H, dh]."""
        pre = f"blocks.{layer}.attn.hook_"
        r = torch.arange(len(bidx), device=bidx.device)
        k = self.target(pre + "k", bidx)
        v = self.target(pre + "v", bidx)
        k[r, ppos], v[r, ppos] = k_new, v_new
        scores = torch.einsum("rhe,rkhe->rhk", q_rows, k) / math.sqrt(self.cfg.d_head)
        keys = torch.arange(self.n, device=bidx.device)
        ok = self.allowed(layer, row_pos[:, None], keys[None, :])[:, None]
        pattern = scores.masked_fill(~ok, float("-inf")).softmax(dim=-1)
        return torch.einsum("rhk,rkhe->rhe", pattern, v)

    def key_update(
        self, layer: int, qpos: Tensor, ppos: Tensor, k_new: Tensor, v_new: Tensor, bidx: Tensor
    ) -> Tensor:
        """z [C, Q, H, dh] at ``qpos`` when copy c's key and value at ppos[c] become
        k_new[c], v_new[c] [C, H, dh] (queries unchanged): a rank-one update of the target's
        softmax sums, with an exact recomputation of ill-conditioned rows."""
        pre = f"blocks.{layer}.attn.hook_"
        U, S, m = self.softmax_sums(layer)
        bq, qq = bidx[:, None], qpos[None, :]
        q = self.cache[pre + "q"][bq, qq]  # [C, Q, H, dh]
        s_old = self.cache[pre + "attn_scores"][bq, :, qq, ppos[:, None]]  # [C, Q, H]
        s_new = torch.einsum("cqhe,che->cqh", q, k_new) / math.sqrt(self.cfg.d_head)
        ok = self.allowed(layer, qq, ppos[:, None])[..., None]  # [C, Q, 1]
        m_q = m[bq, qq]
        zero = torch.zeros((), dtype=torch.float64, device=q.device)
        e_old = torch.where(ok, (s_old.double() - m_q).exp(), zero)
        e_new = torch.where(ok, (s_new.double() - m_q).clamp_max(700.0).exp(), zero)
        S_q = S[bq, qq]
        S_new = S_q - e_old + e_new
        U_new = (
            U[bq, qq]
            - e_old[..., None] * self.cache[pre + "v"][bidx, ppos][:, None].double()
            + e_new[..., None] * v_new[:, None].double()
        )
        z = (U_new / S_new[..., None]).to(q.dtype)
        bad = (S_new < 1e-6 * (S_q + e_old)) | (s_new.double() - m_q > 700.0)
        cb, qb = bad.any(-1).nonzero(as_tuple=True)
        if len(cb):
            z[cb, qb] = self.exact_rows(
                layer, bidx[cb], qpos[qb], q[cb, qb], ppos[cb], k_new[cb], v_new[cb]
            )
        return z

    def attn_out(self, layer: int, z: Tensor) -> Tensor:
        attn = self.model.blocks[layer].attn
        return torch.einsum("...qhe,hed->...qd", z, attn.W_O) + attn.b_O

    # ---- blocks ---------------------------------------------------------------------------
    def attn_block(self, layer: int, resid: Tensor, s: int, bidx: Tensor) -> Tensor:
        """Dense: resid_pre on positions s..N-1 -> resid_mid on the layer's query positions."""
        block = self.model.blocks[layer]
        attn = block.attn
        x = block.ln1(resid)
        k = torch.einsum("cpd,hde->cphe", x, attn.W_K) + attn.b_K
        v = torch.einsum("cpd,hde->cphe", x, attn.W_V) + attn.b_V
        if s > 0:
            pre = f"blocks.{layer}.attn.hook_"
            k = torch.cat([self.cache[pre + "k"][bidx, :s], k], dim=1)
            v = torch.cat([self.cache[pre + "v"][bidx, :s], v], dim=1)
        qpos = self.qpos(layer, s)
        rows = qpos - s
        xq, rq = (x, resid) if len(rows) == x.shape[1] else (x[:, rows], resid[:, rows])
        q = torch.einsum("cpd,hde->cphe", xq, attn.W_Q) + attn.b_Q
        return rq + self.attn_out(layer, self.attend(layer, q, k, v, qpos))

    def attn_block_row(self, layer: int, row: Tensor, ppos: Tensor, s: int, bidx: Tensor) -> Tensor:
        """Row: resid_pre = the target's with row [C, d] at ppos -> resid_mid at the query
        positions (dense from here on)."""
        block = self.model.blocks[layer]
        attn = block.attn
        x = block.ln1(row[:, None])[:, 0]  # [C, d]
        k_new = torch.einsum("cd,hde->che", x, attn.W_K) + attn.b_K
        v_new = torch.einsum("cd,hde->che", x, attn.W_V) + attn.b_V
        qpos = self.qpos(layer, s)
        z = self.key_update(layer, qpos, ppos, k_new, v_new, bidx)
        resid = self.target(f"blocks.{layer}.hook_resid_pre", bidx)[:, qpos]
        c, r = self.rows_at(qpos, ppos)
        if len(c):  # the query at p changed too
            q_new = torch.einsum("cd,hde->che", x[c], attn.W_Q) + attn.b_Q
            z[c, r] = self.exact_rows(layer, bidx[c], ppos[c], q_new, ppos[c], k_new[c], v_new[c])
            resid[c, r] = row[c]
        return resid + self.attn_out(layer, z)

    def rows_at(self, qpos: Tensor, ppos: Tensor) -> tuple[Tensor, Tensor]:
        """(copies, row indices) of the copies whose position ppos is among ``qpos``."""
        row_of = torch.full((self.n,), -1, dtype=torch.long, device=ppos.device)
        row_of[qpos] = torch.arange(len(qpos), device=ppos.device)
        rows = row_of[ppos]
        c = (rows >= 0).nonzero()[:, 0]
        return c, rows[c]

    def mlp_block(self, layer: int, resid_mid: Tensor) -> Tensor:
        if self.cfg.attn_only:
            return resid_mid
        block = self.model.blocks[layer]
        return resid_mid + block.mlp(block.ln2(resid_mid))

    def logits(self, x: Tensor) -> Tensor:
        return self.model.unembed(self.model.ln_final(x))

    # ---- continuations --------------------------------------------------------------------
    def run_from(self, layer: int, stage: str, x: Tensor, s: int, bidx: Tensor) -> Tensor:
        """Dense: finish the forward pass from ``stage`` ("pre", "mid", "post") of ``layer``;
        ``x`` lives on the layer's query positions (positions s..N-1 for "pre"). Returns the
        logits at the readout [C, R, vocab]."""
        last = self.cfg.n_layers - 1
        while True:
            if stage == "pre":
                x, stage = self.attn_block(layer, x, s, bidx), "mid"
            if stage == "mid":
                x, stage = self.mlp_block(layer, x), "post"
            if layer == last:
                return self.logits(x)
            layer, stage = layer + 1, "pre"

    def run_from_row(
        self, layer: int, stage: str, row: Tensor, ppos: Tensor, s: int, bidx: Tensor
    ) -> Tensor:
        """Row: the stream at ``stage`` of ``layer`` is the target's with row [C, d] at ppos."""
        if stage == "pre":
            mid = self.attn_block_row(layer, row, ppos, s, bidx)
            return self.run_from(layer, "mid", mid, s, bidx)
        if stage == "mid":
            row = self.mlp_block(layer, row[:, None])[:, 0]
        if layer < self.cfg.n_layers - 1:
            return self.run_from_row(layer + 1, "pre", row, ppos, s, bidx)
        x = self.target(f"blocks.{layer}.hook_resid_post", bidx)[:, self.readout]
        c, r = self.rows_at(self.readout, ppos)
        x[c, r] = row[c]
        return self.logits(x)


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


def _chunk_size(cfg, n: int, batch: int, n_query: int, budget: int) -> int:
    """Patches per chunk so the largest per-chunk tensor stays within ``budget`` elements."""
    width = max(cfg.d_model, cfg.n_heads * cfg.d_head, 0 if cfg.attn_only else cfg.d_mlp)
    per_copy = max(cfg.n_heads * n_query * n, n * width)
    return max(1, budget // (batch * per_copy))


_STREAMS = {  # act -> (stage of the residual stream it sets, stream it is added to)
    "resid_pre": ("pre", None),
    "attn_out": ("mid", "hook_resid_pre"),
    "resid_mid": ("mid", None),
    "mlp_out": ("post", "hook_resid_mid"),
    "resid_post": ("post", None),
}


def _patch_chunk(
    eng: _Engine, act: str, src: Tensor, layer: int, pos: Tensor, head: Tensor, metric: Metric
) -> Tensor:
    """Metric [P, B] of P patches in one layer at positions ``pos`` / heads ``head`` (-1: all);
    ``src`` is the source activation of that layer."""
    B, N, P = eng.batch, eng.n, len(pos)
    dev = eng.readout.device
    C = P * B
    bidx = torch.arange(B, device=dev).repeat(P)  # copy c = p * B + b
    cp = torch.arange(C, device=dev)
    ppos = pos.repeat_interleave(B)
    phead = head.repeat_interleave(B)
    all_pos = bool((pos < 0).any())
    s = 0 if all_pos else min(int(pos.min()), int(eng.readout.min()))
    last = layer == eng.cfg.n_layers - 1
    pre = f"blocks.{layer}.attn.hook_"

    def done(logits: Tensor) -> Tensor:
        return metric(logits.view(P, B, *logits.shape[1:]))

    if act in LAYER_ACTS:
        stage, add = _STREAMS[act]
        if not all_pos:
            row = src[bidx, ppos]
            if add is not None:
                row = eng.cache[f"blocks.{layer}.{add}"][bidx, ppos] + row
            return done(eng.run_from_row(layer, stage, row, ppos, s, bidx))
        full = src.index_select(0, bidx)
        if add is not None:
            full = eng.target(f"blocks.{layer}.{add}", bidx) + full
        if stage == "post" and not last:
            return done(eng.run_from(layer + 1, "pre", full[:, s:], s, bidx))
        x = full[:, eng.readout] if (last and stage != "pre") else full[:, s:]
        return done(eng.run_from(layer, stage, x, s, bidx))

    if not all_pos and act in ("z", "q", "pattern"):  # the attention output changes at p only
        if act == "z":
            z_row = eng.cache[pre + "z"][bidx, ppos]
            z_row[cp, phead] = src[bidx, ppos, phead]
        elif act == "q":
            q_row = eng.cache[pre + "q"][bidx, ppos]
            q_row[cp, phead] = src[bidx, ppos, phead]
            k_p, v_p = eng.cache[pre + "k"][bidx, ppos], eng.cache[pre + "v"][bidx, ppos]
            z_row = eng.exact_rows(layer, bidx, ppos, q_row, ppos, k_p, v_p)
        else:
            p_row = eng.cache[pre + "pattern"][bidx, :, ppos]  # [C, H, N]
            p_row[cp, phead] = src[bidx, phead, ppos]
            z_row = torch.einsum("chk,ckhe->che", p_row, eng.target(pre + "v", bidx))
        row = eng.cache[f"blocks.{layer}.hook_resid_pre"][bidx, ppos]
        row = row + eng.attn_out(layer, z_row[:, None])[:, 0]
        return done(eng.run_from_row(layer, "mid", row, ppos, s, bidx))

    qpos = eng.qpos(layer, s)
    if not all_pos:  # k or v at p: one key / value per copy changes
        k_p, v_p = eng.cache[pre + "k"][bidx, ppos], eng.cache[pre + "v"][bidx, ppos]
        (k_p if act == "k" else v_p)[cp, phead] = src[bidx, ppos, phead]
        z = eng.key_update(layer, qpos, ppos, k_p, v_p, bidx)
    else:  # one head at every position: recompute the layer's attention densely
        bq, qq, hq = bidx[:, None], qpos[None, :], phead[:, None]
        if act == "z":
            z = eng.target(pre + "z", bidx)[:, qpos]
            z[cp, :, phead] = src[bq, qq, hq]
        elif act == "pattern":
            pattern = eng.target(pre + "pattern", bidx)[:, :, qpos]
            pattern[cp, phead] = src[bq, hq, qq]
            z = torch.einsum("chqk,ckhe->cqhe", pattern, eng.target(pre + "v", bidx))
        else:
            q = eng.target(pre + "q", bidx)[:, qpos]
            k = eng.target(pre + "k", bidx)
            v = eng.target(pre + "v", bidx)
            every = torch.arange(N, device=dev)[None, :]
            if act == "q":
                q[cp, :, phead] = src[bq, qq, hq]
            else:
                (k if act == "k" else v)[cp, :, phead] = src[bq, every, hq]
            z = eng.attend(layer, q, k, v, qpos)
    mid = eng.target(f"blocks.{layer}.hook_resid_pre", bidx)[:, qpos] + eng.attn_out(layer, z)
    return done(eng.run_from(layer, "mid", mid, s, bidx))


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
) -> Tensor:
    """Patch ``source`` activations of kind ``act`` into the run on ``target_tokens``, one
    (layer, position[, head]) at a time, and return the metric for every patch (layout:
    ``result_axes(act, by_pos)``, plus a trailing batch axis with reduce="none").

    source: hook name -> activation of the same shape as the target's (e.g. a clean run's
    cache for denoising; see ``ablation_source`` for mean / resample ablation).
    metric: logits at the ``readout`` positions [*patch, batch, readout, vocab] ->
    [*patch, batch]; it must not read other positions (they are not computed).
    budget: bound (float elements) on the largest tensor of one chunk.
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
    for layer in range(cfg.n_layers):
        name = hook_name(act, layer)
        if name not in source:
            raise ValueError(f"source has no activation {name!r}")
    eng = _Engine(model, tokens, torch.tensor(R, device=dev))
    for layer in range(cfg.n_layers):
        name = hook_name(act, layer)
        if tuple(source[name].shape) != tuple(eng.cache[name].shape):
            raise ValueError(
                f"source {name!r} has shape {tuple(source[name].shape)}, the target run's is "
                f"{tuple(eng.cache[name].shape)} (same batch size and length needed)"
            )
    index = _index_grid(act, by_pos, cfg.n_layers, N, cfg.n_heads).to(dev)
    out = torch.empty(len(index), B, device=dev, dtype=model.W_E.dtype)
    for layer in range(cfg.n_layers):
        rows = (index[:, 0] == layer).nonzero()[:, 0]
        rows = rows[index[rows, 1].argsort(stable=True)]  # by position: narrow suffixes per chunk
        all_pos = bool((index[rows, 1] < 0).any())
        quadratic = layer + (0 if all_pos else 1) <= cfg.n_layers - 2  # dense non-final layer
        size = _chunk_size(cfg, N, B, N if quadratic else len(R), budget)
        if not all_pos:  # >= SUFFIX_CHUNKS chunks, so each recomputes a suffix close to its patch
            size = min(size, -(-len(rows) // SUFFIX_CHUNKS))
        src = source[hook_name(act, layer)].to(dev)
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            values = _patch_chunk(eng, act, src, layer, index[chunk, 1], index[chunk, 2], metric)
            out[chunk] = values.to(out.dtype)
    shape = _result_shape(act, by_pos, cfg.n_layers, N, cfg.n_heads)
    out = out.view(*shape, B)
    return out.mean(-1) if reduce == "mean" else out


def _result_shape(act: str, by_pos: bool, n_layers: int, n: int, n_heads: int) -> tuple[int, ...]:
    sizes = {"layer": n_layers, "pos": n, "head": n_heads, "dest_pos": n}
    return tuple(sizes[a] for a in result_axes(act, by_pos))


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
) -> PatchingResult:
    """Patch every (layer, position[, head]) of each activation kind in ``acts``.

    direction "denoise": clean activations into the corrupted run (sufficiency);
    "noise": corrupted activations into the clean run (necessity).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    for act in acts:
        _check_act(model, act)
    dev = model.W_E.device
    data = data.to(dev)
    fn = make_metric(metric, data)
    clean_logits, clean_cache = model.run_with_cache(data.clean, return_cache_object=False)
    corrupt_logits, corrupt_cache = model.run_with_cache(data.corrupt, return_cache_object=False)
    m_clean = float(fn(clean_logits[:, -1:]).mean())
    m_corrupt = float(fn(corrupt_logits[:, -1:]).mean())
    if metric == "logit_diff":
        true_clean, true_corrupt = data.true_logit_diff()
    else:
        true_clean, true_corrupt = data.true_logprob()
    if direction == "denoise":
        target, source = data.corrupt, clean_cache
    else:
        target, source = data.clean, corrupt_cache
    raw = {act: patch_sweep(model, target, source, act, fn, budget=budget).cpu() for act in acts}
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
) -> dict[str, Tensor]:
    """Source activations for ablating a batch of ``batch`` sequences (REFERENCE.md section 5):
    "mean": every activation's mean over ``reference_tokens`` at the same position;
    "resample": the activations of a reference sequence drawn at random (with ``generator``)
    for each example. Pass the result to ``patch_sweep`` as ``source``."""
    if mode not in ABLATIONS:
        raise ValueError(f"ablation mode must be one of {ABLATIONS}, got {mode!r}")
    tokens = model.check_tokens(reference_tokens).to(model.W_E.device)
    _, cache = model.run_with_cache(tokens, return_cache_object=False)
    if mode == "mean":
        return {k: v.mean(0, keepdim=True).expand(batch, *v.shape[1:]) for k, v in cache.items()}
    pick = torch.randint(0, tokens.shape[0], (batch,), generator=generator)
    return {k: v[pick.to(v.device)] for k, v in cache.items()}


@torch.no_grad()
def run_ablation(
    model: MarkovTransformer,
    data: PatchingData,
    reference_tokens: Int[Tensor, "ref pos"],
    mode: str,
    acts: Sequence[str] = ("attn_out", "mlp_out", "z"),
    generator: torch.Generator | None = None,
    budget: int = DEFAULT_BUDGET,
) -> dict:
    """Mean or resample ablation of each (layer, position[, head]) in the clean run: the
    increase of the next-token loss, -log p(x_{N+1}) (nats), per patch (layout as
    ``result_axes``); and with ``_all`` suffixes the whole layer / head at every position."""
    dev = model.W_E.device
    data = data.to(dev)
    fn = make_metric("logprob", data)
    logits = model(data.clean)
    base = float(fn(logits[:, -1:]).mean())
    source = ablation_source(model, data.clean.shape[0], reference_tokens, mode, generator)
    out: dict = {"mode": mode, "clean_logprob": base, "loss_increase": {}}
    for act in acts:
        _check_act(model, act)
        for by_pos in (True, False):
            grid = patch_sweep(model, data.clean, source, act, fn, by_pos=by_pos, budget=budget)
            key = act if by_pos else f"{act}_all"
            out["loss_increase"][key] = (base - grid).cpu()
    return out


@torch.no_grad()
def direct_path_effects(
    model: MarkovTransformer, data: PatchingData, metric: str = "logit_diff"
) -> dict:
    """Where the corruption's effect enters the logits at the readout (last position).

    The final residual stream there is embed + pos_embed + sum_l attn_out_l + sum_l mlp_out_l.
    For each component X (the token embedding = the direct path, each head's z W_O, each MLP)
    the clean final residual gets X's corrupted value instead of its clean one and the logits
    are recomputed through ln_final and the unembedding (everything else clean): effect
    E_X = M_clean - M_patched. share_X = E_X / (M_clean - M_corrupt). The shares of all
    components add up to 1 up to the final LayerNorm / softmax non-linearity, reported as
    ``additivity_gap`` = sum_X share_X - 1.
    """
    dev = model.W_E.device
    data = data.to(dev)
    fn = make_metric(metric, data)
    cfg = model.cfg
    runs = []
    for tokens in (data.clean, data.corrupt):
        _, cache = model.run_with_cache(tokens, return_cache_object=False)
        runs.append(cache)
    clean, corrupt = runs
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"

    def at_readout(cache: dict, name: str) -> Tensor:
        return cache[name][:, -1]

    labels, diffs = ["embed"], [at_readout(corrupt, "hook_embed") - at_readout(clean, "hook_embed")]
    for layer in range(cfg.n_layers):
        W_O = model.blocks[layer].attn.W_O
        z_name = f"blocks.{layer}.attn.hook_z"
        dz = at_readout(corrupt, z_name) - at_readout(clean, z_name)  # [B, H, dh]
        head_diff = torch.einsum("bhe,hed->hbd", dz, W_O)
        for head in range(cfg.n_heads):
            labels.append(f"L{layer}H{head}")
            diffs.append(head_diff[head])
        if not cfg.attn_only:
            name = f"blocks.{layer}.hook_mlp_out"
            labels.append(f"L{layer}.mlp_out")
            diffs.append(at_readout(corrupt, name) - at_readout(clean, name))
    resid = at_readout(clean, last)  # [B, d]
    patched = resid[None] + torch.stack(diffs)  # [K, B, d]
    logits = model.unembed(model.ln_final(patched))[:, :, None]  # [K, B, 1, V]
    m_clean = float(fn(model.unembed(model.ln_final(resid))[:, None]).mean())
    m_corrupt = float(fn(model.unembed(model.ln_final(at_readout(corrupt, last)))[:, None]).mean())
    effects = (m_clean - fn(logits).mean(-1)).tolist()
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
        "clean": m_clean,
        "corrupt": m_corrupt,
        "total_effect": total,
        "effects": effect_of,
        "group_effects": groups,
        "shares": shares,
        "additivity_gap": (sum(shares.values()) - 1.0) if defined else float("nan"),
    }
