"""The paper's training step per attention backend, its FLOP bound, and attention windows.

- step: one training update of the paper's model (ModelConfig.paper(): 1 layer, d_model 8,
  1 head, tied; batch 16 x length 1024; fixed tokens, so no sampling: forward, backward,
  AdamW) with each attention backend of the model (``set_attention_backend``): "auto" (the
  compiled fused kernel of training.fused_attention on a CPU), "torch" (a plain PyTorch step
  with SDPA attention) and "explicit" (scores and pattern materialised). Next to it the
  attention FLOP bound of that step on this machine (``attention_flops`` /
  ``matmul_gflops``: the sustained fp32 matmul rate measured here).
- window: the same update (backend "auto") with attention windows M in {2, 8, 32, full} at
  lengths N in {512, 1024, 2048}: a table, and each window's step against full attention.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.measure import Comparison, format_ms, interleaved_best, load_average, sync
from benchmarks.settings import CHAINS, STEP_BACKENDS
from training.chains import BinaryChain
from training.config import ModelConfig
from training.fused_attention import choose, kernel_status
from training.model import MarkovTransformer, per_token_loss
from training.recipe import TrainConfig
from training.trainer import derive_seed, make_generator, make_optimizer


def _layer_windows(model_config: ModelConfig) -> list[int | None]:
    w = model_config.attn_window
    return list(w) if isinstance(w, list) else [w] * model_config.n_layers


def attention_flops(model_config: ModelConfig, batch: int, seq_len: int) -> int:
    """FLOPs of the attention matmuls of one training update (forward and backward) of a
    model of `model_config` on [batch, seq_len] tokens.

    Per layer, S = the scores computed: B * H * N (N + 1) / 2 for causal attention; with a
    window M (query i sees keys i - M .. i) B * H * ((M + 1)(M + 2) / 2 + (N - M - 1)(M + 1)).
    Every score takes 2 * d_head FLOPs in each matmul it is part of: forward Q K^T and P V
    (4 * d_head * S), backward dP = dZ V^T, dV = P^T dZ, dQ = dS K, dK = dS^T Q
    (8 * d_head * S); in all 12 * d_head * S per layer. Softmax, projections, MLP, loss and
    optimiser are not counted: no implementation can take less than this at the measured
    matmul rate, so it is a lower bound on the step, not an estimate of it.
    """
    n = seq_len
    total = 0
    for window in _layer_windows(model_config):
        if window is None or window >= n - 1:
            scores = n * (n + 1) // 2
        else:
            m = window
            scores = (m + 1) * (m + 2) // 2 + (n - m - 1) * (m + 1)
        total += 12 * model_config.d_head * batch * model_config.n_heads * scores
    return total


def matmul_gflops(device: torch.device, size: int = 512, repeats: int = 10) -> float:
    """This machine's sustained fp32 matmul rate (GFLOP/s, with the current torch threads):
    the best of `repeats` torch.mm of two [size, size] matrices (2 size^3 FLOPs each)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=gen)
    b = torch.randn(size, size, device=device, generator=gen)
    c = torch.empty(size, size, device=device)
    torch.mm(a, b, out=c)  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def paper_update(
    model_config: ModelConfig,
    batch: int,
    backend: str,
    device: torch.device,
    precision: str = "fp32",
) -> Callable[[int], None]:
    """One training update of a fresh model (seed 0) with attention backend `backend`, on
    fixed tokens [batch, model_config.n_ctx] (no sampling in the timing): forward, the
    trainer's loss, backward, AdamW (trainer.make_optimizer, the paper's recipe)."""
    seq_len = model_config.n_ctx
    model = MarkovTransformer(model_config, seed=0).to(device)
    model.set_attention_backend(backend)
    tc = TrainConfig(batch=batch, seq_len=seq_len, device=str(device), precision=precision)
    opt, _ = make_optimizer(model, tc)
    gen = make_generator(device, derive_seed(0, 1, 0))
    tokens = BinaryChain(*CHAINS[0]).sample(batch, seq_len, generator=gen)
    bf16 = precision == "bf16"

    def update(step: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = per_token_loss(model(tokens).float(), tokens).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return update


def backend_labels(device: torch.device, precision: str = "fp32") -> dict[str, str]:
    """What each attention backend computes with here (the step section's line labels)."""
    if device.type != "cpu":
        auto = f"auto (SDPA on {device.type})"
    elif precision != "fp32":
        auto = f"auto (explicit: {precision} on a CPU)"
    elif kernel_status() == "loaded":
        auto = "auto (measured: kernel or SDPA)"
    else:
        auto = "auto (no kernel: SDPA)"
    return {"auto": auto, "torch": "SDPA", "explicit": "explicit"}


def _model_words(model_config: ModelConfig) -> str:
    layers = model_config.n_layers
    return f"{layers} layer{'s' if layers > 1 else ''}, d {model_config.d_model}"


def compare_step(
    batch: int,
    seq_len: int,
    repeats: int,
    device: torch.device,
    gflops: float,
    precision: str = "fp32",
) -> tuple[list[Comparison], dict[str, Any]]:
    """The paper's training update (ModelConfig.paper(), [batch, seq_len]) with each attention
    backend (STEP_BACKENDS), timed in turn (interleaved_best): Comparisons of "auto" against
    "torch" and "explicit", and the step's figures: ms per backend, attention FLOPs
    (attention_flops), the bound at `gflops` and the step (backend auto) over the bound."""
    mc = ModelConfig.paper(n_ctx=seq_len)
    load_before = load_average()
    fns = [paper_update(mc, batch, b, device, precision) for b in STEP_BACKENDS]
    times = dict(zip(STEP_BACKENDS, interleaved_best(fns, repeats, device), strict=True))
    labels = backend_labels(device, precision)
    flops = attention_flops(mc, batch, seq_len)
    bound = flops / (gflops * 1e9)
    paper = batch == 16 and seq_len == 1024
    shape = f"{_model_words(mc)}, {batch} x {seq_len}"
    name = f"paper step ({shape})" if paper else f"paper step, REDUCED ({shape})"
    info = {
        "name": name,
        "batch": batch,
        "seq_len": seq_len,
        "layers": mc.n_layers,
        "d_model": mc.d_model,
        "repeats": repeats,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "kernel": kernel_status() if device.type == "cpu" else None,
        "backend_labels": labels,
        "step_ms": {b: 1e3 * t for b, t in times.items()},
        "attention_flops": flops,
        "matmul_gflops": gflops,
        "bound_ms": 1e3 * bound,
        "step_over_bound": times["auto"] / bound,
        "load_average": [load_before, load_average()],
    }
    comps = [
        Comparison(name, labels["auto"], labels[b], times["auto"], times[b], info)
        for b in ("torch", "explicit")
    ]
    return comps, info


def window_rows(
    batch: int,
    seq_lens: list[int],
    windows: list[int | None],
    repeats: int,
    device: torch.device,
    gflops: float,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """ms per training update (paper_update, backend "auto") of the paper's model with each
    attention window (None: full causal attention) at each length; the windows of one length
    are timed in turn (interleaved_best). Each row: seq_len, window, step_ms, vs_full (step /
    the full-attention step at that length; None without a full-attention entry),
    attention_flops and bound_ms (at `gflops`)."""
    rows = []
    for n in seq_lens:
        configs = [ModelConfig.paper(n_ctx=n, attn_window=w) for w in windows]
        fns = [paper_update(mc, batch, "auto", device, precision) for mc in configs]
        times = interleaved_best(fns, repeats, device)
        full = times[windows.index(None)] if None in windows else None
        for w, mc, t in zip(windows, configs, times, strict=True):
            flops = attention_flops(mc, batch, n)
            rows.append(
                {
                    "seq_len": n,
                    "window": w,
                    "batch": batch,
                    "step_ms": 1e3 * t,
                    "vs_full": t / full if full else None,
                    "attention_flops": flops,
                    "bound_ms": 1e3 * flops / (gflops * 1e9),
                }
            )
    return rows


def window_comparisons(rows: list[dict[str, Any]], reduced: bool) -> list[Comparison]:
    """Each finite window's step against full attention at the same length."""
    full = {r["seq_len"]: r for r in rows if r["window"] is None}
    out = []
    for r in rows:
        n = r["seq_len"]
        if r["window"] is None or n not in full:
            continue
        where = f"N={n}, batch {r['batch']}, paper model"
        out.append(
            Comparison(
                f"window cost{', REDUCED' if reduced else ''} ({where})",
                f"window {r['window']}",
                "full attention",
                r["step_ms"] / 1e3,
                full[n]["step_ms"] / 1e3,
                r,
            )
        )
    return out


def format_window_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of window_rows."""
    head = ["N", "window", "step ms", "step / full", "attention FLOP bound ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vs = "n/a" if r["vs_full"] is None else f"{r['vs_full']:.2f}x"
        window = "full" if r["window"] is None else str(r["window"])
        cells = [str(r["seq_len"]), window, format_ms(r["step_ms"]), vs, format_ms(r["bound_ms"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def auto_rows(
    batch: int, seq_lens: list[int], repeats: int, device: torch.device, precision: str = "fp32"
) -> list[dict[str, Any]]:
    """The paper step with backend "auto" against the same model with SDPA ("torch") at each
    length, timed in turn (interleaved_best), with what auto chose and why
    (training.fused_attention.choose). Each row: seq_len, auto_ms, torch_ms, ratio (torch /
    auto: >= 1 means auto is not slower), choice, why."""
    rows = []
    for seq_len in seq_lens:
        mc = ModelConfig.paper(n_ctx=seq_len)
        fns = [paper_update(mc, batch, b, device, precision) for b in ("auto", "torch")]
        t_auto, t_torch = interleaved_best(fns, repeats, device)
        if device.type == "cpu" and precision == "fp32":
            choice, why = choose(seq_len, mc.d_head, None, True)
        else:
            choice, why = "torch", f"torch: the kernel is for {precision} on a CPU only"
        rows.append(
            {
                "seq_len": seq_len,
                "auto_ms": 1e3 * t_auto,
                "torch_ms": 1e3 * t_torch,
                "ratio": t_torch / t_auto,
                "choice": choice,
                "why": why,
            }
        )
    return rows
