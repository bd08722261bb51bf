"""The "local" sweep backend: runs in worker processes on this machine.

A backend is fn(run_fn, tasks (dicts), workers) yielding one result row per task as runs
finish; ``local_backend`` runs them in `workers` spawned processes, each with one torch
thread (``one_torch_thread``), or in this process when workers == 1.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed


def one_torch_thread() -> None:
    """Worker process initialiser: one torch thread (the fastest for these models on a
    shared CPU)."""
    import torch

    torch.set_num_threads(1)


def local_backend(
    run_fn: Callable[[dict], dict], tasks: list[dict], workers: int
) -> Iterator[dict]:
    """Run tasks in `workers` spawned processes (torch threads 1), or in this process when
    workers == 1. Yields rows as runs finish."""
    if workers <= 1:  # in this process, with the workers' thread count (same results)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for task in tasks:
                yield run_fn(task)
        finally:
            torch.set_num_threads(threads)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=one_torch_thread
    ) as ex:
        futures = [ex.submit(run_fn, task) for task in tasks]
        for fut in as_completed(futures):
            yield fut.result()
