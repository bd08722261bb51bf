"""The driver: EXPERIMENTS (each experiment's specs, report and description) and
reproduce(), which runs an experiment through the sweep machinery and writes its figures,
summary.csv and summary.md."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.experiments.claims import claims_table
from training.experiments.in_context import in_context_report
from training.experiments.presets import (
    SIZES,
    default_seeds,
    depth_specs,
    in_context_specs,
    phase_specs,
    second_order_specs,
    tying_specs,
    with_arithmetic,
)
from training.experiments.reports import (
    depth_report,
    phase_report,
    second_order_report,
    tying_report,
)
from training.sweeps import SweepResult, markdown_table, run_sweep, write_csv

EXPERIMENTS: dict[str, tuple[Callable, Callable, str]] = {
    "tying": (tying_specs, tying_report, "weight tying: tied vs untied, p+q<1 vs p+q>1"),
    "depth": (depth_specs, depth_report, "depth: L = 1, 2, 4, 8 on p=0.5, q=0.8"),
    "second-order": (
        second_order_specs,
        second_order_report,
        "lag-2 chain: attention windows vs depth",
    ),
    "phase-diagram": (phase_specs, phase_report, "(p, q) grid: where the unigram trap happens"),
    "in-context": (
        in_context_specs,
        in_context_report,
        "in-context chains: Edelman's stages (2-layer attention-only, Dirichlet vs doubly "
        "stochastic prior), the depth contrast on one kernel per minibatch (1 vs 2, 3 layers) "
        "and constant depth (order k x 2, 3 layers), against the add-alpha (Bayes) loss; full = "
        "the authors' GPU settings (length 512, d_model 32, lr 0.01, 8000 steps), quick = a "
        "CPU preset (length 128, 3000 steps)",
    ),
}


@dataclass
class Reproduction:
    """What `reproduce` wrote and found."""

    name: str
    size: str
    out_dir: Path
    table: list[dict[str, Any]]
    claims: list[dict[str, Any]]
    figures: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    wall_seconds: float = 0.0
    markdown: str = ""


def reproduce(
    name: str,
    out_dir: str | os.PathLike | None = None,
    size: str = "full",
    seeds: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
    arithmetic: str | None = None,
) -> Reproduction:
    """Run experiment `name` (see EXPERIMENTS) at `size` with `seeds` seeds per cell (default:
    default_seeds) and write figures, summary.csv and summary.md to out_dir (default
    runs/NAME or runs/NAME-SIZE, with -ARITHMETIC). arithmetic: a name of
    presets.ARITHMETICS ("authors-gpu": the paper's fp16 + TF32 GPU runs); None trains in
    float32 with the specs as they are. An out_dir holding this experiment at another size,
    seed count or arithmetic is refused (FileExistsError) unless force=True (see run_sweep)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(EXPERIMENTS)}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    n_seeds = seeds or default_seeds(name, size)
    suffix = "" if arithmetic is None else f"-{arithmetic}"
    out = (
        Path(out_dir)
        if out_dir is not None
        else Path("runs") / ((name if size == "full" else f"{name}-{size}") + suffix)
    )
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; a reproduction's output must be a directory")
    make_specs, report, description = EXPERIMENTS[name]
    specs = make_specs(size, n_seeds)
    if arithmetic is not None:
        from training.recipe import TrainConfig
        from training.trainer import check_arithmetic, resolve_device

        specs = with_arithmetic(specs, arithmetic)
        tc = TrainConfig(**specs[0]["train"])
        check_arithmetic(tc, resolve_device(tc.device))  # e.g. TF32 on a CPU: refused now
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result: SweepResult = run_sweep(
        specs, out / "sweep", workers=workers, progress=progress, force=force
    )
    wall = time.perf_counter() - t0
    table, claims, figures = report(result.rows, out)
    files = {"summary_csv": write_csv(out / "summary.csv", table)}
    run_walls = [
        r["wall_seconds"] for r in result.rows if isinstance(r.get("wall_seconds"), (int, float))
    ]
    md = _markdown(
        name, description, size, n_seeds, specs, result, table, claims, figures, wall, run_walls
    )
    (out / "summary.md").write_text(md)
    files["summary_md"] = out / "summary.md"
    files |= {k: v for k, v in result.files.items()}
    return Reproduction(name, size, out, table, claims, figures, files, wall, md)


def _settings_line(specs: list[dict]) -> str:
    train = specs[0]["train"]
    return ", ".join(f"{k}={v}" for k, v in train.items())


def _markdown(
    name, description, size, n_seeds, specs, result, table, claims, figures, wall, run_walls
) -> str:
    failed = [r for r in result.rows if r.get("status") != "finished"]
    lines = [
        f"# Reproduction: {name} ({size})",
        "",
        description + ".",
        "",
        f"- settings: {_settings_line(specs)}; seeds per cell: {n_seeds}"
        + ("" if size == "full" else f" (size {size}: NOT the paper's full settings)"),
        f"- runs: {len(result.rows)} ({len(failed)} not finished); wall time of this call "
        f"{wall:.0f} s (runs finished earlier are reused, not retrained)"
        + (
            f"; per run {statistics.fmean(run_walls):.1f} s mean (sum {sum(run_walls):.0f} s)"
            if run_walls
            else ""
        ),
        "- verdict per run (training.verdicts): bigram = reached the optimal (order-k) predictor, "
        "unigram = predicts the stationary marginal, neither = in between or elsewhere.",
        "",
        "## The paper's claims, per seed",
        "",
        'A claim is read as "it happens for most seeds": held when the whole Wilson 95% '
        "interval of its fraction of seeds lies above 1/2, not held when it lies below, "
        "undecided when it contains 1/2 (training.stats). excess_loss: the final loss minus "
        "the true predictor's loss on the same evaluation tokens (the KL to the true law, "
        "nats), mean [bootstrap 95% interval] over seeds.",
        "",
        claims_table(claims),
        "## Per cell",
        "",
        markdown_table(table),
        "## Figures",
        "",
    ]
    lines += [f"![{k}]({p.name})" for k, p in figures.items()]
    if failed:
        lines += ["", "## Runs that did not finish", ""]
        lines += [f"- {r['run_dir']}: {r.get('status')} {r.get('error') or ''}" for r in failed]
    return "\n".join(lines) + "\n"
