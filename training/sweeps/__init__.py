"""Sweeps: grids of runs over chain parameters, architecture knobs and seeds.

A spec (YAML or JSON; or a list of specs, whose grids are united) looks like

    chain: {p: [0.2, 0.5], q: [0.3, 0.8]}
    model: {layers: [1, 2], d_model: [8], tie: [true, false]}
    train: {iters: 400, seq_len: 1024, batch: 16}
    seeds: [0, 1, 2]            # or an int N for seeds 0..N-1

Keys are `markov-lens train`'s options with underscores (training.options). A list is a grid
axis, a scalar is fixed (a value that is itself a list, like per-layer windows, is written
as a one-element list of it: window: [[2, null]]). Every combination of the axes is a *cell*;
each (cell, seed) is a run directory OUT/runs/<cell>/seed<k>.

Execution is split so that other backends can plug in: ``expand(spec)`` gives the RunTasks,
``run_task(task)`` trains one (resuming it if it was interrupted), and a backend maps
run_task over the pending tasks, fn(run_fn, tasks, workers) yielding one result row per
task: "local" uses worker processes (default one per core, torch threads 1 each);
"ensemble" (training.sweeps.ensemble) trains same-shape runs as one batched computation;
"ray" (training.sweeps.ray) runs them on Ray. ``register_backend(name, fn)`` adds others,
and run_sweep also takes a backend object directly.
Finished runs (summary.json present) are skipped, so re-running a crashed sweep resumes it.

While it runs, a sweep holds an exclusive lock on OUT (training.locks): a second sweep on
the same directory is refused at once, naming the holder; a lock left by a killed sweep is
taken over. Outputs: OUT/sweep.json (spec and tasks), OUT/results.csv (one row per run: options,
seed, summary), OUT/aggregate.csv and OUT/aggregate.md (per cell: runs, fraction of each
verdict, final loss mean/std, plateau statistics).

One module per idea; each imports only modules listed before it (never this package's
re-exports), so there are no import cycles:

- ``spec``: load_spec, validate_spec, expand, cell_id, RunTask and the size limits;
- ``tasks``: run_task (train one run) and result_row (its row of results.csv);
- ``local``: the "local" backend (local_backend);
- ``ensemble``: the "ensemble" backend (ensemble_backend, plan_groups, run_group,
  stacking_pays);
- ``ray``: the "ray" backend (RayBackend);
- ``registry``: BACKENDS, register_backend, get_backend (ensemble and ray are imported only
  when asked for: they load the trainer and Ray);
- ``runner``: run_sweep and the result tables (aggregate_rows, write_results, write_csv,
  markdown_table).

The names below are re-exported here; the ensemble and ray modules are not (importing this
package loads neither the trainer nor Ray).
"""

from training.sweeps.local import local_backend, one_torch_thread
from training.sweeps.registry import BACKENDS, BUILTIN_BACKENDS, get_backend, register_backend
from training.sweeps.runner import (
    AGGREGATE_MD_COLUMNS,
    VERDICTS,
    SweepResult,
    aggregate_rows,
    markdown_table,
    run_sweep,
    write_csv,
    write_results,
)
from training.sweeps.spec import (
    MAX_CELLS,
    MAX_RUNS,
    MAX_SPEC_DEPTH,
    SECTION_OPTIONS,
    SPEC_KEYS,
    RunTask,
    cell_id,
    expand,
    load_spec,
    max_bracket_depth,
    validate_spec,
)
from training.sweeps.tasks import SUMMARY_COLUMNS, result_row, run_task

__all__ = [
    "AGGREGATE_MD_COLUMNS",
    "BACKENDS",
    "BUILTIN_BACKENDS",
    "MAX_CELLS",
    "MAX_RUNS",
    "MAX_SPEC_DEPTH",
    "SECTION_OPTIONS",
    "SPEC_KEYS",
    "SUMMARY_COLUMNS",
    "VERDICTS",
    "RunTask",
    "SweepResult",
    "aggregate_rows",
    "cell_id",
    "expand",
    "get_backend",
    "load_spec",
    "local_backend",
    "markdown_table",
    "max_bracket_depth",
    "one_torch_thread",
    "register_backend",
    "result_row",
    "run_sweep",
    "run_task",
    "validate_spec",
    "write_csv",
    "write_results",
]
