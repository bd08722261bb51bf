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
"ensemble" (training.ensemble) trains same-shape runs as one batched computation; "ray"
(training.ray_backend) runs them on Ray. ``register_backend(name, fn)`` adds others, and
run_sweep also takes a backend object directly.
Finished runs (summary.json present) are skipped, so re-running a crashed sweep resumes it.

While it runs, a sweep holds an exclusive lock on OUT (training.locks): a second sweep on
the same directory is refused at once, naming the holder; a lock left by a killed sweep is
taken over. Outputs: OUT/sweep.json (spec and tasks), OUT/results.csv (one row per run: options,
seed, summary), OUT/aggregate.csv and OUT/aggregate.md (per cell: runs, fraction of each
verdict, final loss mean/std, plateau statistics).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.locks import lock_directory
from training.options import (
    CHAIN_OPTIONS,
    MAX_SEED,
    MODEL_OPTIONS,
    TRAIN_OPTIONS,
    build_run_config,
)
from training.runs import SUMMARY, read_json, write_json_atomic

SPEC_KEYS = ("chain", "model", "train", "seeds")
SECTION_OPTIONS = {"chain": CHAIN_OPTIONS, "model": MODEL_OPTIONS, "train": TRAIN_OPTIONS}
VERDICTS = ("bigram", "unigram", "neither")
SUMMARY_COLUMNS = (
    "status",
    "verdict",
    "order_label",
    "final_eval_loss",
    "entropy_rate",
    "unigram_loss",
    "final_kl",
    "final_rel_excess",
    "final_dependence",
    "p_hat",
    "q_hat",
    "plateau_exit_step",
    "plateau_steps",
    "plateau_first_step",
    "steps",
    "wall_seconds",
    "error",
)


@dataclass
class RunTask:
    """One run of a sweep: its options (chain/model/train sections), seed and directory."""

    cell: str
    axes: dict[str, Any]
    options: dict[str, dict[str, Any]]
    seed: int
    run_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepResult:
    """What a sweep produced: one row per run, one per cell, and the files written."""

    rows: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------------------ specs


MAX_SPEC_DEPTH = 64


def max_bracket_depth(text: str) -> int:
    """Deepest nesting of [ and { in `text` (a cheap guard before parsing)."""
    depth = best = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return best


def load_spec(path: str | os.PathLike) -> dict | list:
    """Read a YAML (.yaml/.yml) or JSON spec file (ValueError if it cannot be parsed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"spec file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a spec file")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a text file: {err}") from None
    depth = max_bracket_depth(text)
    if depth > MAX_SPEC_DEPTH:
        raise ValueError(f"{path} nests {depth} levels deep; a spec needs at most a few")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

        class UniqueKeys(base):  # a repeated key would silently keep only its last value
            def construct_mapping(self, node, deep=False):
                seen = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    if key in seen:
                        raise ValueError(
                            f"{path}: key {key!r} appears twice in one mapping (line "
                            f"{key_node.start_mark.line + 1}); give each key once"
                        )
                    seen.add(key)
                return super().construct_mapping(node, deep=deep)

        UniqueKeys.add_constructor(
            yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeys.construct_mapping
        )
        try:
            return yaml.load(text, Loader=UniqueKeys)
        except (yaml.YAMLError, RecursionError) as err:
            reason = " ".join(str(err).split())[:200]  # one line, however YAML words it
            raise ValueError(f"{path} is not valid YAML: {reason}") from None

    def unique(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        for k in keys:
            if keys.count(k) > 1:
                raise ValueError(f"{path}: key {k!r} appears twice in one object; give it once")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON: {str(err)[:200]}") from None


MAX_RUNS = 100_000  # runs in one sweep (a bigger grid is almost surely a typo)
MAX_CELLS = 10_000


def _seeds(value: Any) -> list[int]:
    if value is None:
        return [0]
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_RUNS:
            raise ValueError(
                f"seeds: an int N means seeds 0..N-1; N must be in 1..{MAX_RUNS}, got {value}"
            )
        return list(range(value))
    if (
        isinstance(value, list)
        and value
        and len(value) <= MAX_RUNS
        and all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in value
        )
    ):
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must not repeat, got {value}")
        return list(value)
    raise ValueError(
        f"seeds must be an int N or a non-empty list of ints in 0..2^63-1, got {value!r}"
    )


def validate_spec(spec: Any) -> list[dict]:
    """The spec as a list of single specs, with every key checked (ValueError naming a bad
    key and the allowed ones)."""
    specs = spec if isinstance(spec, list) else [spec]
    if not specs:
        raise ValueError("an empty list of specs")
    for i, s in enumerate(specs):
        where = f"spec[{i}]" if isinstance(spec, list) else "spec"
        if not isinstance(s, dict):
            raise ValueError(f"{where} must be a mapping, got {type(s).__name__}")
        for key in s:
            if key not in SPEC_KEYS:
                raise ValueError(
                    f"{where}: unknown key {key!r}; allowed keys: " + ", ".join(SPEC_KEYS)
                )
        for section, allowed in SECTION_OPTIONS.items():
            opts = s.get(section) or {}
            if not isinstance(opts, dict):
                raise ValueError(f"{where}.{section} must be a mapping of options")
            if section == "chain" and "family" in opts:
                continue
            for key in opts:
                if key not in allowed:
                    raise ValueError(
                        f"{where}: unknown {section} option {key!r}; allowed {section} "
                        "options: " + ", ".join(allowed)
                    )
            for key, value in opts.items():
                if isinstance(value, list) and not value:
                    raise ValueError(f"{where}.{section}.{key} is an empty list (no grid values)")
        _seeds(s.get("seeds"))
    return specs


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "_".join(_fmt(v) for v in value)
    return str(value)


def cell_id(axes: dict[str, Any], options: dict) -> str:
    """Directory name of a cell: its axis values, readable, and a hash of all its options."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    label = "-".join(f"{k}{_fmt(v)}" for k, v in axes.items())
    label = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in label)
    label = label[:80]  # file names stay short; the hash keeps cells apart
    return f"{label}-{digest}" if label else digest


def expand(spec: Any, out_dir: str | os.PathLike) -> list[RunTask]:
    """Every (cell, seed) of the spec's grid(s) as RunTasks; each cell is validated by
    building its configs. A cell's `axes` are the options whose values differ between the
    cells of the whole sweep (all specs together)."""
    out = Path(out_dir)
    cells: list[tuple[dict, list[int]]] = []
    for s in validate_spec(spec):
        axes_spec = []  # (section, key, values)
        fixed: dict[str, dict[str, Any]] = {"chain": {}, "model": {}, "train": {}}
        for section in ("chain", "model", "train"):
            for key, value in (s.get(section) or {}).items():
                if isinstance(value, list) and not (section == "chain" and key == "kernel"):
                    axes_spec.append((section, key, value))
                else:
                    fixed[section][key] = value
        n_cells = math.prod(len(v) for _, _, v in axes_spec)
        n_runs = n_cells * len(_seeds(s.get("seeds")))
        if n_cells + len(cells) > MAX_CELLS or n_runs > MAX_RUNS:
            raise ValueError(
                f"the sweep is too big: {n_cells} cells and {n_runs} runs in one grid "
                f"(at most {MAX_CELLS} cells and {MAX_RUNS} runs)"
            )
        for combo in itertools.product(*[values for _, _, values in axes_spec]):
            options = {sec: dict(v) for sec, v in fixed.items()}
            for (section, key, _), value in zip(axes_spec, combo, strict=True):
                options[section][key] = value
            build_run_config(options | {"seed": 0})  # validate now, not after hours of runs
            cells.append((options, _seeds(s.get("seeds"))))
    varying: list[tuple[str, str]] = []
    for options, _ in cells:
        for section in ("chain", "model", "train"):
            for key in options[section]:
                values = {json.dumps(o[section].get(key), sort_keys=True) for o, _ in cells}
                if len(values) > 1 and (section, key) not in varying:
                    varying.append((section, key))
    tasks: list[RunTask] = []
    seen: set[str] = set()
    for options, seeds in cells:
        axes = {key: options[section].get(key) for section, key in varying}
        cell = cell_id(axes, options)
        for seed in seeds:
            run_dir = out / "runs" / cell / f"seed{seed}"
            if str(run_dir) in seen:
                continue
            seen.add(str(run_dir))
            tasks.append(RunTask(cell, axes, options, seed, str(run_dir)))
    return tasks


# ------------------------------------------------------------------------------ runs


def _row(task: RunTask | dict, summary: dict | None, error: str | None = None) -> dict[str, Any]:
    task = task if isinstance(task, dict) else task.to_dict()
    row: dict[str, Any] = {"cell": task["cell"], "seed": task["seed"]}
    for section in ("chain", "model", "train"):
        for key, value in task["options"][section].items():
            if section == "chain" and key == "family":
                row["chain"] = json.dumps(task["options"]["chain"], sort_keys=True)
                break
            row[key] = value
    summary = summary or {}
    order_losses = (summary.get("references") or {}).get("order_losses")
    if "order_label" not in summary and order_losses and summary.get("final_kl") is not None:
        from training.verdicts import order_reached  # a run summarised before order labels

        summary = summary | order_reached(summary["final_kl"], order_losses)
    for key in SUMMARY_COLUMNS:
        row[key] = summary.get(key)
    if error is not None:
        row["status"], row["error"] = "failed", error
    row["run_dir"] = task["run_dir"]
    return row


def run_task(task: RunTask | dict) -> dict[str, Any]:
    """Train one task (resuming an interrupted one; a finished one is only read) and return
    its result row. Never raises: a failure becomes a row with status "failed"."""
    from training.trainer import TrainingDiverged, train

    t = task if isinstance(task, dict) else task.to_dict()
    run_dir = Path(t["run_dir"])
    try:
        if (run_dir / SUMMARY).exists():
            return _row(t, read_json(run_dir / SUMMARY))
        rc = build_run_config(t["options"] | {"seed": t["seed"]})
        try:
            summary = train(
                rc.model,
                rc.chain,
                rc.train,
                seed=rc.seed,
                out_dir=run_dir,
                resume=True,
                progress=False,
            )
        except TrainingDiverged:
            summary = read_json(run_dir / SUMMARY)
        return _row(t, dict(summary))
    except Exception as err:  # noqa: BLE001 - a sweep reports failures, it does not stop
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        return _row(t, None, error=detail)


# --------------------------------------------------------------------------- backends


def _worker_init() -> None:
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
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as ex:
        futures = [ex.submit(run_fn, task) for task in tasks]
        for fut in as_completed(futures):
            yield fut.result()


BACKENDS: dict[str, Callable[..., Iterable[dict]]] = {"local": local_backend}
BUILTIN_BACKENDS = ("local", "ensemble", "ray")


def register_backend(name: str, fn: Callable[..., Iterable[dict]]) -> None:
    """Add a backend: fn(run_fn, tasks (dicts), workers) yields one result row per task."""
    BACKENDS[name] = fn


def get_backend(backend: str | Callable[..., Iterable[dict]]) -> Callable[..., Iterable[dict]]:
    """A backend by name ("local"; "ensemble": training.ensemble.ensemble_backend; "ray":
    training.ray_backend.RayBackend() on RAY_ADDRESS or a private local instance; or one
    added with register_backend), or the backend object itself. Imported only when asked."""
    if callable(backend):
        return backend
    if backend in BACKENDS:
        return BACKENDS[backend]
    if backend == "ensemble":
        from training.ensemble import ensemble_backend

        return ensemble_backend
    if backend == "ray":
        from training.ray_backend import RayBackend

        return RayBackend()
    names = sorted(set(BACKENDS) | set(BUILTIN_BACKENDS))
    raise ValueError(f"unknown backend {backend!r}; available: {names}")


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    os.replace(tmp, path)
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
