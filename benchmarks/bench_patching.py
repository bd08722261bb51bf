"""Batched activation patching vs transformer_lens.patching (prints the speed ratio per row).

python benchmarks/bench_patching.py [--seq-len 256] [--layers 1,2] [--batch 8] [--acts resid_pre]
    [--corruptions flip,resample]
"""

import argparse

import torch

from benchmarks.patching import benchmark_patching, format_row

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--layers", default="1,2", help="comma-separated depths (1,2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--acts", default="resid_pre", help="comma-separated activations")
    parser.add_argument(
        "--corruptions",
        default="flip,resample",
        help="comma-separated: flip (x_n flipped), resample (every position differs)",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = benchmark_patching(
        seq_len=args.seq_len,
        layers=[int(x) for x in args.layers.split(",")],
        batch=args.batch,
        acts=[a.strip() for a in args.acts.split(",")],
        repeats=args.repeats,
        device=args.device,
        corruptions=[c.strip() for c in args.corruptions.split(",")],
    )
    for row in rows:
        print(format_row(row))
        print(
            f"    batched {row['batched_s']:.3f} s, transformer_lens {row['transformer_lens_s']:.3f} s, "
            f"max |diff| {row['max_abs_diff']:.2e}, batch {row['batch']}, {row['device']}, "
            f"{row['threads']} threads"
        )
