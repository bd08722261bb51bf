"""The atlas's figures:

- atlas_grid.png: small multiples, one panel per chain (rows) and tying x MLP (columns); in
  each panel depth (y) x attention window (x); each cell a bar split by the fraction of seeds
  whose dependence is carried by attention / the MLP / the embedding (direct) / several paths
  (distributed) / nothing (marginal only), with k/n seeds that reached the kernel written in.
- in_context.png: per run, the distance of the model's predictions on other chains of the
  family from the in-weights reference (its training kernel) against the distance from the
  in-context estimate; below the diagonal: in context. Colour: depth; marker: window.
- timeline.png: per run, the step at which the final mechanism is in place (interp.atlas
  .runner.mechanism_step) against the step it left the unigram plateau.

Atlases with in-context chains (a kernel per sequence) also get:

- stages.png: one panel per in-context chain (rows) and depth (columns), full attention: the
  median eval loss over seeds against the step for each tying x MLP combination, with the
  four in-context references (add-alpha = Bayes, in-context unigram, uniform, oracle).
- head_steps.png: per run, the step each head forms (interp.atlas.runner.head_steps: the
  best previous-token head, the best induction head) against the step the loss leaves the
  in-context unigram stage (plateau exit); runs that never left or whose head never formed
  are counted in the legend, not drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

from interp.atlas.tables import AXES, CARRIER_NAMES, CARRIER_ORDER, in_context_rows
from training.runs import SUMMARY, read_json, read_metrics, savefig_atomic

COLOURS = {
    "attention": "#1f77b4",
    "mlp": "#ff7f0e",
    "direct": "#2ca02c",
    "distributed": "#9467bd",
    "none": "#bbbbbb",
}


def _figure(nrows: int, ncols: int, w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _sorted(values: set) -> list:
    def key(v):
        try:
            return (0, float(v))
        except ValueError:
            return (1 if v != "full" else 2, str(v))

    return sorted(values, key=key)


def plot_grid(cells: list[dict]):
    """atlas_grid.png (module doc)."""
    from matplotlib.patches import Patch, Rectangle

    chains = list(dict.fromkeys(c["chain"] for c in cells))
    combos = list(dict.fromkeys((str(c["tie"]), str(c["mlp"])) for c in cells))
    windows = _sorted({str(c["window"]) for c in cells})
    depths = _sorted({str(c["layers"]) for c in cells})
    by = {tuple(str(c[a]) for a in AXES): c for c in cells}
    fig, axes = _figure(len(chains), len(combos), 0.75 * len(windows) + 1.2, 0.6 * len(depths) + 1)
    for i, chain in enumerate(chains):
        for j, (tie, mlp) in enumerate(combos):
            ax = axes[i][j]
            for y, depth in enumerate(depths):
                for x, window in enumerate(windows):
                    c = by.get((chain, depth, window, tie, mlp))
                    if c is None or not c["measured"]:
                        continue
                    left = x - 0.45
                    for name in CARRIER_ORDER:
                        f = c[f"frac_{name}"]
                        if f > 0:
                            ax.add_patch(
                                Rectangle((left, y - 0.4), 0.9 * f, 0.8, color=COLOURS[name], lw=0)
                            )
                            left += 0.9 * f
                    ax.text(
                        x,
                        y,
                        f"{c['n_reached']}/{c['measured']}",
                        ha="center",
                        va="center",
                        fontsize=7,
                    )
            ax.set_xlim(-0.5, len(windows) - 0.5)
            ax.set_ylim(-0.5, len(depths) - 0.5)
            ax.set_xticks(range(len(windows)), windows, fontsize=7)
            ax.set_yticks(range(len(depths)), depths, fontsize=7)
            ax.set_xlabel("attention window", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{chain}\nlayers", fontsize=8)
            if i == 0:
                ax.set_title(f"tied={tie}, MLP={mlp}", fontsize=8)
    handles = [Patch(color=COLOURS[c], label=CARRIER_NAMES[c]) for c in CARRIER_ORDER]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7)
    fig.suptitle(
        "where the dependence lives (fraction of seeds; k/n: reached the kernel)", fontsize=9
    )
    return fig


def plot_in_context(rows: list[dict]):
    """in_context.png (module doc)."""
    fig, axes = _figure(1, 1, 5.0, 4.2)
    ax = axes[0][0]
    depths = _sorted({str(r.get("layers")) for r in rows})
    cmap = {d: f"C{i}" for i, d in enumerate(depths)}
    lo, hi = math.inf, -math.inf
    for windowed, marker in ((False, "o"), (True, "x")):
        for d in depths:
            pts = [
                (r["d_weights"], r["d_context"])
                for r in rows
                if str(r.get("layers")) == d
                and (str(r.get("window")) != "full") == windowed
                and isinstance(r.get("d_weights"), float)
                and isinstance(r.get("d_context"), float)
                and r["d_weights"] > 0
                and r["d_context"] > 0
                and r.get("carrier") not in (None, "none")
            ]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
            ax.scatter(
                xs,
                ys,
                s=14,
                c=cmap[d],
                marker=marker,
                alpha=0.7,
                label=f"{d} layer(s), {'window' if windowed else 'full'}",
            )
    if math.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    ax.set_xlabel("KL(training kernel || model) on other chains (nats)", fontsize=8)
    ax.set_ylabel("KL(in-context estimate || model) (nats)", fontsize=8)
    ax.set_title("in weights (above the diagonal) or in context (below)?", fontsize=9)
    return fig


def _step_pairs(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(plateau exit step, row[key]) of the rows where both are positive numbers."""
    return [
        (r["plateau_exit_step"], r[key])
        for r in rows
        if isinstance(r.get("plateau_exit_step"), (int, float))
        and isinstance(r.get(key), (int, float))
        and r["plateau_exit_step"] > 0
        and r[key] > 0
    ]


def _steps_panel(series: list[tuple[list, dict]], xlabel: str, ylabel: str, title: str):
    """A log-log panel of step pairs against the diagonal: ``series`` = (points, scatter
    keyword arguments) per group; the figure."""
    fig, axes = _figure(1, 1, 5.0, 4.2)
    ax = axes[0][0]
    top = 1
    for pts, style in series:
        xs, ys = zip(*pts, strict=True) if pts else ((), ())
        top = max([top, *xs, *ys])
        ax.scatter(xs, ys, alpha=0.7, **style)
    ax.plot([1, top], [1, top], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    return fig


def plot_timeline(rows: list[dict]):
    """timeline.png (module doc)."""
    series = []
    for carrier in CARRIER_ORDER:
        pts = _step_pairs([r for r in rows if r.get("carrier") == carrier], "mechanism_step")
        if pts:
            series.append(
                (pts, {"s": 14, "color": COLOURS[carrier], "label": CARRIER_NAMES[carrier]})
            )
    return _steps_panel(
        series,
        "plateau exit step",
        "step the final mechanism is in place",
        "when the mechanism appears (runs that left the plateau)",
    )


def _references(row: dict) -> dict[str, float]:
    """A run's in-context references (nats) from its summary.json, {} if it has none."""
    path = Path(str(row.get("run_dir", ""))) / SUMMARY
    if not path.is_file():
        return {}
    refs = (read_json(path).get("references") or {}).get("in_context_references") or {}
    return {k: v for k, v in refs.items() if isinstance(v, (int, float))}


def _median_curve(run_dirs: list[str]) -> tuple[list[int], list[float]]:
    """The median over runs of the eval loss at each step all of them evaluated."""
    import numpy as np

    curves = []
    for d in run_dirs:
        path = Path(d) / "metrics.jsonl"
        if path.is_file():
            curves.append({m["step"]: m["eval_loss"] for m in read_metrics(path)})
    if not curves:
        return [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [float(np.median([c[s] for c in curves])) for s in steps]


def plot_stages(rows: list[dict]):
    """stages.png (module doc)."""
    from training.experiments.in_context import REFERENCE_STYLES

    rows = [r for r in in_context_rows(rows) if str(r.get("window")) == "full"]
    chains = sorted({r["chain"] for r in rows})
    depths = _sorted({str(r["layers"]) for r in rows})
    fig, axes = _figure(max(len(chains), 1), max(len(depths), 1), 3.6, 3.0)
    combos = sorted({(str(r["tie"]), str(r["mlp"])) for r in rows})
    for i, chain in enumerate(chains):
        for j, depth in enumerate(depths):
            ax = axes[i][j]
            cell = [r for r in rows if r["chain"] == chain and str(r["layers"]) == depth]
            for c, (tie, mlp) in enumerate(combos):
                sel = [r for r in cell if (str(r["tie"]), str(r["mlp"])) == (tie, mlp)]
                steps, loss = _median_curve([r["run_dir"] for r in sel if r.get("run_dir")])
                if steps:
                    word = f"{'tied' if tie == 'True' else 'untied'}, {'MLP' if mlp == 'True' else 'no MLP'}"
                    ax.plot(
                        steps, loss, color=f"C{c}", lw=1, label=f"{word} (median of {len(sel)})"
                    )
            refs = next((x for x in map(_references, cell) if x), {})
            for name, (word, style) in REFERENCE_STYLES.items():
                if name in refs:
                    ax.axhline(refs[name], color="k", ls=style, lw=0.8, label=word)
            if "add_alpha" in refs and "uniform" in refs:  # the references frame the panel
                span = refs["uniform"] - refs.get("oracle", refs["add_alpha"])
                ax.set_ylim(
                    refs.get("oracle", refs["add_alpha"]) - 0.1 * span,
                    refs["uniform"] + 0.15 * span,
                )
            ax.set_xscale("log")
            ax.set_title(f"{chain}, {depth} layer(s), full attention", fontsize=8)
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("eval loss (nats)", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == 0 and j == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    return fig


def plot_head_steps(rows: list[dict]):
    """head_steps.png (module doc)."""
    rows = in_context_rows(rows)
    depths = _sorted({str(r.get("layers")) for r in rows})
    series = []
    for key, marker, word in (
        ("previous_token_step", "o", "previous-token head"),
        ("induction_step", "^", "induction head"),
    ):
        for i, d in enumerate(depths):
            sel = [r for r in rows if str(r.get("layers")) == d]
            pts = _step_pairs(sel, key)
            label = f"{word}, {d} layer(s): {len(pts)} of {len(sel)} runs"
            series.append((pts, {"s": 16, "color": f"C{i}", "marker": marker, "label": label}))
    return _steps_panel(
        series,
        "step the loss leaves the in-context unigram stage",
        "step the head forms (excess >= 0.2 from then on)",
        "heads form when the loss leaves the unigram stage?",
    )


def write_figures(out: Path, rows: list[dict], cells: list[dict]) -> dict[str, Path]:
    """atlas_grid.png, in_context.png and timeline.png in ``out``; with in-context chains
    also stages.png and head_steps.png."""
    figures = [
        ("atlas_grid", plot_grid(cells)),
        ("in_context", plot_in_context(rows)),
        ("timeline", plot_timeline(rows)),
    ]
    if in_context_rows(rows):
        figures += [("stages", plot_stages(rows)), ("head_steps", plot_head_steps(rows))]
    files = {}
    for name, fig in figures:
        path = Path(out) / f"{name}.png"
        savefig_atomic(fig, path, dpi=110)
        files[name] = path
    return files
