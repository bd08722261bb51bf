"""Figures for the GPU check (benchmarks/gpu_check.sh): one paper-setting run, and a stack of
many members against single-run steps, as tokens/s and a ratio. Prints one line per figure
and writes them to OUT/gpu_figures.json.

    python benchmarks/gpu_check.py --out DIR                  # CUDA, paper settings
    python benchmarks/gpu_check.py --device cpu --tiny --out DIR   # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from training.chains import BinaryChain
from training.config import ModelConfig
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.stacked import StackedWeights, member_losses, stacked_logits
from training.trainer import make_optimizer, member_batches, resolve_device, train


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(members: int, tc: TrainConfig, mc: ModelConfig, repeats: int) -> float:
    """Best seconds of one update (data, forward, backward, AdamW) of a stack of `members`."""
    device = resolve_device(tc.device)
    models = [MarkovTransformer(mc, seed=s).to(device) for s in range(members)]
    weights = StackedWeights.from_models(models)
    opt, _ = make_optimizer(weights, tc)
    chains = [BinaryChain(0.5, 0.8)] * members
    seeds = list(range(members))
    best = float("inf")
    for step in range(repeats + 1):  # the first one warms up
        _sync(device)
        t0 = time.perf_counter()
        tokens = member_batches(chains, seeds, step, tc, device)
        loss = member_losses(stacked_logits(models[0], weights.params, tokens), tokens).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if step:
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="small settings (a smoke test)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tiny = args.tiny
    tc = TrainConfig(device=args.device)
    if tiny:
        tc = TrainConfig(device=args.device, iters=6, batch=4, seq_len=32, eval_every=3)
    mc = ModelConfig.paper(n_ctx=tc.seq_len)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    figures: dict = {"device": str(device), "device_name": name, "torch": torch.__version__}
    print(f"device: {name}; torch {torch.__version__}")

    t0 = time.perf_counter()
    run = train(mc, BinaryChain(0.5, 0.8), tc, seed=0, progress=False)
    figures["paper_run"] = {
        "wall_seconds": time.perf_counter() - t0,
        "tokens_per_s": run["tokens_per_s"],
        "verdict": run["verdict"],
        "final_eval_loss": run["final_eval_loss"],
        "settings": f"{tc.iters} updates of {tc.batch} x {tc.seq_len}, tied, p=0.5 q=0.8",
    }
    print(
        f"paper run ({figures['paper_run']['settings']}): "
        f"{figures['paper_run']['wall_seconds']:.1f} s wall, {run['tokens_per_s']:.0f} tokens/s, "
        f"verdict {run['verdict']}"
    )

    members = 4 if tiny else args.members
    repeats = 2 if tiny else 5
    single = step_seconds(1, tc, mc, repeats)
    stack = step_seconds(members, tc, mc, repeats)
    tokens = tc.batch * tc.seq_len
    figures["stack"] = {
        "members": members,
        "single_step_ms": 1e3 * single,
        "stack_step_ms": 1e3 * stack,
        "single_tokens_per_s": tokens / single,
        "stack_tokens_per_s": members * tokens / stack,
        "ratio": members * single / stack,
    }
    s = figures["stack"]
    print(
        f"one run: {s['single_step_ms']:.2f} ms/step, {s['single_tokens_per_s']:.0f} tokens/s; "
        f"stack of {members}: {s['stack_step_ms']:.1f} ms/step, "
        f"{s['stack_tokens_per_s']:.0f} tokens/s; stack vs {members} single steps: "
        f"{s['ratio']:.1f}x"
    )
    if device.type == "cuda":
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    (args.out / "gpu_figures.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
