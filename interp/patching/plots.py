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


def plot_rows(data: np.ndarray, labels: list[str], title: str, label: str) -> Figure:
    """Heatmap of rows [component, position] with diverging colours centred on 0."""
    finite = data[np.isfinite(data)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    bound = bound or 1.0
    fig, ax = plt.subplots(
        figsize=(min(14.0, 3.5 + 0.06 * data.shape[1]), 1.4 + 0.3 * len(labels)),
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
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
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
    """Every sweep of a PatchingResult, normalised, stacked into one heatmap."""
    parts = [patching_rows(result.normalised(act), act) for act in result.raw]
    data = np.concatenate([p[0] for p in parts])
    labels = [lab for p in parts for lab in p[1]]
    return plot_rows(data, labels, title, "normalised effect")


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
