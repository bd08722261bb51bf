"""``run_benchmarks``: every section of ``markov-lens bench`` in turn, each line emitted as it
is measured (the sections are described in the package's docstring)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.ensemble import compare_ensemble, format_table, scaling_tables, sweep_path
from benchmarks.measure import Comparison, format_mb, format_ms, machine_line
from benchmarks.reproductions import compare_reproduction
from benchmarks.settings import MODES, SECTIONS, SETTINGS, STARTUP_TARGET, STEP_BACKENDS
from benchmarks.startup import compare_startup
from benchmarks.step import (
    auto_rows,
    compare_step,
    format_window_table,
    matmul_gflops,
    window_comparisons,
    window_rows,
)
from training.config import ModelConfig
from training.fused_attention import kernel_info, kernel_status
from training.recipe import TrainConfig
from training.trainer import resolve_device

PATCHING_A, PATCHING_B = "batched", "transformer_lens.patching"  # what the patching lines compare


def skipped_patching(why: str) -> Comparison:
    """The patching section's line when it is not measured (``why``)."""
    return Comparison("patching", PATCHING_A, PATCHING_B, None, None, skipped=why)


def patching_comparisons(mode: str, device: str) -> list[Comparison]:
    """benchmarks.patching's comparison(s) as bench Comparisons (a "skipped" one if that
    module is not available: it imports transformer_lens). ``markov-lens bench`` passes this
    as run_benchmarks's ``patching``."""
    try:
        bench = importlib.import_module("benchmarks.patching")
    except ImportError as err:
        return [skipped_patching(f"benchmarks.patching is not available: {err}")]
    rows = bench.benchmark_patching(**_patching_sizes(bench, mode, device))
    return [
        Comparison(
            f"patching ({row['name']})",
            PATCHING_A,
            PATCHING_B,
            row["batched_s"],
            row["transformer_lens_s"],
            row,
        )
        for row in rows
    ]


def _patching_sizes(bench, mode: str, device: str) -> dict:
    sizes = getattr(bench, "BENCH_SIZES", {})
    return dict(sizes.get(mode, {})) | {"device": device}


def run_benchmarks(
    mode: str = "full",
    device: str = "auto",
    members: int | None = None,
    precision: str = "fp32",
    sections: tuple[str, ...] = SECTIONS,
    patching: Callable[[str, str], list[Comparison]] | None = None,
    emit: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark sections in `mode` and emit each line as it is measured.

    patching(mode, device) -> comparisons, supplied by the caller (``markov-lens bench``
    passes patching_comparisons; None: reported skipped).
    Returns {"machine", "mode", "comparisons": [...], "tables": {...}}, with the step
    section's figures under "step" (compare_step) and the window table under
    tables["window"]; "matmul_gflops" when step or window ran.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(
            f"unknown benchmark section {unknown[0]!r}; sections: {', '.join(SECTIONS)}"
        )
    if members is not None and (
        isinstance(members, bool) or not isinstance(members, int) or members < 1
    ):
        raise ValueError(f"members must be a positive integer, got {members!r}")
    dev = resolve_device(device)
    settings = SETTINGS[mode]
    base = TrainConfig(device=device, precision=precision)
    out: dict[str, Any] = {"mode": mode, "comparisons": [], "tables": {}}
    out["machine"] = machine_line(dev)
    emit(out["machine"])
    if dev.type != "cuda":
        emit("(CPU run: no GPU was used for these numbers)")

    def report(c: Comparison) -> None:
        out["comparisons"].append(c.to_dict())
        emit(c.line())

    gflops: float | None = None
    if "step" in sections or "window" in sections:
        mm = settings["matmul"]
        gflops = matmul_gflops(dev, mm["size"], mm["repeats"])
        out["matmul_gflops"] = gflops
        emit(
            f"matmul rate: {gflops:.1f} GFLOP/s (fp32 torch.mm {mm['size']}x{mm['size']}, best "
            f"of {mm['repeats']}, {torch.get_num_threads()} threads); attention kernel: "
            + (kernel_status() if dev.type == "cpu" else f"not used on {dev.type}")
            + (
                f", {kernel_info()['build']}"
                if dev.type == "cpu" and kernel_info()["build"]
                else ""
            )
        )
    if "step" in sections:
        s = settings["step"]
        comps, info = compare_step(s["batch"], s["seq_len"], s["repeats"], dev, gflops, precision)
        out["step"] = info
        for c in comps:
            report(c)
        labels, ms = info["backend_labels"], info["step_ms"]
        emit(
            f"{info['name'].split(' (')[0]}: {format_ms(ms['auto'])} ms; attention FLOP bound "
            f"{format_ms(info['bound_ms'])} ms at {gflops:.0f} GFLOP/s (matmul); step / bound "
            f"{info['step_over_bound']:.1f}x"
        )
        emit(
            "  ms per step (best of "
            f"{s['repeats']}): "
            + ", ".join(f"{labels[b]} {ms[b]:.1f}" for b in STEP_BACKENDS)
            + f"; {info['attention_flops'] / 1e9:.3g} GFLOP of attention matmuls per step"
            f" (12 d_head S); load average {info['load_average'][0]:.2f} -> "
            f"{info['load_average'][1]:.2f}"
        )
    if "auto" in sections:
        s = settings["auto"]
        rows = auto_rows(s["batch"], s["seq_lens"], s["repeats"], dev, precision)
        out["tables"]["auto"] = rows
        for r in rows:
            report(
                Comparison(
                    f"auto vs SDPA (paper step, batch {s['batch']} x {r['seq_len']})",
                    f"auto ({r['choice']})",
                    "SDPA",
                    r["auto_ms"] / 1e3,
                    r["torch_ms"] / 1e3,
                    r,
                )
            )
            emit(f"  {r['why']}")
    if "window" in sections:
        s = settings["window"]
        rows = window_rows(
            s["batch"], s["seq_lens"], s["windows"], s["repeats"], dev, gflops, precision
        )
        out["tables"]["window"] = rows
        for c in window_comparisons(rows, reduced=mode == "tiny"):
            report(c)
        emit(
            f"\nstep time against attention window (paper model, batch {s['batch']}, backend "
            f"auto, best of {s['repeats']} steps):"
        )
        emit(format_window_table(rows))
    if "ensemble" in sections:
        s = settings["ensemble"]
        m = members or s["members"]
        for seq_len in s["seq_lens"]:
            tc = TrainConfig.from_dict(base.to_dict() | {"seq_len": seq_len, "iters": s["iters"]})
            mc = ModelConfig.paper(n_ctx=seq_len)
            setting = (
                "paper config"
                if seq_len == 1024
                else f"{'' if seq_len == 256 else 'REDUCED: '}paper config but length {seq_len}"
            )
            label = (
                f"{setting}: d=8, 1 layer, batch {tc.batch}, length {seq_len}, {s['iters']} "
                f"steps, {dev.type}, {torch.get_num_threads()} threads, in memory"
            )
            c = compare_ensemble(m, mc, tc, label)
            d = c.details
            d.update(sweep_path(tc, c.ratio))
            report(c)
            emit(
                f"  ensemble: data sampling {100 * d['data_share_of_step']:.1f}% of step time; "
                f"activations saved per step {format_mb(d['ensemble_activations'])} ({m} members) vs "
                f"{format_mb(d['single_run_activations'])} (one run); peak memory "
                f"({d['memory_measure']}) ensemble {format_mb(d['ensemble_peak_memory'])} vs "
                f"sequential {format_mb(d['sequential_peak_memory'])}; same verdicts "
                f"{d['same_verdicts']}; load average {d['load_average'][0]:.2f} -> "
                f"{d['load_average'][1]:.2f}"
            )
            emit(
                f"  length {seq_len}: sweeps use: {d['sweeps_use']} "
                f"(faster: {'yes' if d['sweeps_take_faster'] else 'NO'})"
            )
    if "sampler" in sections:
        from benchmarks.sampler import benchmark_sampler

        s = settings["sampler"]
        for r in benchmark_sampler(16, s["length"], s["repeats"], device=str(dev)):
            report(
                Comparison(
                    f"sampler ({r['name']}, B={r['batch']}, N={r['length']}, "
                    f"{r['threads']} thread)",
                    "vectorised scan",
                    "per-position loop",
                    r["vectorised_s"],
                    r["loop_s"],
                    r,
                )
            )
    if "patching" in sections:
        if patching is None:
            report(skipped_patching("no patching benchmark was supplied (run `markov-lens bench`)"))
        else:
            for c in patching(mode, str(dev)):
                report(c)
    if "reproductions" in sections:
        s = settings["reproductions"]
        # worker processes: the local backend's default; only in full mode (starting them
        # costs seconds, which would dominate the reduced settings)
        workers = min(2, os.cpu_count() or 1) if mode == "full" else 0
        for name in ("tying", "depth"):
            for c in compare_reproduction(name, s["size"], s["seeds"], s["iters"], device, workers):
                report(c)
                d = c.details
            emit(
                f"  {name}: finished {d['finished']}; same verdicts (ensemble vs sequential) "
                f"{d['same_verdicts']}"
                + (
                    "; CUDA peak memory "
                    + ", ".join(f"{k} {format_mb(v)}" for k, v in d["peak_memory"].items())
                    if dev.type == "cuda"
                    else ""
                )
            )
    if "scaling" in sections:
        tables = scaling_tables(settings["scaling"], base)
        out["tables"] = tables
        titles = {
            "seq_len": "step time against sequence length",
            "members": "step time against ensemble members",
            "layers": "step time against depth (layers)",
        }
        for axis, rows in tables.items():
            emit(f"\n{titles[axis]} (best of {settings['scaling']['repeats']} steps):")
            emit(format_table(axis, rows))
    if "startup" in sections:
        s = settings["startup"]
        for c in compare_startup(s["repeats"], s["warmup"]):
            report(c)
            if c.ratio is not None:
                ok = "yes" if c.ratio <= STARTUP_TARGET else "NO"
                emit(f"  {c.details['command']}: within {STARTUP_TARGET}x of import torch: {ok}")
    emit(machine_line(dev).replace("machine:", "at the end, machine:"))
    return out
