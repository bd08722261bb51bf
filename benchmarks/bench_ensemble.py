"""Ensemble training vs sequential runs (and the step-time scaling tables), measured here.

python benchmarks/bench_ensemble.py [--members 32] [--seq-len 1024] [--iters 20] [--threads 1]
python benchmarks/bench_ensemble.py --tables quick      # also the scaling tables

Prints ``ensemble training (...): M-member ensemble X tok/s vs M sequential runs Y tok/s: R.Rx``
(both sides run in this process, in memory, same configs and seeds; nothing extrapolated),
the data-sampling share of the ensemble step, both sides' peak memory, and which of the two
paths the sweeps take at this setting (training.sweeps.ensemble.stacking_pays) and whether it is the
faster one measured.
"""

import argparse

import torch

from benchmarks.ensemble import compare_ensemble, format_table, scaling_tables, sweep_path
from benchmarks.measure import machine_line
from benchmarks.settings import SETTINGS
from training.config import ModelConfig
from training.recipe import TrainConfig
from training.trainer import resolve_device

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    parser.add_argument("--tables", choices=("full", "quick", "tiny"), default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(machine_line(device))
    tc = TrainConfig(
        iters=args.iters,
        batch=args.batch,
        seq_len=args.seq_len,
        device=args.device,
        precision=args.precision,
    )
    mc = ModelConfig.paper(n_ctx=args.seq_len, n_layers=args.layers, d_model=args.d_model)
    label = (
        f"d={args.d_model}, {args.layers} layer(s), batch {args.batch}, length {args.seq_len}, "
        f"{args.iters} steps, {device.type}, {torch.get_num_threads()} threads, in memory"
    )
    c = compare_ensemble(args.members, mc, tc, label)
    print(c.line())
    d = c.details
    print(
        f"  data sampling {100 * d['data_share_of_step']:.1f}% of the ensemble's step time; "
        f"peak memory ensemble {d['ensemble_peak_memory']} B vs sequential "
        f"{d['sequential_peak_memory']} B ({d['memory_measure']}); same verdicts "
        f"{d['same_verdicts']}; load average {d['load_average']}"
    )
    path = sweep_path(tc, c.ratio)
    print(
        f"  sweeps use: {path['sweeps_use']} "
        f"(faster: {'yes' if path['sweeps_take_faster'] else 'NO'})"
    )
    if args.tables:
        tables = scaling_tables(SETTINGS[args.tables]["scaling"], tc)
        for axis, rows in tables.items():
            print(f"\nstep time against {axis}:")
            print(format_table(axis, rows))
    print(machine_line(device))
