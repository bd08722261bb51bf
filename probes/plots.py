"""Figures of probe tables (rows from probes.sweeps): component x target heatmaps, scores
against training step, and run x component heatmaps across runs. Built on matplotlib's
Figure directly (no pyplot: no global backend or figure state); each function returns the
Figure and saves it when given a path (FileExistsError unless overwrite)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from probes.activations import component_sort_key
from probes.sweeps import pivot
from training.runs import savefig_atomic

LABELS = {
    "score": "held-out score (R^2 or accuracy)",
    "selectivity": "selectivity (accuracy - control accuracy)",
    "random_score": "score of a random-init model",
    "shuffled_score": "R^2 with shuffled targets",
    "control_score": "control-task accuracy",
}


def _save(fig, path: str | os.PathLike | None, overwrite: bool):
    if path is not None:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (pass --force / overwrite=True)")
        path.parent.mkdir(parents=True, exist_ok=True)
        savefig_atomic(fig, path, dpi=120, bbox_inches="tight")
    return fig


def _heatmap(
    ax, ylabels, xlabels, matrix, vmin: float, vmax: float, cmap="viridis", notes=None, label=None
) -> None:
    """Annotated heatmap; notes[i][j]: a second, smaller line in a cell ("" for none)."""
    data = np.array(matrix, dtype=float)
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    tilt = {"rotation": 45, "ha": "right"} if len(xlabels) > 4 else {}
    ax.set_xticks(range(len(xlabels)), [str(x) for x in xlabels], **tilt)
    ax.set_yticks(range(len(ylabels)), [str(y) for y in ylabels])
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            if not math.isnan(v):
                shade = (v - vmin) / (vmax - vmin) if vmax > vmin else 0
                note = notes[i][j] if notes is not None else ""
                ax.text(
                    j,
                    i,
                    f"{v:.2f}" + (f"\n{note}" if note else ""),
                    ha="center",
                    va="center",
                    fontsize=7 if not note else 6,
                    color="black" if shade > 0.6 else "white",
                )
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)


def _range(matrix) -> tuple[float, float]:
    vals = [v for row in matrix for v in row if not math.isnan(v)]
    lo = min(vals, default=0.0)
    return (min(0.0, lo), 1.0)


SCORE_PANELS = {  # kind: (panel title, colour map, colour bar label)
    "continuous": ("R^2 (continuous targets)", "viridis", "held-out R^2"),
    "discrete": ("accuracy (discrete targets)", "cividis", "held-out accuracy"),
}


def _chance_labels(rows: list[dict[str, Any]], targets: list) -> list[str]:
    """Each target with its chance score (the majority class's accuracy; R^2: 0)."""
    out = []
    for t in targets:
        values = sorted(
            {
                round(float(r["chance"]), 2)
                for r in rows
                if r["target"] == t
                and isinstance(r.get("chance"), (int, float))
                and math.isfinite(r["chance"])
            }
        )
        chance = (
            ""
            if not values
            else f"{values[0]:.2f}"
            if len(values) == 1
            else (f"{values[0]:.2f}-{values[-1]:.2f}")
        )
        out.append(f"{t}\n(chance {chance})" if chance else str(t))
    return out


def plot_heatmap(
    rows: list[dict[str, Any]],
    value: str = "score",
    path: str | os.PathLike | None = None,
    title: str | None = None,
    overwrite: bool = False,
):
    """Component (rows) x target (columns) heatmap of ``value`` for one model's rows. For the
    score, R^2 (continuous targets) and accuracy (discrete) are separate panels with their own
    colour maps and scales; each column names its target's chance score, the accuracy scale
    starts at the lowest chance (so a score at chance reads dark, not half-way), and a cell
    not above chance (``above_chance`` False) says "~chance"."""
    if value != "score":
        comps, targets, matrix = pivot(rows, value, "component", "target")
        fig = Figure(figsize=(1.0 + 0.9 * len(targets), 1.0 + 0.4 * len(comps)))
        ax = fig.subplots()
        _heatmap(ax, comps, targets, matrix, *_range(matrix))
        ax.set_title(title or LABELS.get(value, value), fontsize=9)
        return _save(fig, path, overwrite)
    kinds = [k for k in SCORE_PANELS if any(r.get("kind") == k for r in rows)]
    panels = [(k, [r for r in rows if r.get("kind") == k]) for k in kinds]
    other = [r for r in rows if r.get("kind") not in SCORE_PANELS]
    if other:
        panels.append((None, other))
    n_comps = len({r["component"] for r in rows})
    n_targets = [len({r["target"] for r in sel}) for _, sel in panels]
    fig = Figure(
        figsize=(sum(2.4 + 1.0 * n for n in n_targets), 1.6 + 0.4 * n_comps), layout="constrained"
    )
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (kind, sel) in zip(axes, panels, strict=True):
        comps, targets, matrix = pivot(sel, "score", "component", "target")
        _, _, above = pivot(sel, "above_chance", "component", "target")
        notes = [["~chance" if a == 0 else "" for a in row] for row in above]
        name, cmap, label = SCORE_PANELS.get(kind, (LABELS["score"], "viridis", "score"))
        vmin, vmax = _range(matrix)
        if kind == "discrete":
            chances = [float(r["chance"]) for r in sel if isinstance(r.get("chance"), (int, float))]
            chances = [c for c in chances if math.isfinite(c)]
            vmin = min([*chances, *(v for row in matrix for v in row if math.isfinite(v)), 1.0])
            vmin = min(vmin, 0.99)
        _heatmap(ax, comps, _chance_labels(sel, targets), matrix, vmin, vmax, cmap, notes, label)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title or LABELS["score"], fontsize=9)
    return _save(fig, path, overwrite)


def plot_over_steps(
    rows: list[dict[str, Any]],
    target: str,
    value: str = "score",
    path: str | os.PathLike | None = None,
    title: str | None = None,
    overwrite: bool = False,
):
    """``value`` of ``target`` against training step, one line per component; the dashed grey
    line is the best component's random-model score (when present)."""
    sel = [r for r in rows if r["target"] == target]
    if not sel:
        raise ValueError(f"no rows for target {target!r}")
    comps, steps, matrix = pivot(sel, value, "component", "step")
    order = np.argsort([float(s) for s in steps])
    xs = np.array([float(steps[i]) for i in order])
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for name, series in zip(comps, matrix, strict=True):
        ax.plot(xs, np.array(series)[order], marker="o", ms=3, label=name)
    rnd = [r.get("random_score", math.nan) for r in sel]
    rnd = [float(v) for v in rnd if isinstance(v, (int, float)) and not math.isnan(v)]
    if value == "score" and rnd:
        ax.axhline(max(rnd), ls="--", color="grey", lw=1, label="random model (best)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(1.0, xs.max()) * 1.3)
    ax.set_xlabel("training step")
    ax.set_ylabel(LABELS.get(value, value), fontsize=8)
    ax.set_title(title or f"{target}: {value} over training", fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path, overwrite)


def plot_across_runs(
    rows: list[dict[str, Any]],
    target: str,
    value: str = "score",
    path: str | os.PathLike | None = None,
    title: str | None = None,
    overwrite: bool = False,
):
    """Run (rows) x component (columns) heatmap of ``value`` of ``target`` (last step of each
    run in ``rows``); blank where a run has no such component (different depths)."""
    sel = [r for r in rows if r["target"] == target]
    if not sel:
        raise ValueError(f"no rows for target {target!r}")
    last = {}
    for r in sel:
        s = r["step"] if isinstance(r["step"], (int, float)) else -1
        last[r["run"]] = max(last.get(r["run"], -1), s)
    sel = [
        r
        for r in sel
        if (r["step"] if isinstance(r["step"], (int, float)) else -1) == last[r["run"]]
    ]
    sel = sorted(sel, key=lambda r: component_sort_key(r["component"]))
    runs = list(dict.fromkeys(r["run"] for r in sel))
    _, comps, _ = pivot(sel, value, "run", "component")
    cells = {(r["run"], r["component"]): r.get(value, math.nan) for r in sel}
    matrix = [[float(cells.get((u, c), math.nan)) for c in comps] for u in runs]
    fig = Figure(figsize=(1.5 + 0.7 * len(comps), 1.0 + 0.45 * len(runs)))
    ax = fig.subplots()
    _heatmap(ax, runs, comps, matrix, *_range(matrix))
    ax.set_title(title or f"{target}: {value} across runs", fontsize=9)
    return _save(fig, path, overwrite)
