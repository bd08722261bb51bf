"""The trap as a function of precision: one row per arithmetic of a finished precision sweep
(spec.yaml, run by run.sh), with the fraction of seeds that end at the unigram point and its
Wilson 95% interval (training.stats), the plateau exit steps, and a seed-by-arithmetic table
of verdicts (the seeds are paired: the same init and batches in every arithmetic).

    .venv/bin/python docs/results/paper/precision/table.py SWEEP_DIR [SWEEP_DIR ...] [--out DIR]

Reads each SWEEP_DIR/sweep.json (the runs: spec.yaml the tied cell, spec-untied.yaml and
spec-untied-scaler-bf16.yaml the untied one, spec-phase.yaml the phase diagram's ten p+q > 1
cells) and each run's summary.json; writes DIR/table.md and DIR/table.csv (DIR defaults to
this folder) and prints the markdown. With more than one cell, table.md also holds a
cell-by-arithmetic table of trap fractions (cell_table).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.runs import SUMMARY
from training.stats import exact_mcnemar, fmt_fraction, quartiles
from training.sweeps import markdown_table, write_csv

HERE = Path(__file__).resolve().parent


def arithmetic_name(train: dict[str, Any]) -> str:
    """'fp16 + grad scaler + TF32' for a train section (fp32 when none is named)."""
    name = train.get("precision", "fp32")
    if train.get("grad_scaler"):
        name += " + grad scaler"
    if train.get("tf32"):
        name += " + TF32"
    return name


def cell_name(options: dict[str, Any]) -> str:
    """'tied, p=0.5, q=0.8' for a task's options."""
    tie = options["model"].get("tie", True)
    chain = options["chain"]
    return f"{'tied' if tie else 'untied'}, p={chain.get('p')}, q={chain.get('q')}"


def read_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per run of the sweep: its cell, arithmetic (the two as ``arithmetic`` when
    the sweep holds more than one cell, e.g. 'untied, p=0.5, q=0.8: fp16'), seed, and its
    summary (None if the run has none yet)."""
    record = json.loads((sweep_dir / "sweep.json").read_text())
    runs = []
    for task in record["tasks"]:
        path = sweep_dir / "runs" / task["cell"] / Path(task["run_dir"]).name
        summary = json.loads((path / SUMMARY).read_text()) if (path / SUMMARY).exists() else None
        runs.append(
            {
                "cell": cell_name(task["options"]),
                "arithmetic": arithmetic_name(task["options"]["train"]),
                "seed": task["seed"],
                "summary": summary,
            }
        )
    return runs


def read_sweeps(sweep_dirs: list[Path]) -> list[dict[str, Any]]:
    """read_runs of each sweep; with more than one cell among them, each run's arithmetic
    is named with its cell."""
    runs = [r for d in sweep_dirs for r in read_runs(d)]
    if len({r["cell"] for r in runs}) > 1:
        for r in runs:
            r["own_arithmetic"] = r["arithmetic"]
            r["arithmetic"] = f"{r['cell']}: {r['arithmetic']}"
    return runs


def own_arithmetic(run: dict[str, Any]) -> str:
    """The run's arithmetic without the cell that read_sweeps may have prefixed."""
    return run.get("own_arithmetic", run["arithmetic"])


def _step(value: Any) -> str:
    return "-" if value is None else str(value)


def precision_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arithmetic, in the order of first appearance: runs, finished, diverged,
    the unigram (trap) fraction of the finished runs with its Wilson 95% interval, bigram
    and neither counts, the median [quartiles] plateau exit step of the runs that left the
    plateau, each seed's exit step ('-': never left), and the loss scaler's skipped steps."""
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        by_name.setdefault(r["arithmetic"], []).append(r)
    rows = []
    for name, group in by_name.items():
        done = [r for r in group if r["summary"] and r["summary"].get("status") == "finished"]
        verdicts = [r["summary"]["verdict"] for r in done]
        exits = [r["summary"].get("plateau_exit_step") for r in done]
        q = quartiles([e for e in exits if e is not None])
        skipped = [
            (r["summary"].get("arithmetic") or {}).get("grad_scaler_skipped_steps") for r in done
        ]
        rows.append(
            {
                "arithmetic": name,
                "runs": len(group),
                "finished": len(done),
                "diverged": sum(
                    1 for r in group if r["summary"] and r["summary"].get("status") == "diverged"
                ),
                "unigram (trap), Wilson 95%": fmt_fraction(verdicts.count("unigram"), len(done)),
                "bigram": verdicts.count("bigram"),
                "neither": verdicts.count("neither"),
                "exit step median [q1, q3]": "" if q is None else f"{q[1]:g} [{q[0]:g}, {q[2]:g}]",
                "exit step per seed": " ".join(
                    f"s{r['seed']}:{_step(e)}" for r, e in zip(done, exits, strict=True)
                ),
                "scaler skipped steps": ""
                if all(s is None for s in skipped)
                else sum(s or 0 for s in skipped),
            }
        )
    return rows


def seed_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seeds x arithmetics: each run's verdict and plateau exit step ('verdict @ step'); with
    more than one cell, one row per cell and seed, the columns each run's own arithmetic."""
    cells = list(dict.fromkeys(r.get("cell") for r in runs))
    names = list(dict.fromkeys(own_arithmetic(r) for r in runs))
    texts: dict[tuple[int, int], dict[str, str]] = {}
    for r in runs:
        s = r["summary"]
        if s is None:
            text = "not run"
        elif s.get("status") != "finished":
            text = s.get("status", "?")
        else:
            text = f"{s['verdict']} @ {_step(s.get('plateau_exit_step'))}"
        key = (cells.index(r.get("cell")), r["seed"])
        texts.setdefault(key, {})[own_arithmetic(r)] = text
    return [
        ({"cell": cells[c]} if len(cells) > 1 else {})
        | {"seed": seed}
        | {n: texts[c, seed].get(n, "") for n in names}
        for c, seed in sorted(texts)
    ]


def cell_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells x arithmetics: the trap fraction of each cell's finished runs in each arithmetic,
    with its Wilson 95% interval ('' where the cell has no finished run in it). The
    arithmetic is each run's own (train section), whatever read_sweeps prefixed."""
    names: list[str] = []
    counts: dict[str, dict[str, list[int]]] = {}
    for r in runs:
        name = own_arithmetic(r)
        if name not in names:
            names.append(name)
        s = r["summary"]
        if s and s.get("status") == "finished":
            k_n = counts.setdefault(r["cell"], {}).setdefault(name, [0, 0])
            k_n[0] += s["verdict"] == "unigram"
            k_n[1] += 1
    cells = list(dict.fromkeys(r["cell"] for r in runs))
    return [
        {"cell": cell}
        | {n: fmt_fraction(*counts[cell][n]) if n in counts.get(cell, {}) else "" for n in names}
        for cell in cells
    ]


def paired_table(runs: list[dict[str, Any]], base: str = "fp32") -> list[dict[str, Any]]:
    """Each arithmetic against `base`, paired by cell and seed (the same init and batches) and
    pooled over the cells: the pairs where both runs finished, the traps in each, the
    discordant pairs (trapped only in `base`, only in the other) and the exact McNemar p
    (training.stats.exact_mcnemar). The arithmetic is each run's own, as in cell_table."""
    trapped: dict[str, dict[tuple[str, int], bool]] = {}
    for r in runs:
        s = r["summary"]
        if s and s.get("status") == "finished":
            name = own_arithmetic(r)
            trapped.setdefault(name, {})[(r["cell"], r["seed"])] = s["verdict"] == "unigram"
    paired_with = trapped.get(base, {})
    rows = []
    for name, other in trapped.items():
        if name == base:
            continue
        keys = [key for key in other if key in paired_with]
        pairs = [(paired_with[key], other[key]) for key in keys]
        n = len(pairs)
        only_base = sum(a and not b for a, b in pairs)
        only_other = sum(b and not a for a, b in pairs)
        rows.append(
            {
                "arithmetic": name,
                "pairs (cell, seed)": n,
                "cells": len({cell for cell, _ in keys}),
                f"trapped in {base}": fmt_fraction(sum(a for a, _ in pairs), n),
                "trapped in it": fmt_fraction(sum(b for _, b in pairs), n),
                f"only in {base}": only_base,
                "only in it": only_other,
                "exact McNemar p": f"{exact_mcnemar(only_base, only_other):.2g}",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="sweep_dir")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    runs = read_sweeps(args.sweep_dirs)
    table = precision_table(runs)
    cells = ", ".join(dict.fromkeys(f"({r['cell']})" for r in runs))
    sources = ", ".join(str(d) for d in args.sweep_dirs)
    md = (
        f"# The unigram trap per arithmetic {cells}, the paper's recipe\n\n"
        f"From {sources} (spec*.yaml, run.sh). Trap: the run's verdict is `unigram` "
        "(training.verdicts); fractions over the finished runs, Wilson 95% intervals "
        "(training.stats). Exit step: plateau_exit_step, the first evaluation whose loss is "
        "below the midpoint of the unigram loss and the entropy rate ('-': never).\n\n"
        + markdown_table(table)
        + (
            "\n## Trap per cell and arithmetic (Wilson 95%)\n\n" + markdown_table(cell_table(runs))
            if len({r["cell"] for r in runs}) > 1
            else ""
        )
        + (
            "\n## Paired against fp32, pooled over the cells (same cell, seed, init and batches)"
            "\n\n" + markdown_table(paired)
            if (paired := paired_table(runs))
            else ""
        )
        + "\n## Per seed (paired: the same init and batches in every arithmetic)\n\n"
        + markdown_table(seed_table(runs))
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(md)
    write_csv(args.out / "table.csv", table)
    print(md, end="")
    return md


if __name__ == "__main__":
    main()
