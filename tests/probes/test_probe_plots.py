"""Probe figures: R^2 and accuracy on their own panels and scales, chance shown."""

from __future__ import annotations

import math

from probes.plots import plot_heatmap
from tests.figures import assert_fills_axes

COMPONENTS = ["embed", "resid_pre.0", "resid_mid.0", "resid_post.0"]


def _rows() -> list[dict]:
    rows = []
    for i, comp in enumerate(COMPONENTS):
        rows.append(
            dict(
                component=comp,
                target="p_next",
                kind="continuous",
                score=0.2 * i + 0.1,
                chance=0.0,
                above_chance=True,
            )
        )
        rows.append(
            dict(
                component=comp,
                target="x_n",
                kind="discrete",
                score=0.62 + 0.12 * i,
                chance=0.6,
                above_chance=i > 0,
            )
        )
        rows.append(
            dict(
                component=comp,
                target="x_{n-1}",
                kind="discrete",
                score=0.55 + 0.01 * i,
                chance=0.55,
                above_chance=False,
            )
        )
    return rows


def test_score_heatmap_splits_r2_from_accuracy_and_marks_chance():
    fig = plot_heatmap(_rows(), "score")
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2  # one quantity per panel, each with its colour bar
    r2, acc = panels
    assert "R^2" in r2.get_title() and "accuracy" in acc.get_title()
    maps = [ax.get_images()[0].get_cmap().name for ax in panels]
    assert maps[0] != maps[1]
    assert [t.get_text() for t in r2.get_xticklabels()] == ["p_next\n(chance 0.00)"]
    labels = [t.get_text() for t in acc.get_xticklabels()]
    assert labels == ["x_n\n(chance 0.60)", "x_{n-1}\n(chance 0.55)"]
    lo, hi = acc.get_images()[0].get_clim()
    assert lo == 0.55 and hi == 1.0  # at chance reads as the bottom of the scale
    texts = [t.get_text() for t in acc.texts]
    assert sum("~chance" in t for t in texts) == 5  # x_{n-1} everywhere, x_n on the embedding
    assert not any("~chance" in t.get_text() for t in r2.texts)
    assert_fills_axes(fig)
    selectivity = plot_heatmap(
        [dict(r, selectivity=r["score"] - 0.5) for r in _rows() if r["kind"] == "discrete"],
        "selectivity",
    )
    assert len([ax for ax in selectivity.axes if ax.get_images()]) == 1
    assert not math.isnan(selectivity.axes[0].get_images()[0].get_array().max())
