"""The four experiments' reports. Each takes the sweep's result rows and the output
directory and returns (per-cell table, claims checked per seed, {figure name: PNG path}):

- tying_report: loss curves per chain (tied vs untied) and the estimated (p, q) paths;
- depth_report: final loss against the depth, and the loss curves;
- second_order_report: final loss against the attention window (and deeper models with
  full attention) with the order-0/1/2 losses, and the loss curves;
- phase_report: heatmaps over the (p, q) grid, tied and untied.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from training.chains import KthOrderChain
from training.experiments.claims import Claim, check_claims
from training.experiments.figures import (
    EVAL_LOSS,
    FINAL_LOSS,
    depth_figure,
    errorbar_means,
    figure_row,
    label_axes,
    order_lines,
    plot_loss_curves,
    pq_heatmap,
    reference_lines,
    run_curves,
    sample_references,
    save_figure,
)
from training.experiments.tables import cell_table, finished_runs, group_cells
from training.references import order_j_loss

TIE_COLORS = {True: "tab:red", False: "tab:blue"}


def _tie_style(tie: bool) -> tuple[str, str]:
    return TIE_COLORS[tie], "tied" if tie else "untied"


# ------------------------------------------------------------------------------ tying


def _estimates_panel(ax, p: float, q: float, runs: list[dict]) -> None:
    """The truth, the unigram point, and each run's path of (p_hat, q_hat) with its end."""
    pi1 = p / (p + q)
    ax.scatter(
        [p],
        [q],
        marker="*",
        s=300,
        facecolors="none",
        edgecolors="k",
        zorder=2,
        label=f"truth ({p:g}, {q:g})",
    )
    ax.scatter(
        [pi1],
        [1 - pi1],
        marker="X",
        s=150,
        facecolors="none",
        edgecolors="0.4",
        zorder=2,
        label=f"unigram point ({pi1:.3f}, {1 - pi1:.3f})",
    )
    for tie in (True, False):
        color, label = _tie_style(tie)
        tied = [r for r in runs if bool(r["tie"]) == tie and r.get("p_hat") is not None]
        for j, r in enumerate(tied):
            m = [x for x in run_curves(r) if x.get("p_hat") is not None]
            ax.plot(
                [x["p_hat"] for x in m],
                [x["q_hat"] for x in m],
                color=color,
                lw=0.8,
                alpha=0.5,
                zorder=3,
            )
            ax.scatter(
                [r["p_hat"]],
                [r["q_hat"]],
                color=color,
                s=25,
                zorder=4,
                label=label + " (path, end)" if j == 0 else None,
            )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    label_axes(
        ax,
        "p_hat = mean P(1 | x_n = 0)",
        "q_hat = mean P(0 | x_n = 1)",
        f"estimated p, q during training: p={p:g}, q={q:g}",
        title_size=10,
        legend_size=8,
        legend_loc="lower right",
    )


def tying_report(rows: list[dict], out: Path) -> tuple[list, list, dict]:
    keys = ("p", "q", "tie")
    table = cell_table(rows, keys)
    chains = sorted({(r["p"], r["q"]) for r in rows})
    fin = finished_runs(rows)
    runs = {(p, q): [r for r in fin if (r["p"], r["q"]) == (p, q)] for p, q in chains}
    fig, axes = figure_row(len(chains))
    for ax, (p, q) in zip(axes, chains, strict=False):
        sel = runs[(p, q)]
        plot_loss_curves(ax, sel, lambda r: bool(r["tie"]), _tie_style)
        if sel:
            reference_lines(ax, sel[0]["entropy_rate"], sel[0]["unigram_loss"], runs=sel)
            lo, hi = sel[0]["entropy_rate"], sel[0]["unigram_loss"]
            sample = sample_references(sel[0])
            lo = min(lo, sample["true"]) if sample else lo
            ax.set_ylim(lo - 0.15 * (hi - lo) - 0.005, max(hi + 0.6 * (hi - lo), 0.70))
        title = f"p={p:g}, q={q:g} (p+q {'>' if p + q > 1 else '<'} 1), 1 layer"
        label_axes(ax, "step", EVAL_LOSS, title, legend_size=8)
    figures = {"loss_curves": save_figure(fig, out / "loss_curves.png")}

    fig, axes = figure_row(len(chains))
    for ax, (p, q) in zip(axes, chains, strict=False):
        _estimates_panel(ax, p, q, runs[(p, q)])
    figures["estimates"] = save_figure(fig, out / "estimates.png")

    def sel(p, q, tie):
        return lambda r: (r["p"], r["q"], bool(r["tie"])) == (p, q, tie)

    claims = [
        Claim(
            "tied, p=0.5, q=0.8 (p+q>1): ends at the unigram point (a local minimum)",
            sel(0.5, 0.8, True),
            ("unigram",),
        ),
        Claim(
            "untied, p=0.5, q=0.8: reaches the entropy rate (theta_pi is a saddle)",
            sel(0.5, 0.8, False),
            ("bigram",),
        ),
        Claim(
            "tied, p=0.2, q=0.3 (p+q<1): reaches the entropy rate", sel(0.2, 0.3, True), ("bigram",)
        ),
        Claim("untied, p=0.2, q=0.3: reaches the entropy rate", sel(0.2, 0.3, False), ("bigram",)),
        Claim(
            "tied, p=0.5, q=0.8: sits on the unigram plateau (at the unigram point for at least "
            "one evaluation)",
            sel(0.5, 0.8, True),
            holds=lambda r: r.get("plateau_first_step") is not None,
        ),
        Claim(
            "untied, p=0.5, q=0.8: does not sit on the unigram plateau (a saddle, passed quickly)",
            sel(0.5, 0.8, False),
            holds=lambda r: r.get("plateau_first_step") is None,
        ),
    ]
    return table, check_claims(rows, claims), figures


# ------------------------------------------------------------------------------ depth


def depth_report(rows: list[dict], out: Path) -> tuple[list, list, dict]:
    keys = ("layers",)
    table = cell_table(rows, keys)
    fin = finished_runs(rows)
    layers = sorted({r["layers"] for r in rows})

    def references(ax):
        reference_lines(ax, fin[0]["entropy_rate"], fin[0]["unigram_loss"], runs=fin)

    fig = depth_figure(fin, "depth: p=0.5, q=0.8, tied, d=8", references, log_x=True)
    figures = {"final_loss": save_figure(fig, out / "final_loss_vs_depth.png")}
    claims = [
        Claim(f"L={L}: reaches the entropy rate", lambda r, L=L: r["layers"] == L, ("bigram",))
        for L in layers
        if L >= 2
    ]
    claims.insert(
        0,
        Claim(
            "L=1 (tied, p+q>1): can end at the unigram point",
            lambda r: r["layers"] == 1,
            ("unigram",),
        ),
    )
    return table, check_claims(rows, claims), figures


# ----------------------------------------------------------------------- second order


def _window_label(w: Any) -> str:
    return "none" if w is None else str(w)


def second_order_report(rows: list[dict], out: Path) -> tuple[list, list, dict]:
    keys = ("layers", "window")
    table = [r | {"window": _window_label(r["window"])} for r in cell_table(rows, keys)]
    fin = finished_runs(rows)
    chain = KthOrderChain.lag(2, 0.2, 0.3)
    refs = [order_j_loss(chain, j) for j in range(3)]
    windows = sorted(
        {r["window"] for r in rows if r["layers"] == 1}, key=lambda w: (w is None, w or 0)
    )
    fig, (left, right) = figure_row(2, width=5.5)
    xs = list(range(len(windows)))
    errorbar_means(
        left,
        xs,
        [
            [r["final_eval_loss"] for r in fin if r["layers"] == 1 and r["window"] == w]
            for w in windows
        ],
        marker="o",
        label="1 layer (mean ± std)",
    )
    for k, L in enumerate(sorted({r["layers"] for r in rows if r["layers"] != 1})):
        errorbar_means(
            left,
            [xs[-1] + 0.1 * (k + 1)],
            [[r["final_eval_loss"] for r in fin if r["layers"] == L and r["window"] is None]],
            skip_empty=True,
            marker="s",
            color=f"C{k + 1}",
            label=f"{L} layers, full attention",
        )
    order_lines(left, refs)
    left.set_xticks(xs, [_window_label(w) for w in windows])
    label_axes(
        left,
        "attention window M (none = full causal)",
        FINAL_LOSS,
        "lag-2 chain p=0.2, q=0.3",
        legend_size=7,
    )
    cells = group_cells(fin, keys)
    color = {key: f"C{i}" for i, key in enumerate(cells)}
    plot_loss_curves(
        right,
        [r for group in cells.values() for r in group],
        lambda r: tuple(r.get(k) for k in keys),
        lambda key: (color[key], f"L={key[0]}, window {_window_label(key[1])}"),
    )
    order_lines(right, refs, labelled=False)
    label_axes(right, "step", EVAL_LOSS, legend_size=7)
    figures = {"final_loss": save_figure(fig, out / "final_loss_vs_window.png")}
    claims = [
        Claim(
            f"1 layer, window {w}: reaches the order-2 loss (entropy rate)",
            lambda r, w=w: r["layers"] == 1 and r["window"] == w,
            ("bigram",),
        )
        for w in windows
        if w is not None and w <= 8
    ]
    claims += [
        Claim(
            f"{L} layer(s), full causal attention: does not reach the entropy rate",
            lambda r, L=L: r["layers"] == L and r["window"] is None,
            ("unigram", "neither"),
        )
        for L in sorted({r["layers"] for r in rows if r["window"] is None})
    ]
    return table, check_claims(rows, claims), figures


# ---------------------------------------------------------------------- phase diagram


def _median_or_nan(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


# (figure name, title, the value of a cell's finished runs); a name ending in _fraction is
# drawn on [0, 1]
PHASE_FIGURES = (
    (
        "unigram_fraction",
        "fraction of seeds ending at the unigram point",
        lambda g: sum(r["verdict"] == "unigram" for r in g) / len(g),
    ),
    (
        "plateau_fraction",
        "fraction of seeds that sat on the unigram plateau",
        lambda g: sum(r.get("plateau_first_step") is not None for r in g) / len(g),
    ),
    (
        "plateau_steps",
        "median steps on the plateau (seeds that visited it)",
        lambda g: _median_or_nan(
            [
                r["plateau_steps"]
                for r in g
                if r.get("plateau_first_step") is not None and r.get("plateau_steps")
            ]
        ),
    ),
    (
        "plateau_exit",
        "median plateau exit step",
        lambda g: _median_or_nan(
            [r["plateau_exit_step"] for r in g if r.get("plateau_exit_step") is not None]
        ),
    ),
)


def phase_report(rows: list[dict], out: Path) -> tuple[list, list, dict]:
    import numpy as np

    keys = ("p", "q", "tie")
    table = cell_table(rows, keys)
    grid = sorted({r["p"] for r in rows} | {r["q"] for r in rows})
    ties = sorted({bool(r["tie"]) for r in rows}, reverse=True)
    fin = finished_runs(rows)
    figures = {}
    for name, title, value in PHASE_FIGURES:
        fig, axes = figure_row(len(ties), width=5.2, height=4.4)
        for ax, tie in zip(axes, ties, strict=False):
            mat = np.full((len(grid), len(grid)), np.nan)
            for i, q in enumerate(grid):
                for j, p in enumerate(grid):
                    g = [r for r in fin if (r["p"], r["q"], bool(r["tie"])) == (p, q, tie)]
                    if g:
                        mat[i, j] = value(g)
            vmax = 1.0 if name.endswith("_fraction") else None
            pq_heatmap(fig, ax, grid, mat, vmax, f"{'tied' if tie else 'untied'}: {title}")
        figures[name] = save_figure(fig, out / f"phase_{name}.png")
    claims = [
        Claim(
            "tied, p+q>1: ends at the unigram point",
            lambda r: bool(r["tie"]) and r["p"] + r["q"] > 1,
            ("unigram",),
        ),
        Claim(
            "tied, p+q<1: reaches the entropy rate",
            lambda r: bool(r["tie"]) and r["p"] + r["q"] < 1,
            ("bigram",),
        ),
        Claim(
            "tied, p+q>1: sits on the unigram plateau (at least one evaluation)",
            lambda r: bool(r["tie"]) and r["p"] + r["q"] > 1,
            holds=lambda r: r.get("plateau_first_step") is not None,
        ),
    ]
    if False in ties:
        claims.append(
            Claim("untied: reaches the entropy rate", lambda r: not bool(r["tie"]), ("bigram",))
        )
    return table, check_claims(rows, claims), figures
