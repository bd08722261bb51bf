"""The drawing helpers of the reproductions' figures, shared by the four reports: a row of
panels and its file, loss curves per run, reference lines, mean ± std markers, a heatmap
over the (p, q) grid, and the labels of a panel. matplotlib and numpy are imported only
when a figure is drawn."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

from training.experiments.tables import mean_std
from training.runs import read_metrics

EVAL_LOSS = "eval loss (nats)"
FINAL_LOSS = "final eval loss (nats)"
ORDER_STYLES = (":", "-.", "--")  # the order-0, 1, 2 reference losses


def figure_row(ncols: int = 1, width: float = 5.0, height: float = 4.0):
    """A figure of `ncols` panels side by side, each `width` x `height` inches: (fig, axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, axes[0]


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def run_curves(row: dict) -> list[dict]:
    """The metrics of a run (its metrics.jsonl), one dict per evaluation."""
    return read_metrics(Path(row["run_dir"]) / "metrics.jsonl")


def label_axes(
    ax,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    *,
    title_size: float | None = None,
    legend_size: float | None = None,
    legend_loc: str | None = None,
) -> None:
    """Axis labels, the title (at `title_size` when given) and, when `legend_size` is given,
    the legend (at `legend_loc` when given): the last call on a panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title, **({"fontsize": title_size} if title_size is not None else {}))
    if legend_size is not None:
        ax.legend(fontsize=legend_size, **({"loc": legend_loc} if legend_loc else {}))


def plot_loss_curves(
    ax,
    runs: list[dict],
    group: Callable[[dict], Hashable],
    style: Callable[[Hashable], tuple[str, str]],
) -> None:
    """The eval loss against the step of each run, in the order given: `group(run)` names
    its group, `style(group)` gives the group's (color, legend label); the label is put on
    the first run of each group only."""
    labelled = set()
    for r in runs:
        key = group(r)
        color, label = style(key)
        m = run_curves(r)
        ax.plot(
            [x["step"] for x in m],
            [x["eval_loss"] for x in m],
            color=color,
            alpha=0.7,
            lw=1,
            label=None if key in labelled else label,
        )
        labelled.add(key)


def reference_lines(ax, entropy_rate: float, unigram: float) -> None:
    """The entropy rate (the optimal loss) and the unigram loss, as labelled lines."""
    ax.axhline(entropy_rate, color="k", ls="--", lw=1, label=f"entropy rate {entropy_rate:.3f}")
    ax.axhline(unigram, color="0.5", ls=":", lw=1.5, label=f"unigram loss {unigram:.3f}")


def order_lines(ax, refs: Sequence[float], labelled: bool = True) -> None:
    """The order-j losses refs[j] (j = 0, 1, 2), labelled in the legend or not."""
    for j, (ref, style) in enumerate(zip(refs, ORDER_STYLES, strict=False)):
        label = f"order-{j} loss {ref:.3f}" if labelled else None
        ax.axhline(ref, color="k", ls=style, lw=1, label=label)


def errorbar_means(
    ax,
    xs: Sequence[float],
    samples: Sequence[list],
    *,
    skip_empty: bool = False,
    **style,
) -> None:
    """Mean ± std of each sample at its x (samples with no number left out; with
    skip_empty, nothing is drawn when no sample has one). `style`: errorbar's marker,
    color, label...; capsize 4 unless given."""
    stats = [mean_std(s) for s in samples]
    ok = [i for i, (m, _) in enumerate(stats) if m is not None]
    if skip_empty and not ok:
        return
    ax.errorbar(
        [xs[i] for i in ok],
        [stats[i][0] for i in ok],
        yerr=[stats[i][1] for i in ok],
        **({"capsize": 4} | style),
    )


def pq_heatmap(fig, ax, grid: list[float], mat, vmax: float | None, title: str) -> None:
    """A heatmap of mat[i, j], the value at (p, q) = (grid[j], grid[i]) (NaN: no runs), each
    cell annotated (2 significant digits when vmax is given, else whole numbers), the line
    p + q = 1 dashed red, and a colorbar."""
    import numpy as np

    g_arr = np.array(grid)
    mids = (g_arr[1:] + g_arr[:-1]) / 2
    first = g_arr[0] - (mids[0] - g_arr[0] if len(grid) > 1 else 0.05)
    last = g_arr[-1] + (g_arr[-1] - mids[-1] if len(grid) > 1 else 0.05)
    edges = np.concatenate([[first], mids, [last]])
    im = ax.pcolormesh(edges, edges, mat, cmap="viridis", vmin=0, vmax=vmax)
    cut = 0.5 if vmax else (np.nanmax(mat) / 2 if np.isfinite(mat).any() else 0)
    for i, q in enumerate(grid):
        for j, p in enumerate(grid):
            if not np.isnan(mat[i, j]):
                ax.text(
                    p,
                    q,
                    f"{mat[i, j]:.2g}" if vmax else f"{mat[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if mat[i, j] < cut else "k",
                )
    ax.set_xticks(grid, [f"{v:g}" for v in grid])
    ax.set_yticks(grid, [f"{v:g}" for v in grid])
    # the line p + q = 1 (red; blank cells there: i.i.d. chains, excluded)
    ax.plot([edges[0], edges[-1]], [1 - edges[0], 1 - edges[-1]], "r--", lw=1.2)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(edges[0], edges[-1])
    ax.set_aspect("equal")
    label_axes(ax, "p = P(1|0)", "q = P(0|1)", title, title_size=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
