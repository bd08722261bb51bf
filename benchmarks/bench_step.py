"""The paper's training step per attention backend, its FLOP bound, and the window table.

python benchmarks/bench_step.py [--batch 16] [--seq-len 1024] [--repeats 5] [--threads 1]
python benchmarks/bench_step.py --windows 2,8,32,full --lengths 512,1024,2048

Prints ``paper step (...): fused kernel vs SDPA: R.Rx`` and ``... vs explicit``, the step
next to its attention FLOP bound at this machine's measured fp32 matmul rate, and (with
--lengths) ``window cost (N=..): window M vs full attention`` lines and a table, all measured
in this process (benchmarks.step; the "step" and "window" sections of markov-lens bench).
"""

import argparse

import torch

from benchmarks.measure import machine_line
from benchmarks.step import (
    compare_step,
    format_window_table,
    matmul_gflops,
    window_comparisons,
    window_rows,
)
from training.fused_attention import kernel_status
from training.trainer import resolve_device


def _window(text: str) -> int | None:
    return None if text in ("full", "none", "None") else int(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--windows", default="2,8,32,full", help="windows (full: causal)")
    parser.add_argument("--lengths", default="", help="window table lengths (none: no table)")
    parser.add_argument("--matmul-size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(machine_line(device))
    gflops = matmul_gflops(device, args.matmul_size)
    print(f"matmul rate: {gflops:.1f} GFLOP/s; attention kernel: {kernel_status()}")
    comps, info = compare_step(
        args.batch, args.seq_len, args.repeats, device, gflops, args.precision
    )
    for c in comps:
        print(c.line())
    print(
        f"paper step: {info['step_ms']['auto']:.1f} ms; attention FLOP bound "
        f"{info['bound_ms']:.2f} ms at {gflops:.0f} GFLOP/s (matmul); step / bound "
        f"{info['step_over_bound']:.1f}x; ms per step "
        + ", ".join(f"{info['backend_labels'][b]} {v:.1f}" for b, v in info["step_ms"].items())
    )
    if args.lengths:
        lengths = [int(n) for n in args.lengths.split(",")]
        windows = [_window(w) for w in args.windows.split(",")]
        rows = window_rows(args.batch, lengths, windows, args.repeats, device, gflops)
        for c in window_comparisons(rows, reduced=False):
            print(c.line())
        print(format_window_table(rows))
    print(machine_line(device))
