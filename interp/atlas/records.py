"""An atlas's measured runs without their weights, so that an atlas bigger than one session
(or one machine) is carried on by the next instead of retrained.

A tables directory written by ``collect_atlas`` holds ``records/<cell>.jsonl.gz``: one line per
measured run of the cell, ``{"cell", "seed", "options", "files": {config.json, summary.json,
atlas.json}, "metrics": [metrics.jsonl rows]}``, seeds in order, gzip without a timestamp (a
cell whose runs did not change is rewritten byte for byte). Checkpoints are never recorded.

``restore_records`` writes those files back into an atlas's run directories that do not exist
yet, with ``restored.json`` saying where they came from; the sweep then counts those runs as
done (they hold atlas.json) and every table and figure reads them as it reads a run measured
here. A record is restored only into the task it was measured for: same cell, seed and
options, and, where the caller names the measurement config, the same one.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

RECORDS = "records"
FILES = ("config.json", "summary.json", "atlas.json")
METRICS = "metrics.jsonl"
RESTORED = "restored.json"


def _task_dict(task: Any) -> dict[str, Any]:
    return task if isinstance(task, dict) else task.to_dict()


def _options(task: dict) -> Any:
    return json.loads(json.dumps(task["options"], sort_keys=True))


def _measured(run_dir: Path) -> bool:
    return all((run_dir / name).is_file() for name in FILES)


def record_of(task: Any) -> dict[str, Any] | None:
    """The record of one measured task (None if its run directory lacks a file of FILES)."""
    from training.runs import read_json, read_metrics

    t = _task_dict(task)
    run_dir = Path(t["run_dir"])
    if not _measured(run_dir):
        return None
    metrics = read_metrics(run_dir / METRICS) if (run_dir / METRICS).is_file() else []
    return {
        "cell": t["cell"],
        "seed": t["seed"],
        "options": _options(t),
        "files": {name: read_json(run_dir / name) for name in FILES},
        "metrics": metrics,
    }


def write_records(tasks: list[Any], tables_dir: str | os.PathLike) -> list[Path]:
    """Write TABLES_DIR/records/<cell>.jsonl.gz for every cell of ``tasks`` with a measured
    run; returns the files written."""
    from training.runs import atomic_path

    by_cell: dict[str, list[dict]] = defaultdict(list)
    for task in tasks:
        record = record_of(task)
        if record is not None:
            by_cell[record["cell"]].append(record)
    out = Path(tables_dir) / RECORDS
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cell, records in sorted(by_cell.items()):
        lines = "".join(
            json.dumps(r, sort_keys=True) + "\n" for r in sorted(records, key=lambda r: r["seed"])
        )
        path = out / f"{cell}.jsonl.gz"
        with atomic_path(path) as tmp:
            tmp.write_bytes(gzip.compress(lines.encode(), compresslevel=9, mtime=0))
        written.append(path)
    return written


def read_records(tables_dir: str | os.PathLike) -> dict[tuple[str, int], dict[str, Any]]:
    """The records under TABLES_DIR/records by (cell, seed); {} if there are none.
    ValueError naming the file if one is not a gzip of JSON lines."""
    records: dict[tuple[str, int], dict[str, Any]] = {}
    folder = Path(tables_dir) / RECORDS
    if not folder.is_dir():
        return records
    for path in sorted(folder.glob("*.jsonl.gz")):
        try:
            lines = gzip.decompress(path.read_bytes()).decode().splitlines()
            for line in lines:
                r = json.loads(line)
                records[(r["cell"], int(r["seed"]))] = r
        except (OSError, EOFError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not an atlas record file: {str(err)[:200]}") from None
    return records


def restore_records(
    tasks: list[Any], tables_dir: str | os.PathLike, measure_config: dict | None = None
) -> dict[str, int]:
    """Write each task's record from TABLES_DIR into its run directory where that directory
    does not exist (a run here is never overwritten). ``measure_config``: restore only records
    measured with this AtlasConfig (its to_dict()). Returns counts: restored, present (the
    run directory exists), mismatched (same cell and seed, other options or measurement)."""
    records = read_records(tables_dir)
    counts = {"restored": 0, "present": 0, "mismatched": 0}
    for task in tasks:
        t = _task_dict(task)
        record = records.get((t["cell"], int(t["seed"])))
        if record is None:
            continue
        run_dir = Path(t["run_dir"])
        if run_dir.exists():
            counts["present"] += 1
            continue
        measured_with = record["files"]["atlas.json"].get("config")
        if record["options"] != _options(t) or (
            measure_config is not None and measured_with != measure_config
        ):
            counts["mismatched"] += 1
            continue
        _restore_into(run_dir, record, Path(tables_dir) / RECORDS / f"{t['cell']}.jsonl.gz")
        counts["restored"] += 1
    return counts


def _restore_into(run_dir: Path, record: dict[str, Any], source: Path) -> None:
    """Write ``record``'s files into a hidden directory beside ``run_dir`` and rename it onto
    ``run_dir``: a run directory is restored whole or not at all (never a summary.json
    without its atlas.json, which the sweep would take for a run to measure)."""
    from training.runs import write_json_atomic, write_text_atomic

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.with_name(f".{run_dir.name}.restoring-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name in FILES:
            write_json_atomic(tmp / name, record["files"][name])
        write_text_atomic(tmp / METRICS, "".join(json.dumps(m) + "\n" for m in record["metrics"]))
        write_json_atomic(
            tmp / RESTORED,
            {
                "from": str(source),
                "note": "measurements only: this run's checkpoints were not kept; "
                "delete this directory and re-run the atlas to train it again",
            },
        )
        os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
