"""Batched activation patching (interp.patching.patch_sweep) vs transformer_lens.patching.

Both sides patch every (layer, position) of one activation kind of the same paper-style model
(d_model 8, learned positions, tied embeddings) on the same clean / corrupted batches (a binary
p=0.5, q=0.8 chain), with the same metric (logit difference at the last position), in this
process, one after the other, TransformerLens under torch.no_grad() and with its tqdm bar
silenced. Each row reports both wall times (best of ``repeats``), the ratio and the largest
absolute difference of the two results.

Corruptions: "flip" (x_n flipped, the package's default: only the last position differs, so
patch_sweep skips every earlier one) and "resample" (an independent sequence: every position
differs and every patch is a forward pass, as in a mean or resample ablation).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import time
from collections.abc import Sequence

import torch
import transformer_lens.patching as tl_patching

from interp.patching import patch_sweep
from training.chains import BinaryChain
from training.config import ModelConfig
from training.model import MarkovTransformer

TL_FUNCTIONS = {
    "resid_pre": tl_patching.get_act_patch_resid_pre,
    "resid_mid": tl_patching.get_act_patch_resid_mid,
    "attn_out": tl_patching.get_act_patch_attn_out,
    "mlp_out": tl_patching.get_act_patch_mlp_out,
    "z": tl_patching.get_act_patch_attn_head_out_by_pos,
    "q": tl_patching.get_act_patch_attn_head_q_by_pos,
    "k": tl_patching.get_act_patch_attn_head_k_by_pos,
    "v": tl_patching.get_act_patch_attn_head_v_by_pos,
    "pattern": tl_patching.get_act_patch_attn_head_pattern_by_pos,
}

CORRUPTIONS = ("flip", "resample")

# settings of ``markov-lens bench`` per mode (benchmarks.suite.patching_comparisons reads this)
BENCH_SIZES = {
    "full": {
        "seq_len": 256,
        "layers": (1, 2),
        "batch": 8,
        "repeats": 2,
        "corruptions": CORRUPTIONS,
    },
    "quick": {"seq_len": 256, "layers": (1,), "batch": 8, "repeats": 1, "corruptions": CORRUPTIONS},
    "tiny": {"seq_len": 32, "layers": (1,), "batch": 2, "repeats": 1},
}


def _device(device: str | torch.device | None) -> torch.device:
    from training.devices import resolve_device

    return resolve_device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, repeats: int, device: torch.device):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def _metric(logits):
    """Logit difference at the last position: [..., batch, readout, vocab] -> [..., batch]."""
    return logits[..., -1, 1] - logits[..., -1, 0]


def _compare(
    model, corrupt, clean_cache, act: str, repeats: int, dev
) -> tuple[float, float, float]:
    """(batched seconds, transformer_lens seconds, max |difference|) for one sweep."""
    source = dict(clean_cache.items())

    def tl_metric(logits):  # [batch, pos, vocab] -> scalar
        return _metric(logits[:, -1:]).mean()

    def run_tl():
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            return TL_FUNCTIONS[act](model, corrupt, clean_cache, tl_metric)

    batched_s, mine = _best_time(
        lambda: patch_sweep(model, corrupt, source, act, _metric), repeats, dev
    )
    tl_s, ref = _best_time(run_tl, repeats, dev)
    return batched_s, tl_s, float((ref.to(mine.device) - mine).abs().max())


def benchmark_patching(
    seq_len: int = 256,
    layers: Sequence[int] = (1, 2),
    batch: int = 8,
    acts: Sequence[str] = ("resid_pre",),
    d_model: int = 8,
    repeats: int = 1,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    corruptions: Sequence[str] = ("flip",),
) -> list[dict]:
    """One row per (corruption, n_layers, act): name "ACT, L=..., N=..." ("ACT, resample, L=...,
    N=..." for the resample corruption), batched_s, transformer_lens_s (seconds), ratio
    (= transformer_lens_s / batched_s), max_abs_diff and the settings."""
    for act in acts:
        if act not in TL_FUNCTIONS:
            raise ValueError(f"unknown act {act!r}; allowed: {sorted(TL_FUNCTIONS)}")
    for corruption in corruptions:
        if corruption not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {corruption!r}; allowed: {CORRUPTIONS}")
    if repeats < 1 or batch < 1 or seq_len < 2:
        raise ValueError(
            f"need repeats >= 1, batch >= 1, seq_len >= 2; got {repeats}, {batch}, {seq_len}"
        )
    dev = _device(device)
    gen = torch.Generator().manual_seed(seed)
    chain = BinaryChain(0.5, 0.8)
    clean = chain.sample(batch, seq_len, generator=gen).to(dev)
    flipped = clean.clone()
    flipped[:, -1] = 1 - flipped[:, -1]
    resampled = chain.sample(batch, seq_len, generator=gen).to(dev)
    rows = []
    for corruption, n_layers in itertools.product(corruptions, layers):
        corrupt = flipped if corruption == "flip" else resampled
        cfg = ModelConfig.paper(n_ctx=seq_len, n_layers=n_layers, d_model=d_model)
        model = MarkovTransformer(cfg, seed=seed).to(dev).eval()

        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean)
            _, short_cache = model.run_with_cache(clean[:, :4])
        kind = "" if corruption == "flip" else f"{corruption}, "
        for act in acts:
            # untimed: one-off costs (TransformerLens's first sweep takes about a second more)
            _compare(model, corrupt[:, :4], short_cache, act, 1, dev)
            batched_s, tl_s, diff = _compare(model, corrupt, clean_cache, act, repeats, dev)
            rows.append(
                {
                    "name": f"{act}, {kind}L={n_layers}, N={seq_len}",
                    "act": act,
                    "corruption": corruption,
                    "n_layers": n_layers,
                    "seq_len": seq_len,
                    "batch": batch,
                    "d_model": d_model,
                    "batched_s": batched_s,
                    "transformer_lens_s": tl_s,
                    "ratio": tl_s / batched_s,
                    "max_abs_diff": diff,
                    "device": str(dev),
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


def format_row(row: dict) -> str:
    """``patching (ACT[, resample], L=.., N=..): batched vs transformer_lens: R.Rx``."""
    return f"patching ({row['name']}): batched vs transformer_lens: {row['ratio']:.1f}x"
