"""A stack of runs against the same runs one by one, and how a step's time scales.

- ensemble: train_ensemble of K members (different seeds and chains, one shape) vs K
  sequential trainer.train runs, in memory, same configs, at lengths 256 and 1024;
  aggregate training tokens/s, and which of the two paths the sweeps take there
  (training.sweeps.ensemble.stacking_pays) and whether it is the faster one measured.
- scaling: step time of the ensemble and of one run against length, members and depth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.measure import (
    Comparison,
    PeakMemory,
    interleaved_best,
    load_average,
    saved_activation_bytes,
    sync,
)
from benchmarks.settings import CHAINS
from training.chains import BinaryChain
from training.config import ModelConfig
from training.model import MarkovTransformer, per_token_loss
from training.options import build_run_config
from training.recipe import TrainConfig
from training.stacked import Member, StackedWeights, member_losses, stacked_logits
from training.sweeps.ensemble import stacking_pays
from training.trainer import (
    derive_seed,
    make_generator,
    make_optimizer,
    member_batches,
    resolve_device,
    train,
    train_ensemble,
)


def bench_members(n: int, model_config: ModelConfig) -> list[Member]:
    """n members of one shape: seeds 0..n-1, chains cycling through CHAINS."""
    return [Member(model_config, BinaryChain(*CHAINS[i % len(CHAINS)]), i) for i in range(n)]


def _warm_up(model_config: ModelConfig, train_config: TrainConfig) -> None:
    """One tiny run through each path: lazy imports and kernel set-up stay out of timings."""
    tc = TrainConfig(
        iters=2, batch=2, seq_len=8, eval_every=1, eval_batches=1, device=train_config.device
    )
    mc = ModelConfig.from_dict(model_config.to_dict() | {"n_ctx": 8})
    train(mc, BinaryChain(0.5, 0.8), tc, seed=0, progress=False)
    train_ensemble(bench_members(2, mc), tc, progress=False)


def compare_ensemble(
    members: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    label: str,
) -> Comparison:
    """train_ensemble of `members` runs vs the same runs with trainer.train one after the
    other (in memory, same configs and seeds); times are total wall seconds. The sequential
    runs are split in two halves timed before and after the ensemble, so that a change of
    the machine's load during the measurement affects both sides alike."""
    device = resolve_device(train_config.device)
    _warm_up(model_config, train_config)
    runs = bench_members(members, model_config)
    tokens = members * train_config.iters * train_config.tokens_per_step
    timings: dict[str, float] = {}
    load_before = load_average()

    def sequential(part: list[Member]) -> tuple[list, float, int | None]:
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            out = [
                train(m.model_config, m.chain, train_config, seed=m.seed, progress=False)
                for m in part
            ]
            sync(device)
        return out, time.perf_counter() - t0, mem.peak

    half = members // 2
    seq_a, t_a, mem_a = sequential(runs[:half])
    with PeakMemory(device) as mem_e:
        t0 = time.perf_counter()
        ens = train_ensemble(runs, train_config, progress=False, timings=timings)
        sync(device)
        t_ens = time.perf_counter() - t0
    seq_b, t_b, mem_b = sequential(runs[half:])
    seq, t_seq = seq_a + seq_b, t_a + t_b
    peaks = [p for p in (mem_a, mem_b) if p is not None]
    seq_peak = max(peaks) if peaks else None
    same = sum(a["verdict"] == b["verdict"] for a, b in zip(ens, seq, strict=True))
    act_ens, act_one = _activations(model_config, train_config, runs)
    data_share = timings["data_s"] / (timings["data_s"] + timings["step_s"])
    details = {
        "members": members,
        "iters": train_config.iters,
        "seq_len": train_config.seq_len,
        "batch": train_config.batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "ensemble_tokens_per_s": tokens / t_ens,
        "sequential_tokens_per_s": tokens / t_seq,
        "ensemble_peak_memory": mem_e.peak,
        "sequential_peak_memory": seq_peak,
        "memory_measure": mem_e.kind,
        "ensemble_activations": act_ens,
        "single_run_activations": act_one,
        "data_share_of_step": data_share,
        "ensemble_timings": timings,
        "same_verdicts": f"{same}/{members}",
        "load_average": [load_before, load_average()],
    }
    return Comparison(
        f"ensemble training ({label})",
        f"{members}-member ensemble {tokens / t_ens:,.0f} tok/s",
        f"{members} sequential runs {tokens / t_seq:,.0f} tok/s",
        t_ens,
        t_seq,
        details,
    )


def sweep_path(train_config: TrainConfig, ratio: float | None) -> dict[str, Any]:
    """Which path the sweeps take for runs of the paper's model with `train_config`
    (training.sweeps.ensemble.stacking_pays on that RunConfig: "stacked" or "one by one") and
    whether it is the faster one by the measured ratio (sequential time / ensemble time)."""
    chain = {"p": CHAINS[0][0], "q": CHAINS[0][1]}
    stacked = stacking_pays(build_run_config({"chain": chain, "train": train_config.to_dict()}))
    if ratio is None:
        faster = None
    else:
        faster = ratio >= 1 if stacked else ratio <= 1
    return {"sweeps_use": "stacked" if stacked else "one by one", "sweeps_take_faster": faster}


def _activations(
    model_config: ModelConfig, train_config: TrainConfig, runs: list[Member]
) -> tuple[int, int]:
    """Saved activations (bytes) of one training forward: the ensemble of `runs`, one run."""
    device = resolve_device(train_config.device)
    models = [MarkovTransformer(model_config, seed=m.seed).to(device) for m in runs]
    weights = StackedWeights.from_models(models)
    tokens = member_batches(
        [m.chain for m in runs], [m.seed for m in runs], 0, train_config, device
    )

    def ensemble_loss() -> torch.Tensor:
        logits = stacked_logits(models[0], weights.params, tokens)
        return member_losses(logits.float(), tokens).sum()

    models[0].set_fused_attention(train_config.fused_attention)

    def single_loss() -> torch.Tensor:
        return per_token_loss(models[0](tokens[0]).float(), tokens[0]).mean()

    return saved_activation_bytes(ensemble_loss), saved_activation_bytes(single_loss)


def _ensemble_step(
    model_config: ModelConfig, train_config: TrainConfig, members: int
) -> tuple[Callable[[int], Any], Callable[[int], Any], int]:
    """One ensemble update of `members` models (data + forward + backward + AdamW) as a
    function of the step, its data sampling alone, and the update's saved activations."""
    device = resolve_device(train_config.device)
    runs = bench_members(members, model_config)
    models = [MarkovTransformer(model_config, seed=m.seed).to(device) for m in runs]
    weights = StackedWeights.from_models(models)
    opt, _ = make_optimizer(weights, train_config)
    chains, seeds = [m.chain for m in runs], [m.seed for m in runs]

    def data(step: int) -> torch.Tensor:
        return member_batches(chains, seeds, step, train_config, device)

    def loss(tokens: torch.Tensor) -> torch.Tensor:
        logits = stacked_logits(models[0], weights.params, tokens)
        return member_losses(logits.float(), tokens).sum()

    def update(step: int) -> None:
        value = loss(data(step))
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return update, data, saved_activation_bytes(lambda: loss(data(0)))


def _single_step(
    model_config: ModelConfig, train_config: TrainConfig
) -> tuple[Callable[[int], Any], int]:
    """One trainer update of one model (sampling, fused-attention forward, backward, AdamW:
    what trainer.train does per step) as a function of the step, and its activations."""
    device = resolve_device(train_config.device)
    model = MarkovTransformer(model_config, seed=0).to(device)
    model.set_fused_attention(train_config.fused_attention)
    opt, _ = make_optimizer(model, train_config)
    chain = BinaryChain(*CHAINS[0])

    def loss(step: int) -> torch.Tensor:
        gen = make_generator(device, derive_seed(0, 1, step))
        tokens = chain.sample(train_config.batch, train_config.seq_len, generator=gen)
        return per_token_loss(model(tokens).float(), tokens).mean()

    def update(step: int) -> None:
        value = loss(step)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return update, saved_activation_bytes(lambda: loss(0))


def scaling_tables(settings: dict[str, Any], base: TrainConfig) -> dict[str, list[dict]]:
    """Step time of the ensemble and of one trainer run against sequence length, members
    and depth (settings: SETTINGS[mode]["scaling"]), timed in turn (interleaved_best). Each
    row: members, seq_len, layers,
    ensemble step ms, ms per member, one run's step ms, speedup (members x one run's step /
    ensemble step), data share of the ensemble step, saved activations of the ensemble step
    and of one run's step (MB), and on CUDA the ensemble's peak allocated memory (MB)."""
    device = resolve_device(base.device)
    repeats = settings["repeats"]
    tables: dict[str, list[dict]] = {}
    plans = {
        "seq_len": [(settings["seq_len"]["members"], v, 1) for v in settings["seq_len"]["values"]],
        "members": [(v, settings["members"]["seq_len"], 1) for v in settings["members"]["values"]],
        "layers": [
            (settings["layers"]["members"], settings["layers"]["seq_len"], v)
            for v in settings["layers"]["values"]
        ],
    }
    for axis, plan in plans.items():
        rows = []
        for members, seq_len, layers in plan:
            tc = TrainConfig.from_dict(base.to_dict() | {"seq_len": seq_len, "iters": 2})
            mc = ModelConfig.paper(n_ctx=seq_len, n_layers=layers)
            with PeakMemory(device) as mem:
                ens_update, ens_data, ens_act = _ensemble_step(mc, tc, members)
                one_update, one_act = _single_step(mc, tc)
                ens_s, data_s, one_s = interleaved_best(
                    [ens_update, ens_data, one_update], repeats, device
                )
            rows.append(
                {
                    "members": members,
                    "seq_len": seq_len,
                    "layers": layers,
                    "ensemble_step_ms": 1e3 * ens_s,
                    "ms_per_member": 1e3 * ens_s / members,
                    "single_run_step_ms": 1e3 * one_s,
                    "speedup": members * one_s / ens_s,
                    "data_share": data_s / ens_s,
                    "ensemble_activations_mb": ens_act / 2**20,
                    "single_run_activations_mb": one_act / 2**20,
                    "cuda_peak_mb": mem.peak / 2**20 if device.type == "cuda" else None,
                }
            )
        tables[axis] = rows
    return tables


def format_table(axis: str, rows: list[dict]) -> str:
    """A small markdown table of one scaling axis (the varied column first)."""
    fixed = [c for c in ("members", "seq_len", "layers") if c != axis]
    head = [axis, *fixed, "ensemble step ms", "ms/member", "one run step ms", "speedup"]
    head += ["data share", "activations MB (ensemble / one run)"]
    cuda = any(r.get("cuda_peak_mb") is not None for r in rows)
    if cuda:
        head.append("CUDA peak MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[axis]), *(str(r[c]) for c in fixed)]
        cells += [
            f"{r['ensemble_step_ms']:.1f}",
            f"{r['ms_per_member']:.2f}",
            f"{r['single_run_step_ms']:.1f}",
            f"{r['speedup']:.1f}x",
            f"{100 * r['data_share']:.1f}%",
            f"{r['ensemble_activations_mb']:.1f} / {r['single_run_activations_mb']:.1f}",
        ]
        if cuda:
            cells.append(f"{r['cuda_peak_mb']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
