"""Speed of the vectorised sampler against the naive per-position loop.

``benchmark_sampler()`` is shared by ``benchmarks/bench_sampler.py`` and ``markov-lens bench``
(section "sampler").
"""

from __future__ import annotations

import time
from functools import partial

import torch

from training.chains import BinaryChain, KthOrderChain, MarkovChain, sample_reference_loop


def default_chains() -> dict[str, MarkovChain]:
    """The paper's binary chain and its second-order (lag-2) chain."""
    return {"binary": BinaryChain(0.5, 0.8), "order-2": KthOrderChain.lag(2, 0.2, 0.3)}


def _best_time(fn, repeats: int, device: str) -> float:
    def timed() -> float:
        start = time.perf_counter()
        fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()  # warm-up
    return min(timed() for _ in range(repeats))


def benchmark_sampler(
    batch: int = 16,
    length: int = 1024,
    repeats: int = 10,
    chains: dict[str, MarkovChain] | None = None,
    device: str = "cpu",
    threads: int | None = 1,
) -> list[dict]:
    """Best-of-``repeats`` wall time (s) of ``chain.sample`` and ``sample_reference_loop``.

    One dict per chain: name, batch, length, device, threads, vectorised_s, loop_s, speedup
    (loop_s / vectorised_s). Both samplers return identical tokens for the same seed.
    ``threads``: torch CPU threads during the timing (restored after; None keeps the
    current setting). One thread by default: at these sizes more threads do not help, and
    on a busy machine their synchronisation makes timings erratic.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _benchmark(batch, length, repeats, chains or default_chains(), device)
    finally:
        torch.set_num_threads(previous)


def _benchmark(batch, length, repeats, chains, device) -> list[dict]:
    rows = []
    for name, chain in chains.items():
        gen = torch.Generator(device=device).manual_seed(0)
        vectorised = _best_time(
            partial(chain.sample, batch, length, generator=gen), repeats, device
        )
        loop = _best_time(
            partial(sample_reference_loop, chain, batch, length, gen), repeats, device
        )
        rows.append(
            {
                "name": name,
                "batch": batch,
                "length": length,
                "device": device,
                "threads": torch.get_num_threads(),
                "vectorised_s": vectorised,
                "loop_s": loop,
                "speedup": loop / vectorised,
            }
        )
    return rows


def format_rows(rows: list[dict]) -> str:
    """``sampler (binary, B=16, N=1024): vectorised vs loop: 31.4x`` lines."""
    return "\n".join(
        f"sampler ({r['name']}, B={r['batch']}, N={r['length']}): vectorised vs loop: "
        f"{r['speedup']:.1f}x"
        for r in rows
    )
