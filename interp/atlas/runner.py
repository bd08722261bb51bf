"""Running an atlas: every run of the grid is trained and then measured in the same worker
(local processes, the ensemble backend or Ray, through training.sweeps), and each run
directory gets atlas.json. Re-running skips runs that already have it, so an interrupted
atlas resumes; a trained run without atlas.json is only measured.

Outputs in OUT (besides the sweep's runs/, results.csv, aggregate.*): atlas.csv (one row per
run), cells.csv (one row per cell), atlas.md and the figures (interp.atlas.tables / plots).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from interp.atlas.grid import chain_name
from interp.atlas.labels import (
    INDUCTION_THRESHOLDS,
    THRESHOLDS,
    atlas_label,
    main_lag,
    mean_shares,
)
from interp.atlas.measure import PROBE_TARGETS, AtlasConfig, measure_model, timeline

ATLAS_JSON = "atlas.json"
MECHANISM_RHO = 0.5  # timeline: the mechanism is in place once |rho| >= this ...
MECHANISM_SHARE = 0.5  # ... and the final carrier's noising share >= this
CIRCUIT_COLUMNS = (  # atlas.csv columns circuit_* of in-context runs (induction_circuit)
    "previous_token_excess",
    "match_excess",
    "dependence",
    "path_removed",
)


def measure_run(run_dir: str | os.PathLike, config: AtlasConfig | None = None) -> dict:
    """Measure a finished run (measure_model on its last checkpoint, the label, and the
    timeline over its checkpoints) and write RUN_DIR/atlas.json; returns the record."""
    from interp.explain import finite_json
    from training.runs import load_run, write_json_atomic

    config = config or AtlasConfig()
    run = load_run(run_dir)
    summary = run.summary()
    t0 = time.perf_counter()
    model = run.model()
    measurement = measure_model(model, run.chain, config, run.train_config.seq_len)
    label = atlas_label(measurement, summary)
    thresholds = THRESHOLDS | (
        {"induction": INDUCTION_THRESHOLDS} if "circuit" in measurement else {}
    )
    record = {"config": config.to_dict(), "thresholds": thresholds} | measurement | label
    in_context = "circuit" in measurement
    if config.timeline and (label["main_lag"] is not None or in_context):
        record["timeline"] = timeline(run, config, label["main_lag"])
        if label["main_lag"] is not None:
            record["mechanism_step"] = mechanism_step(record["timeline"], label["carrier"])
        if in_context:
            record |= head_steps(record["timeline"])
    record["measure_seconds"] = time.perf_counter() - t0
    record = finite_json(record)
    write_json_atomic(Path(run_dir) / ATLAS_JSON, record)
    return record


def first_step_from(points: list[dict], ok) -> int | None:
    """The first checkpoint step from which on ``ok(point)`` holds at every later checkpoint,
    None if it does not hold at the last one."""
    step = None
    for p in points:
        if ok(p):
            step = p["step"] if step is None else step
        else:
            step = None
    return step


def mechanism_step(points: list[dict], carrier: str) -> int | None:
    """First checkpoint step from which on the model follows the token (|rho| >= 0.5) through
    the final carrier (noising share >= 0.5; any path for "distributed"), None if never."""

    def ok(p: dict) -> bool:
        rho = p.get("rho")
        share = (p.get("shares") or {}).get(carrier, 1.0 if carrier == "distributed" else None)
        return (
            isinstance(rho, (int, float))
            and abs(rho) >= MECHANISM_RHO
            and isinstance(share, (int, float))
            and share >= MECHANISM_SHARE
        )

    return first_step_from(points, ok)


def head_steps(points: list[dict]) -> dict[str, int | None]:
    """In-context runs: the step each head forms (first checkpoint from which on the best
    head's previous-token / induction excess stays >= the induction label's thresholds,
    INDUCTION_PREVIOUS_TOKEN and INDUCTION_MATCH_MARGIN), None if it has not by the end."""

    def at_least(key: str, threshold: float):
        return lambda p: isinstance(p.get(key), (int, float)) and p[key] >= threshold

    return {
        "previous_token_step": first_step_from(
            points, at_least("previous_token_excess", INDUCTION_THRESHOLDS["previous_token"])
        ),
        "induction_step": first_step_from(
            points, at_least("induction_excess", INDUCTION_THRESHOLDS["match_margin"])
        ),
    }


def atlas_task(task: dict, config: dict | None = None) -> dict[str, Any]:
    """A sweep run function: train the task's run (training.sweeps.run_task), measure it
    unless RUN_DIR/atlas.json exists, and return the sweep row plus the atlas columns."""
    from training.sweeps import run_task

    row = _with_chain(task, run_task(task))
    if row.get("status") != "finished":
        return row | {"label": row.get("status") or "failed"}
    path = Path(row["run_dir"]) / ATLAS_JSON
    try:
        if path.exists():
            record = json.loads(path.read_text())
        else:
            record = measure_run(row["run_dir"], AtlasConfig(**(config or {})))
    except Exception as err:  # noqa: BLE001 - a sweep reports failures, it does not stop
        return row | {"label": "failed", "status": "failed", "error": f"atlas: {err}"}
    return row | flatten(record)


def _with_chain(task: Any, row: dict) -> dict:
    """The row with the chain's options as JSON where the chain is in-context (the label's
    in_context column would otherwise hide the chain's option of the same name)."""
    t = task if isinstance(task, dict) else task.to_dict()
    chain = t["options"].get("chain") or {}
    if chain.get("in_context"):
        row["chain"] = json.dumps(chain, sort_keys=True)
    return row


def collect_atlas(
    spec: Any,
    out_dir: str | os.PathLike,
    tables_dir: str | os.PathLike,
    settings: str = "",
    config: AtlasConfig | None = None,
) -> dict[str, Path]:
    """The tables and figures of the runs of ``spec`` in ``out_dir`` measured so far (those
    with atlas.json), written into ``tables_dir`` with their records (interp.atlas.records);
    trains and measures nothing, so it can read an atlas another process is still running, or
    one a session had to leave unfinished. Runs recorded in ``tables_dir`` that ``out_dir``
    lacks are restored into it first (those measured with ``config``, default AtlasConfig()),
    so collecting never drops a run the tables held."""
    from interp.atlas.plots import write_figures
    from interp.atlas.records import restore_records, write_records
    from interp.atlas.tables import cell_rows, write_tables
    from training.runs import SUMMARY, read_json
    from training.sweeps import expand
    from training.sweeps.tasks import result_row

    tasks = expand(spec, out_dir)
    restore_records(tasks, tables_dir, (config or AtlasConfig()).to_dict())
    rows = []
    for task in tasks:
        run_dir = Path(task.run_dir)
        if (run_dir / ATLAS_JSON).is_file() and (run_dir / SUMMARY).is_file():
            summary, record = read_json(run_dir / SUMMARY), read_json(run_dir / ATLAS_JSON)
            rows.append(_with_chain(task, result_row(task, summary)) | flatten(record))
    if not rows:
        raise FileNotFoundError(f"{out_dir} holds no measured run of this spec (no {ATLAS_JSON})")
    rows = atlas_rows(rows)
    cells = cell_rows(rows)
    Path(tables_dir).mkdir(parents=True, exist_ok=True)
    note = f"Collected: {len(rows)} of the spec's {len(tasks)} runs were measured."
    files = write_tables(Path(tables_dir), rows, cells, settings=f"{settings}\n\n{note}".strip())
    files |= write_figures(Path(tables_dir), rows, cells)
    write_records(tasks, tables_dir)
    return files


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def flatten(record: dict) -> dict[str, Any]:
    """The atlas.csv columns of one run's atlas.json (see the README's atlas section)."""
    out: dict[str, Any] = {
        "label": record["label"],
        "carrier": record["carrier"],
        "reached": record["reached"],
        "in_context": record["in_context"],
        "main_lag": record["main_lag"],
    }
    lags = record["lags"]
    for d in lags:
        j = d["lag"]
        out[f"rho_lag{j}"] = _num(d.get("rho"))
        out[f"sensitivity_lag{j}"] = _num(d.get("sensitivity"))
        out[f"true_sensitivity_lag{j}"] = _num(d.get("true_sensitivity"))
    main = next((d for d in lags if d["lag"] == record["main_lag"]), None)
    if main is None:  # marginal only: report the lag the truth reads most
        main = main_lag(lags)
    out["rho_main"] = _num(main.get("rho"))
    shares = mean_shares(main)
    for group in ("direct", "attention", "mlp"):
        out[f"share_{group}"] = _num(shares.get(group))
        out[f"necessity_{group}"] = _num((main.get("necessity") or {}).get(group))
    mean = record["transfer"]["mean"]
    for key in ("in_context_index", "d_weights", "d_context"):
        out[key] = _num(mean.get(key))
    for key in ("loss_model", "loss_weights", "loss_context", "loss_oracle"):
        out[f"transfer_{key}"] = _num(mean.get(key))
    heads = record["heads"]
    out["previous_token_excess"] = _num(heads.get("previous_token_excess_max"))
    out["induction_excess"] = _num(heads.get("induction_excess_max"))
    for k, v in enumerate(heads.get("kback_excess_max") or [], 1):
        out[f"kback{k}_excess"] = _num(v)
    circuit = record.get("circuit")
    if circuit is not None:  # in-context chains: induction_circuit's numbers
        out["induction"] = record.get("induction", False)
        for key in CIRCUIT_COLUMNS:
            out[f"circuit_{key}"] = _num(circuit.get(key))
    best = (record.get("probes") or {}).get("best") or {}
    for target in PROBE_TARGETS:
        for group in ("attn", "mlp", "resid"):
            out[f"probe_{target}_{group}"] = _num(best.get(f"{target}.{group}"))
    out["mechanism_step"] = record.get("mechanism_step")
    for key in ("previous_token_step", "induction_step"):
        if key in record:
            out[key] = record[key]
    out["measure_seconds"] = _num(record.get("measure_seconds"))
    return out


def atlas_rows(sweep_rows: list[dict]) -> list[dict[str, Any]]:
    """atlas.csv rows: chain name, the architecture axes, seed, outcome and atlas columns."""
    rows = []
    for r in sweep_rows:
        chain_opts = json.loads(r["chain"]) if isinstance(r.get("chain"), str) else None
        if chain_opts is None:
            chain_opts = {
                k: r[k] for k in ("p", "q", "order", "states", "in_context") if r.get(k) is not None
            }
        window = r.get("window")
        row = {
            "chain": chain_name(chain_opts),
            "layers": r.get("layers", 1),
            "window": "full" if window is None else window,
            "tie": r.get("tie", True),
            "mlp": r.get("mlp", True),
            "seed": r["seed"],
            "cell": r["cell"],
        }
        dropped = ("p", "q", "order", "states", "kernel", "family")  # in the chain name
        keep = [k for k in r if k not in row and k not in dropped]
        row |= {k: r[k] for k in keep}
        rows.append(row)
    return rows


def run_atlas(
    spec: Any,
    out_dir: str | os.PathLike,
    config: AtlasConfig | None = None,
    workers: int | None = None,
    backend: str = "local",
    force: bool = False,
    progress: bool = True,
    settings: str = "",
    restore: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Train and measure every run of ``spec`` into ``out_dir`` (resumable), then write
    atlas.csv, cells.csv, atlas.md and the figures. Returns the written files by name.
    ``restore``: a tables directory of ``collect_atlas`` whose recorded runs (measured with
    the same config) are restored into ``out_dir`` first instead of trained again."""
    from interp.atlas.plots import write_figures
    from interp.atlas.records import restore_records
    from interp.atlas.tables import cell_rows, write_tables
    from training.sweeps import expand, run_sweep

    config = config or AtlasConfig()
    t0 = time.perf_counter()
    if restore is not None:
        counts = restore_records(expand(spec, out_dir), restore, config.to_dict())
        if progress:
            print(
                f"restored {counts['restored']} measured run(s) from {restore} "
                f"({counts['present']} already here, {counts['mismatched']} measured otherwise)",
                file=sys.stderr,
                flush=True,
            )
    fn = functools.partial(atlas_task, config=config.to_dict())
    result = run_sweep(
        spec,
        out_dir,
        workers=workers,
        backend=backend,
        progress=progress,
        force=force,
        run_fn=fn,
        done_name=ATLAS_JSON,
    )
    rows = atlas_rows(result.rows)
    cells = cell_rows(rows)
    out = Path(out_dir)
    files = write_tables(out, rows, cells, settings=settings, wall=time.perf_counter() - t0)
    files |= write_figures(out, rows, cells)
    return files


def _parse(value: str) -> Any:
    if value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def load_atlas(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of an atlas's atlas.csv (``path``: the atlas directory or the CSV), numbers
    and booleans parsed; FileNotFoundError naming the path if there is none."""
    import csv

    path = Path(path)
    csv_path = path / "atlas.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} does not exist: run `markov-lens atlas` first")
    with open(csv_path, newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
