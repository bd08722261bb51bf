"""Figures of patching results: (component, position) heatmaps and direct-path share bars."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from interp.patching.activation import PatchingResult
from interp.patching.sweep import result_axes


def patching_rows(values: Float[Tensor, "..."], act: str) -> tuple[np.ndarray, list[str]]:
    """One sweep as rows [component, position]: a row per layer for stream activations, per
    (layer, head) for head activations ([layer, pos, head] or [layer, head, dest_pos])."""
    axes = result_axes(act)
    data = values.detach().float().cpu().numpy()
    if axes == ("layer", "pos", "head"):
        data = data.transpose(0, 2, 1)
    if data.ndim == 3:
        n_layers, n_heads = data.shape[:2]
        labels = [f"L{layer}H{head} {act}" for layer in range(n_layers) for head in range(n_heads)]
        return data.reshape(n_layers * n_heads, -1), labels
    return data, [f"L{layer} {act}" for layer in range(data.shape[0])]


def plot_rows(
    data: np.ndarray,
    labels: list[str],
    title: str,
    label: str,
    positions: list[int] | None = None,
) -> Figure:
    """Heatmap of rows [component, position] with diverging colours centred on 0; positions:
    the position of each column (default 0..); with at most 24 columns each cell shows its
    value."""
    finite = data[np.isfinite(data)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    bound = bound or 1.0
    n_cols = data.shape[1]
    fig, ax = plt.subplots(
        figsize=(
            min(14.0, 4.0 + (0.55 if n_cols <= 24 else 0.06) * n_cols),
            1.6 + 0.4 * len(labels),
        ),
        constrained_layout=True,
    )
    image = ax.imshow(
        np.ma.masked_invalid(data),
        aspect="auto",
        cmap="RdBu",
        vmin=-bound,
        vmax=bound,
        interpolation="nearest",
    )
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    if positions is not None and n_cols <= 24:
        ax.set_xticks(range(n_cols), [str(p) for p in positions], fontsize=9)
    elif positions is not None:
        step = max(1, n_cols // 12)
        ax.set_xticks(range(0, n_cols, step), [str(p) for p in positions[::step]], fontsize=9)
    if n_cols <= 24:
        for (i, j), v in np.ndenumerate(data):
            if np.isfinite(v):
                dark = abs(v) > 0.6 * bound
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
    ax.set_xlabel("position patched")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=label, shrink=0.9)
    return fig


def plot_patching_grid(
    values: Float[Tensor, "..."], act: str, title: str, label: str = "normalised effect"
) -> Figure:
    """Heatmap of one sweep (see ``patching_rows``)."""
    data, labels = patching_rows(values, act)
    return plot_rows(data, labels, title, label)


def plot_patching_result(result: PatchingResult, title: str) -> Figure:
    """Every sweep of a PatchingResult, normalised, stacked into one heatmap, over the
    positions the corruption touches (from ``result.first_changed``: before it both runs
    are identical, so a patch there does nothing; the title says how many are left out)."""
    parts = [patching_rows(result.normalised(act), act) for act in result.raw]
    data = np.concatenate([p[0] for p in parts])
    labels = [lab for p in parts for lab in p[1]]
    first = result.first_changed
    positions = list(range(first, data.shape[1]))
    data = data[:, first:]
    if first:
        title = f"{title}\n(positions 0-{first - 1}, untouched by the corruption, not shown)"
    title += f"; {result.n_changed} of {result.n_pairs} pairs changed"
    return plot_rows(data, labels, title, "normalised effect", positions)


def plot_direct_paths(effects: dict[str, dict], title: str) -> Figure:
    """Bar chart of direct-path shares (direct / attention / mlp) per corruption."""
    names = list(effects)
    groups = ("direct", "attention", "mlp")
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.4), constrained_layout=True)
    width = 0.8 / len(groups)
    x = np.arange(len(names))
    for i, group in enumerate(groups):
        heights = [effects[n]["shares"].get(group) for n in names]
        heights = [np.nan if h is None else h for h in heights]
        ax.bar(x + (i - 1) * width, np.nan_to_num(heights), width, label=group)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, names)
    ax.set_ylabel("share of the effect on the output")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig
