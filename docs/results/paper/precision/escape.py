"""The mechanism of the precision effect (issue #26): one seed of the tying cell trained in
float32 and in float16 autocast without a scaler from the same init on the same batches
(interp.landscape.precision_escape), with gradient_fidelity at every kept checkpoint: how
much of the float32 gradient each arithmetic keeps at that run's weights, with and without a
GradScaler's loss scale, and how much of the output gradient is float16-subnormal.

    .venv/bin/python docs/results/paper/precision/escape.py SEED [SEED ...] [--out DIR]
        [--runs DIR] [--iters N] [--batch B] [--seq-len N]

The runs are spec.yaml's fp32 / fp16 runs of that seed (same options, so the same init and
batches as the sweep's; 8 kept checkpoints per octave) under RUNS/seed<k>/ (default
runs/paper/precision-escape); writes DIR/seed<k>.json, DIR/seed<k>.png, DIR/escape.csv (one
row per seed, arithmetic and checkpoint) and DIR/escape.md (default: escape/ beside this).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from interp.landscape import plot_precision_escape, precision_escape
from interp.landscape.escape import FIDELITY
from training.machine import cpu_model, vector_isa
from training.runs import write_json_atomic, write_text_atomic
from training.sweeps import load_spec, write_csv
from training.sweeps.tasks import build_run_config

HERE = Path(__file__).resolve().parent


def run_seed(seed: int, runs: Path, overrides: dict) -> dict:
    block = load_spec(HERE / "spec.yaml")[0]  # the fp32 block: the tying cell's options
    options = {k: dict(block[k]) for k in ("chain", "model", "train")}
    options["train"] |= {"checkpoints_per_octave": 8} | overrides
    rc = build_run_config(options | {"seed": seed})
    t0 = time.perf_counter()
    out = precision_escape(rc.chain, rc.model, rc.train, seed, runs / f"seed{seed}")
    out["wall_seconds"] = time.perf_counter() - t0
    out["load_average"] = os.getloadavg()[0]  # at the end of the measurement
    return out


def rows_of(result: dict) -> list[dict]:
    rows = []
    for name, c in result["precisions"].items():
        loss = dict(zip(c["eval_steps"], c["eval_loss"], strict=True))
        for i, step in enumerate(c["steps"]):
            rows.append(
                {"seed": result["seed"], "arithmetic": name, "step": step}
                | {"eval_loss": loss.get(step)}
                | {k: c[k][i] for k in FIDELITY}
            )
    return rows


def summary_lines(result: dict) -> list[str]:
    lines = []
    fp16 = result["precisions"].get("fp16")
    for name, c in result["precisions"].items():
        lines.append(
            f"- seed {result['seed']}, {name}: verdict {c['verdict']}, plateau exit step "
            f"{c['plateau_exit_step']}"
        )
    if fp16 is not None:

        def span(key: str) -> str:
            vals = [1 - v for v in fp16[key] if v is not None]
            return f"{min(vals):.2g}-{max(vals):.2g}" if vals else "-"

        subnormal = [v for v in fp16["output_subnormal"] if v is not None]
        lines.append(
            f"- seed {result['seed']}, fp16 at its own checkpoints: 1 - cosine to the float32 "
            f"gradient {span('cosine')} without a loss scale, {span('scaled_cosine')} with "
            f"2^16; output gradient entries below 2^-14 (fp16-subnormal): "
            f"{min(subnormal):.3f}-{max(subnormal):.3f}; the fp16 curve leaves fp32's at step "
            f"{result['departs_step'].get('fp16')} (tolerance {result['depart_tol']:g} nats)"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", type=int, nargs="+")
    parser.add_argument("--out", type=Path, default=HERE / "escape")
    parser.add_argument("--runs", type=Path, default=Path("runs/paper/precision-escape"))
    parser.add_argument("--iters", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seq-len", type=int)
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (("iters", args.iters), ("batch", args.batch), ("seq_len", args.seq_len))
        if v is not None
    }
    args.out.mkdir(parents=True, exist_ok=True)
    rows, lines = [], []
    for seed in args.seeds:
        path = args.out / f"seed{seed}.json"
        if path.exists():  # resumable: a measured seed is read, never measured again
            result = json.loads(path.read_text())
        else:
            result = run_seed(seed, args.runs, overrides)
            write_json_atomic(path, result)
        plot_precision_escape(result, args.out / f"seed{seed}.png")
        rows += rows_of(result)
        load = result.get("load_average")
        lines += summary_lines(result) + [
            f"- seed {seed}: {result['wall_seconds']:.0f} s wall"
            + ("" if load is None else f", load average {load:.1f} at its end")
        ]
    write_csv(args.out / "escape.csv", rows)
    md = "\n".join(
        [
            "# The plateau escape per arithmetic (tied, p=0.5, q=0.8, the paper's recipe)",
            "",
            f"`python docs/results/paper/precision/escape.py {' '.join(map(str, args.seeds))}`"
            + (f" with {overrides}" if overrides else "")
            + f"; {cpu_model()} ({vector_isa()}), torch {torch.__version__}, "
            + f"{torch.get_num_threads()} thread(s).",
            "",
            *lines,
            "",
        ]
    )
    write_text_atomic(args.out / "escape.md", md)
    print(md)


if __name__ == "__main__":
    main()
