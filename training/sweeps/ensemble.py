"""Sweeps of many runs trained as stacks: grouping tasks and the "ensemble" sweep backend.

A stack of K runs of one architecture and recipe is trained by the one training loop
(``training.trainer.train_ensemble``; a single run is a stack of one) through the model's
own forward under ``torch.func.vmap`` (training.stacked). This module decides which sweep
tasks are trained together:

- ``group_key(task)``: tasks with the same architecture (training.stacked.architecture_key:
  all ModelConfig fields but init, init_range, use_attn_result) and recipe can be stacked.
- ``plan_groups(tasks)``: stacks of at most ``default_max_members`` (by memory).
- ``run_group(tasks)``: trains one stack (resuming interrupted members; finished ones are
  only read) and returns the summaries.
- ``ensemble_backend(run_fn, tasks, workers)``: the sweep backend "ensemble". Stacking pays
  where a step is small for the device (always on a GPU; on a CPU for short sequences); on a
  CPU at long sequences a stack of K runs at about the speed of K runs one after another
  (measured, ``markov-lens bench``), so there a group is trained member by member instead
  (``stacking_pays``): the backend never takes the slower path.

The stacking itself (Member, StackedWeights, stacked_logits, ...) lives in training.stacked
and its training loop in training.trainer; tasks alone in their group go to the local
backend (training.sweeps.local).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from training.options import RunConfig, build_run_config
from training.stacked import architecture_key
from training.sweeps.local import local_backend, one_torch_thread
from training.trainer import resolve_device, train_ensemble

# Default cap on members per stack: members * batch * seq_len * n_layers * d_model (floats
# of residual stream per step) is kept under this many. Measured on CPU: about 200-250 bytes of
# peak memory per such float, so about 2 GB (the paper's config: 64 members).
DEFAULT_RESIDUAL_BUDGET = 1 << 23
# On a CPU, stacking pays up to this many tokens per member and step (batch * seq_len);
# above it a stack runs no faster than its members one by one (markov-lens bench, "ensemble").
CPU_STACK_MAX_TOKENS = 8192


def stacking_pays(run_config: RunConfig) -> bool:
    """Is training runs of this config as a stack faster than one by one on its device?"""
    device = resolve_device(run_config.train.device)
    if device.type != "cpu":
        return True
    return run_config.train.batch * run_config.train.seq_len <= CPU_STACK_MAX_TOKENS


# ------------------------------------------------------------------------------ sweeps


def _task_dict(task: Any) -> dict[str, Any]:
    return task if isinstance(task, dict) else task.to_dict()


def group_key(task: Any) -> str:
    """JSON key shared by sweep tasks (training.sweeps.spec.RunTask or its dict) that can
    be trained as one ensemble: same architecture and same recipe (device included)."""
    t = _task_dict(task)
    rc = build_run_config(t["options"] | {"seed": t["seed"]})
    return json.dumps(
        {"model": architecture_key(rc.model), "train": rc.train.to_dict()}, sort_keys=True
    )


def default_max_members(run_config: RunConfig, budget: int = DEFAULT_RESIDUAL_BUDGET) -> int:
    """Members per ensemble that keep members * batch * seq_len * n_layers * d_model (the
    residual-stream floats of one step) under `budget` (at least 1)."""
    tc, mc = run_config.train, run_config.model
    per_member = tc.batch * tc.seq_len * mc.n_layers * mc.d_model
    return max(1, budget // per_member)


def plan_groups(
    tasks: Iterable[Any], max_members: int | None = None
) -> tuple[list[list[dict]], list[dict]]:
    """Split sweep tasks into stacks (lists of >= 2 tasks of one group_key, at most
    max_members each; default by memory, default_max_members) and the rest (tasks alone in
    their group, tasks whose stack would not be faster (stacking_pays), or whose options do
    not build: those are left to the trainer to report)."""
    by_key: dict[str, list[dict]] = {}
    rest: list[dict] = []
    caps: dict[str, int] = {}
    for task in tasks:
        t = _task_dict(task)
        try:
            key = group_key(t)
        except (ValueError, KeyError, TypeError):
            rest.append(t)
            continue
        if key not in caps:
            rc = build_run_config(t["options"] | {"seed": t["seed"]})
            stackable = stacking_pays(rc) and not rc.train.grad_scaler  # one scaler per run
            caps[key] = (max_members or default_max_members(rc)) if stackable else 1
        by_key.setdefault(key, []).append(t)
    groups: list[list[dict]] = []
    for key, ts in by_key.items():
        chunks = [ts[j : j + caps[key]] for j in range(0, len(ts), caps[key])]
        for chunk in chunks:
            (groups if len(chunk) > 1 else rest).append(chunk if len(chunk) > 1 else chunk[0])
    return groups, rest


def run_group(tasks: Sequence[Any], progress: bool = False) -> list[dict[str, Any]]:
    """Train sweep tasks (training.sweeps.spec.RunTask or their dicts: options, seed,
    run_dir) of one architecture and recipe as one ensemble, resuming interrupted ones;
    finished ones are only read. Returns their summaries (a diverged member's is its
    "diverged" summary)."""
    ts = [_task_dict(t) for t in tasks]
    configs = [build_run_config(t["options"] | {"seed": t["seed"]}) for t in ts]
    results = train_ensemble(
        configs,
        configs[0].train,
        out_dirs=[t["run_dir"] for t in ts],
        resume=True,
        progress=progress,
    )
    return [dict(r) for r in results]


def _run_group_reporting(tasks: list[dict]) -> str | None:
    """run_group, returning the error (as text) instead of raising it (for worker processes)."""
    try:
        run_group(tasks)
    except Exception as err:  # noqa: BLE001 - reported by the caller, runs retried alone
        return f"{type(err).__name__}: {err}"
    return None


def _split(group: list[dict], parts: int) -> list[list[dict]]:
    """`group` in min(parts, len(group)) contiguous pieces of nearly equal size."""
    parts = max(1, min(parts, len(group)))
    size, extra = divmod(len(group), parts)
    out, start = [], 0
    for j in range(parts):
        end = start + size + (j < extra)
        out.append(group[start:end])
        start = end
    return out


def _on_cuda(group: list[dict]) -> bool:
    t = group[0]
    device = build_run_config(t["options"] | {"seed": t["seed"]}).train.device
    return resolve_device(device).type == "cuda"


def ensemble_backend(
    run_fn: Callable[[dict], dict],
    tasks: list[dict],
    workers: int,
    max_members: int | None = None,
) -> Iterator[dict]:
    """A training.sweeps backend: tasks of one architecture and recipe are trained together
    (run_group), then each is reported by `run_fn` (which reads its finished run); tasks
    alone in their group go to the local backend with `workers` processes.

    On a CPU every ensemble runs with one torch thread and `workers` of them at a time, in
    worker processes (each group split into `workers` ensembles so that every core works):
    on a shared CPU one thread per process is fastest for these models, ensemble or not
    (measured, see README "Performance"). CUDA groups run in this process, one at a time.
    If an ensemble fails, its tasks are handed to `run_fn` one by one (it resumes each from
    the ensemble's checkpoints, or reports the error)."""
    groups, rest = plan_groups(tasks, max_members)
    cuda = [g for g in groups if _on_cuda(g)]
    jobs = [part for g in groups if g not in cuda for part in _split(g, workers)]

    def report(job: list[dict], error: str | None) -> Iterator[dict]:
        if error is not None:
            warnings.warn(
                f"an ensemble of {len(job)} runs failed ({error}); training them one by one",
                stacklevel=3,
            )
        for task in job:
            yield run_fn(task)

    for group in cuda:
        yield from report(group, _run_group_reporting(group))
    if workers <= 1 or len(jobs) <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for job in jobs:
                yield from report(job, _run_group_reporting(job))
        finally:
            torch.set_num_threads(threads)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=one_torch_thread
        ) as ex:
            futures = {ex.submit(_run_group_reporting, job): job for job in jobs}
            for fut in as_completed(futures):
                yield from report(futures[fut], fut.result())
    yield from local_backend(run_fn, rest, workers)
