"""The training sweeps of the paper's ``tying`` and ``depth`` experiments
(training.experiments) with the ensemble backend vs a sequential per-run loop (the local
backend with one worker), and (full mode) both backends with one worker process per core."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.measure import Comparison, PeakMemory
from training.sweeps.ensemble import ensemble_backend
from training.trainer import resolve_device


def reproduction_specs(
    name: str, size: str, seeds: int, iters: int | None, device: str
) -> list[dict]:
    """The sweep specs of experiment `name` (training.experiments) at `size` with `seeds`
    seeds, the iteration count replaced by `iters` when given."""
    from training.experiments import EXPERIMENTS

    make_specs = EXPERIMENTS[name][0]
    specs = make_specs(size, seeds)
    for spec in specs:
        spec["train"] = dict(spec["train"]) | {"device": device}
        if iters is not None:
            spec["train"]["iters"] = iters
    return specs


def compare_reproduction(
    name: str, size: str, seeds: int, iters: int | None, device: str, workers: int = 0
) -> list[Comparison]:
    """Wall time of the training sweep of experiment `name`: the ensemble backend vs a
    sequential per-run loop (both with one worker, in this process, one torch thread on a
    CPU); with workers >= 2 also both backends with `workers` worker processes. Each sweep in
    a fresh temporary directory."""
    from training.sweeps import run_sweep

    specs = reproduction_specs(name, size, seeds, iters, device)
    n_iters = specs[0]["train"]["iters"]
    what = (
        f"{name} reproduction, paper settings"
        if size == "full" and iters is None
        else f"{name} reproduction, REDUCED: {size}-size specs, {n_iters} iterations"
    )
    times: dict[str, float] = {}
    rows: dict[str, list[dict]] = {}
    mem: dict[str, int | None] = {}
    plans = [("ensemble", ensemble_backend, 1), ("sequential", "local", 1)]
    if workers >= 2:
        plans += [
            ("ensemble_workers", ensemble_backend, workers),
            ("local_workers", "local", workers),
        ]
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        for key, backend, n in plans:
            with PeakMemory(dev) as pm:
                t0 = time.perf_counter()
                result = run_sweep(
                    specs, Path(tmp) / key, workers=n, backend=backend, progress=False
                )
                times[key] = time.perf_counter() - t0
            mem[key] = pm.peak
            rows[key] = result.rows
    n_runs = len(rows["ensemble"])
    finished = {k: sum(r.get("status") == "finished" for r in v) for k, v in rows.items()}
    verdicts = {
        k: sorted((r["cell"], r["seed"], str(r.get("verdict"))) for r in v) for k, v in rows.items()
    }
    same = sum(a == b for a, b in zip(verdicts["ensemble"], verdicts["sequential"], strict=True))
    details = {
        "runs": n_runs,
        "iters": n_iters,
        "wall_seconds": times,
        "finished": finished,
        "same_verdicts": f"{same}/{n_runs}",
        "peak_memory": mem,
        "threads": torch.get_num_threads(),
    }
    out = [
        Comparison(
            f"{what}, {n_runs} runs",
            f"ensemble sweep {times['ensemble']:.1f} s",
            f"sequential per-run loop {times['sequential']:.1f} s",
            times["ensemble"],
            times["sequential"],
            details,
        )
    ]
    if "local_workers" in times:
        out.append(
            Comparison(
                f"{what}, {n_runs} runs, {workers} worker processes each",
                f"ensemble backend {times['ensemble_workers']:.1f} s",
                f"local backend {times['local_workers']:.1f} s",
                times["ensemble_workers"],
                times["local_workers"],
                details,
            )
        )
    return out
