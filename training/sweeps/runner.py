"""Running a sweep (``run_sweep``) and its result tables.

run_sweep expands a spec (training.sweeps.spec), skips the runs already done, maps a run
function (default training.sweeps.tasks.run_task) over the others with a backend
(training.sweeps.registry) under an exclusive lock on the output directory
(training.locks), and writes OUT/sweep.json (spec and tasks), OUT/results.csv (one row per
run), OUT/aggregate.csv and OUT/aggregate.md (per cell: runs, fraction of each verdict,
final loss mean/std, plateau statistics): ``aggregate_rows``, ``write_results``,
``write_csv``, ``markdown_table``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.locks import lock_directory
from training.runs import SUMMARY, atomic_path, read_json, write_json_atomic
from training.sweeps.registry import get_backend
from training.sweeps.spec import RunTask, expand, load_spec
from training.sweeps.tasks import run_task
from training.verdicts import VERDICTS


@dataclass
class SweepResult:
    """What a sweep produced: one row per run, one per cell, and the files written."""

    rows: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def run_sweep(
    spec: Any,
    out_dir: str | os.PathLike,
    workers: int | None = None,
    backend: str | Callable[..., Iterable[dict]] = "local",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    force: bool = False,
    run_fn: Callable[[dict], dict] = run_task,
    done_name: str = SUMMARY,
) -> SweepResult:
    """Expand `spec` (a dict, list of dicts, or a YAML/JSON path), run the runs not yet
    finished with `backend` (a name or a backend object, see get_backend), and write
    results.csv and the aggregate. Returns SweepResult.

    out_dir holding a sweep of the same spec: it is resumed. Of another spec: FileExistsError
    (its results.csv and aggregate would be replaced) unless force=True, which records the
    old spec in sweep.json's previous_specs and keeps its run directories.

    run_fn(task dict) -> row runs one task (default run_task: train it); a task counts as
    done when its run directory holds ``done_name`` (default summary.json), and done tasks
    are only read, by run_fn in this process. interp.atlas passes a run_fn that trains and
    then measures, with done_name atlas.json."""
    if isinstance(spec, (str, os.PathLike)):
        spec = load_spec(spec)
    run_backend = get_backend(backend)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; a sweep's output must be a directory")
    tasks = expand(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    with lock_directory(out, "sweep"):  # a second sweep on `out` is refused, naming this one
        spec = json.loads(json.dumps(spec))  # as sweep.json stores it (lists, not tuples)
        record = {"spec": spec, "tasks": [t.to_dict() for t in tasks]}
        previous = out / "sweep.json"
        if previous.exists():
            old = read_json(previous)
            if old.get("spec") != spec and not force:
                n_old = len(old.get("tasks") or [])
                raise FileExistsError(
                    f"{out} holds a sweep of another spec ({n_old} runs); its results.csv and "
                    "aggregate would be replaced: choose another directory, or pass --force "
                    "(force=True) to run this spec there (the old runs are kept)"
                )
            if old.get("spec") != spec:
                record["previous_specs"] = old.get("previous_specs", []) + [old.get("spec")]
        write_json_atomic(previous, record)
        if log is None:
            log = (
                (lambda msg: print(msg, file=sys.stderr, flush=True))
                if progress
                else (lambda _: None)
            )
        done = {t.run_dir for t in tasks if (Path(t.run_dir) / done_name).exists()}
        pending = [t.to_dict() for t in tasks if t.run_dir not in done]
        rows = {t.run_dir: run_fn(t.to_dict()) for t in tasks if t.run_dir in done}
        n_workers = workers if workers is not None else (os.cpu_count() or 1)
        n_workers = max(1, min(n_workers, len(pending) or 1))
        log(
            f"sweep {out}: {len(tasks)} runs in {len({t.cell for t in tasks})} cells; "
            f"{len(done)} already finished, {len(pending)} to run on {n_workers} worker(s)"
        )
        t0 = time.perf_counter()
        for i, row in enumerate(run_backend(run_fn, pending, n_workers), 1):
            rows[row["run_dir"]] = row
            status = row.get("verdict") if row.get("status") == "finished" else row.get("status")
            if row.get("label") and row.get("status") == "finished":
                status = f"{status}, {row['label']}"
            loss = row.get("final_eval_loss")
            log(
                f"[{i}/{len(pending)}] {row['cell']} seed {row['seed']}: {status}"
                + (f", eval loss {loss:.4f}" if isinstance(loss, float) else "")
                + (f" ({row.get('error')})" if row.get("error") else "")
                + f"  [{time.perf_counter() - t0:.0f} s]"
            )
        ordered = [rows[t.run_dir] for t in tasks]
        axes = _axis_names(tasks)
        aggregate = aggregate_rows(ordered, axes=axes)
        files = write_results(out, ordered, aggregate, axes)
        return SweepResult(ordered, aggregate, out, files)


# --------------------------------------------------------------------------- results


def _axis_names(tasks: list[RunTask]) -> list[str]:
    names: list[str] = []
    for t in tasks:
        for key in t.axes:
            if key not in names:
                names.append(key)
    return names


def _num(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def aggregate_rows(rows: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    """Per cell: runs, finished, the fraction of finished runs with each verdict, final loss
    mean/std, and the distribution of plateau_exit_step (runs that exited, median, min, max)
    and of plateau_steps (mean)."""
    cells: dict[str, list[dict]] = {}
    for row in rows:
        cells.setdefault(row["cell"], []).append(row)
    out = []
    for cell, group in cells.items():
        finished = [r for r in group if r.get("status") == "finished"]
        n = len(finished)
        agg: dict[str, Any] = {"cell": cell}
        for axis in axes:
            agg[axis] = group[0].get(axis)
        agg["runs"] = len(group)
        agg["finished"] = n
        agg["diverged"] = sum(r.get("status") == "diverged" for r in group)
        agg["failed"] = sum(r.get("status") == "failed" for r in group)
        for v in VERDICTS:
            agg[f"frac_{v}"] = sum(r.get("verdict") == v for r in finished) / n if n else None
        losses = _num([r.get("final_eval_loss") for r in finished])
        agg["loss_mean"] = statistics.fmean(losses) if losses else None
        agg["loss_std"] = statistics.stdev(losses) if len(losses) > 1 else None
        rel = _num([r.get("final_rel_excess") for r in finished])
        agg["rel_excess_mean"] = statistics.fmean(rel) if rel else None
        agg["entropy_rate"] = finished[0].get("entropy_rate") if finished else None
        agg["unigram_loss"] = finished[0].get("unigram_loss") if finished else None
        exits = _num([r.get("plateau_exit_step") for r in finished])
        agg["plateau_exited"] = len(exits)
        agg["plateau_exit_median"] = statistics.median(exits) if exits else None
        agg["plateau_exit_min"] = min(exits) if exits else None
        agg["plateau_exit_max"] = max(exits) if exits else None
        psteps = _num([r.get("plateau_steps") for r in finished])
        agg["plateau_steps_mean"] = statistics.fmean(psteps) if psteps else None
        agg["plateau_entered"] = sum(r.get("plateau_first_step") is not None for r in finished)
        walls = _num([r.get("wall_seconds") for r in finished])
        agg["wall_seconds_mean"] = statistics.fmean(walls) if walls else None
        out.append(agg)
    return out


def _csv_value(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else v


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return path


def _md(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub markdown table of `rows` (columns: all keys in order, unless given)."""
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_md(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


AGGREGATE_MD_COLUMNS = (
    "runs",
    "finished",
    "frac_bigram",
    "frac_unigram",
    "frac_neither",
    "frac_not converged",
    "frac_undecided",
    "loss_mean",
    "loss_std",
    "entropy_rate",
    "unigram_loss",
    "plateau_entered",
    "plateau_exited",
    "plateau_exit_median",
    "plateau_steps_mean",
)


def write_results(
    out: Path, rows: list[dict[str, Any]], aggregate: list[dict[str, Any]], axes: list[str]
) -> dict[str, Path]:
    """results.csv, aggregate.csv and aggregate.md (axis columns first) in `out`."""
    files = {
        "results": write_csv(out / "results.csv", rows),
        "aggregate": write_csv(out / "aggregate.csv", aggregate),
    }
    md = out / "aggregate.md"
    md.write_text(
        "# Sweep aggregate\n\nPer cell; verdict fractions are over finished runs; plateau "
        "exit = first evaluation below the midpoint of the unigram loss and the entropy rate "
        "after one above it (training.verdicts).\n\n"
        + markdown_table(aggregate, axes + list(AGGREGATE_MD_COLUMNS))
    )
    files["aggregate_md"] = md
    return files
