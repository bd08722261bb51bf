"""Vectorised Markov sampler vs the naive per-position loop (CPU).

python benchmarks/bench_sampler.py [--batch 16] [--length 1024] [--repeats 10]
"""

import argparse

from benchmarks.sampler import benchmark_sampler, format_rows

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    args = parser.parse_args()
    rows = benchmark_sampler(args.batch, args.length, args.repeats, threads=args.threads)
    print(format_rows(rows))
